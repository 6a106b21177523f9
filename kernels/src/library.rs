//! The dispatcher of a [`Call`] on whole row-major buffers, and the copies that need no more:
//! slices, concatenations, gathers and scatter-adds (an index outside the table reads zeros and
//! adds nothing). Batches of matrix products go to the GEMM, a group of products per thread,
//! and so does attention ([`attention`]).

use crate::Call;
use crate::attention;
use crate::call::operand_count;
use crate::convolution::{convolve, for_each_band, split};
use crate::float::Float;
use crate::gemm::Gemm;
use crate::pooling::pool;

/// Runs `call` on whole row-major buffers (operand `i` is `input(i)`), convolutions and
/// pooling on up to `threads` threads.
pub(super) fn run<'a, T: Float>(
    call: Call,
    args: &[usize],
    input: impl Fn(usize) -> &'a [T],
    out: &mut [T],
    threads: usize,
) {
    match call {
        Call::Slice => {
            let [outer, size, inner, start, len] = args[..5] else {
                unreachable!("five sizes")
            };
            let x = input(0);
            for (o, dst) in out.chunks_exact_mut(len * inner).take(outer).enumerate() {
                let from = (o * size + start) * inner;
                dst.copy_from_slice(&x[from..from + len * inner]);
            }
        }
        Call::Concat => {
            let (outer, inner) = (args[0], args[1]);
            let mut at = 0;
            for o in 0..outer {
                for (part, &len) in (0..args[2]).map(&input).zip(&args[3..]) {
                    let n = len * inner;
                    out[at..at + n].copy_from_slice(&part[o * n..(o + 1) * n]);
                    at += n;
                }
            }
        }
        Call::Gather => {
            let width = args[1];
            let (table, index) = (input(0), input(1));
            for (row, &i) in out.chunks_exact_mut(width).zip(index) {
                match table_row(i, args[2]) {
                    Some(r) => row.copy_from_slice(&table[r * width..(r + 1) * width]),
                    None => row.fill(T::zero()),
                }
            }
        }
        Call::ScatterAdd => {
            let width = args[1];
            let (index, g) = (input(0), input(1));
            out.fill(T::zero());
            for (grad, &i) in g.chunks_exact(width).zip(index) {
                if let Some(r) = table_row(i, args[2]) {
                    for (d, &v) in out[r * width..(r + 1) * width].iter_mut().zip(grad) {
                        *d = *d + v;
                    }
                }
            }
        }
        Call::BatchMatMul => batch_matmul(args, input(0), input(1), out, threads),
        Call::Attention | Call::AttentionGrad => {
            let inputs: Vec<&[T]> = (0..operand_count(call, args)).map(&input).collect();
            if call == Call::Attention {
                attention::forward(args, &inputs, out, threads)
            } else {
                attention::backward(args, &inputs, out, threads)
            }
        }
        _ => {
            let (w, sizes) = Call::window_of(args);
            let [n, c, _] = sizes;
            let a = input(0);
            let b = if operand_count(call, args) > 1 {
                input(1)
            } else {
                &[]
            };
            match call {
                Call::Windows => {
                    let fill = T::of(w.fill.value());
                    w.visit(n, c, |e, pixel| out[e] = pixel.map_or(fill, |p| a[p]));
                }
                Call::Unwindows => {
                    out.fill(T::zero());
                    w.visit(n, c, |e, pixel| {
                        if let Some(p) = pixel {
                            out[p] = out[p] + a[e];
                        }
                    });
                }
                Call::MaxPoolGather | Call::MaxPoolScatter => {
                    pool(call, &w, [n, c], a, b, out, threads)
                }
                _ => convolve(call, &w, sizes, a, b, out, threads),
            }
        }
    }
}

/// `[s, m, k] @ [s, k, n]`: with at least as many products as threads, consecutive groups
/// of products, one group per thread and each product on one thread; otherwise each product
/// split over the threads in [`Gemm::run`]'s bands. Either way every product is summed in the
/// same order whatever the thread count.
fn batch_matmul<T: Float>(args: &[usize], a: &[T], b: &[T], out: &mut [T], threads: usize) {
    let [s, m, k, n] = args[..4] else {
        unreachable!("four sizes")
    };
    let product = |a: &[T], b: &[T], c: &mut [T], threads: usize| {
        let g = Gemm {
            m,
            k,
            n,
            a: a.as_ptr(),
            a_row: k as isize,
            a_col: 1,
            b: b.as_ptr(),
            b_row: n as isize,
            b_col: 1,
            c: c.as_mut_ptr(),
            c_row: n as isize,
        };
        // SAFETY: `a`, `b` and `c` are one product's `m * k`, `k * n` and `m * n` elements,
        // row-major, and `c` is the output, a buffer apart from the operands.
        unsafe { g.run(threads) }
    };
    let (a_len, b_len, c_len) = (m * k, k * n, m * n);
    if s < threads {
        for ((a, b), c) in a
            .chunks_exact(a_len)
            .zip(b.chunks_exact(b_len))
            .zip(out.chunks_exact_mut(c_len))
        {
            product(a, b, c, threads);
        }
        return;
    }
    let groups = threads.max(1);
    let mut parts = split(
        &mut out[..s * c_len],
        (0..groups).map(|g| (s * (g + 1) / groups - s * g / groups) * c_len),
    );
    for_each_band(&mut parts, threads, |g, c| {
        let first = s * g / groups;
        for (i, c) in c.chunks_exact_mut(c_len).enumerate() {
            let p = first + i;
            product(
                &a[p * a_len..(p + 1) * a_len],
                &b[p * b_len..(p + 1) * b_len],
                c,
                1,
            );
        }
    });
}

/// The table row an index stored as a float names: a whole number in `0..rows`, else none (the
/// gather reads zeros, the scatter adds nothing). The interpreter decides the same on its own.
pub(super) fn table_row<T: Float>(index: T, rows: usize) -> Option<usize> {
    let i = index.to_f64()?;
    (i >= 0.0 && i < rows as f64 && i.fract() == 0.0).then_some(i as usize)
}
