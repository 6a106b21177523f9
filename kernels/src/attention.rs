//! Attention without storing its scores (the compiler's `Op::Attention` and
//! `Op::AttentionGrad`; `nabla_compiler::ir::attention` is the reference): per product of the
//! batch, the scores `q k^T` go to a per-thread scratch of `Tq x Tk`, are masked, scaled and
//! turned into probabilities in place, and multiply the values, all by the tuned GEMM; only the
//! output is kept. The backward recomputes the probabilities (FlashAttention's trade: a product
//! and a softmax again instead of `Tq Tk` stored values per head). Memory is the scratch of each
//! thread, whatever the batch. Products are split into groups, one per thread, so every value
//! is computed in one order whatever the thread count.

use crate::convolution::{for_each_band, split, with_scratch};
use crate::float::Float;
use crate::gemm::strided_gemm;

/// One product's sizes, the mask and the scale, as the call's words lay them out:
/// `[products, Tq, Tk, D, Dv, causal, scale's f64 bits]`.
#[derive(Clone, Copy)]
struct Geometry {
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    causal: bool,
    scale: f64,
}

impl Geometry {
    fn of(args: &[usize]) -> (usize, Geometry) {
        let g = Geometry {
            tq: args[1],
            tk: args[2],
            d: args[3],
            dv: args[4],
            causal: args[5] != 0,
            scale: f64::from_bits(args[6] as u64),
        };
        (args[0], g)
    }

    /// How many keys query `i` sees.
    fn seen(&self, i: usize) -> usize {
        if self.causal {
            (i + 1 + self.tk).saturating_sub(self.tq).min(self.tk)
        } else {
            self.tk
        }
    }

    /// `c [m, n] = A [m, k] @ B [k, n]` by the GEMM on this thread, each operand `(start, row
    /// stride, column stride)` and `c` by its row stride.
    fn product<T: Float>(
        [m, k, n]: [usize; 3],
        c: (&mut [T], usize),
        a: (&[T], usize, usize),
        b: (&[T], usize, usize),
    ) {
        debug_assert!(c.0.len() >= (m.max(1) - 1) * c.1 + n);
        // SAFETY: every caller passes operands that hold what their strides reach for these
        // sizes, and a `c` apart from both.
        unsafe {
            strided_gemm(
                [m, n, k],
                (c.0.as_mut_ptr(), c.1 as isize),
                (a.0.as_ptr(), a.1 as isize, a.2 as isize),
                (b.0.as_ptr(), b.1 as isize, b.2 as isize),
                false,
            )
        }
    }

    /// `scores = scale q k^T` into `scores [Tq, Tk]`.
    fn scores<T: Float>(&self, q: &[T], k: &[T], scores: &mut [T]) {
        let (tq, tk, d) = (self.tq, self.tk, self.d);
        Geometry::product([tq, d, tk], (scores, tk), (q, d, 1), (k, 1, d));
        let scale = T::of(self.scale);
        scores.iter_mut().for_each(|s| *s = *s * scale);
    }
}

/// `p [Tq, Tk]`: each query's attention weights over the keys (0 where it does not see one,
/// a row of zeros where it sees none), from the scores `scale q k^T` computed in place.
fn probabilities<T: Float>(g: &Geometry, q: &[T], k: &[T], p: &mut [T]) {
    g.scores(q, k, p);
    for (i, row) in p.chunks_exact_mut(g.tk).enumerate() {
        let (seen, hidden) = row.split_at_mut(g.seen(i));
        hidden.fill(T::zero());
        let Some(max) = seen.iter().copied().reduce(T::max) else {
            continue;
        };
        let mut sum = T::zero();
        for x in seen.iter_mut() {
            *x = (*x - max).exp_fast();
            sum = sum + *x;
        }
        let inverse = T::one() / sum;
        seen.iter_mut().for_each(|x| *x = *x * inverse);
    }
}

/// Product `s`'s `q`, `k` and `v`.
fn operands<'a, T>(g: &Geometry, s: usize, [q, k, v]: [&'a [T]; 3]) -> [&'a [T]; 3] {
    [
        &q[s * g.tq * g.d..][..g.tq * g.d],
        &k[s * g.tk * g.d..][..g.tk * g.d],
        &v[s * g.tk * g.dv..][..g.tk * g.dv],
    ]
}

/// `out [products, Tq, Dv]`: `p v` for each query's weights `p`.
pub(super) fn forward<T: Float>(args: &[usize], qkv: [&[T]; 3], out: &mut [T], threads: usize) {
    let (products, g) = Geometry::of(args);
    each_product(products, threads, out, g.tq * g.dv, |s, out| {
        let [q, k, v] = operands(&g, s, qkv);
        with_scratch(g.tq * g.tk, |p: &mut [T]| {
            probabilities(&g, q, k, p);
            Geometry::product([g.tq, g.tk, g.dv], (out, g.dv), (p, g.tk, 1), (v, g.dv, 1));
        });
    });
}

/// `out [products, Tq D + Tk D + Tk Dv]`: the gradients of `q`, `k` and `v` from the gradient
/// of the output, the weights recomputed.
pub(super) fn backward<T: Float>(
    args: &[usize],
    [q, k, v, grad]: [&[T]; 4],
    out: &mut [T],
    threads: usize,
) {
    let (products, g) = Geometry::of(args);
    let (dq_len, dk_len) = (g.tq * g.d, g.tk * g.d);
    let per_product = dq_len + dk_len + g.tk * g.dv;
    each_product(products, threads, out, per_product, |s, out| {
        let [q, k, v] = operands(&g, s, [q, k, v]);
        let d_out = &grad[s * g.tq * g.dv..][..g.tq * g.dv];
        let (dq, rest) = out.split_at_mut(dq_len);
        let (dk, dv) = rest.split_at_mut(dk_len);
        with_scratch(2 * g.tq * g.tk, |scratch: &mut [T]| {
            let (p, dp) = scratch.split_at_mut(g.tq * g.tk);
            probabilities(&g, q, k, p);
            // dv = p^T do; dp = do v^T.
            Geometry::product(
                [g.tk, g.tq, g.dv],
                (dv, g.dv),
                (p, 1, g.tk),
                (d_out, g.dv, 1),
            );
            Geometry::product(
                [g.tq, g.dv, g.tk],
                (dp, g.tk),
                (d_out, g.dv, 1),
                (v, 1, g.dv),
            );
            // ds = scale p (dp - sum(p dp)), into dp.
            let scale = T::of(g.scale);
            for (p_row, dp_row) in p.chunks_exact(g.tk).zip(dp.chunks_exact_mut(g.tk)) {
                let total = p_row
                    .iter()
                    .zip(dp_row.iter())
                    .fold(T::zero(), |a, (&x, &y)| a + x * y);
                for (ds, &pj) in dp_row.iter_mut().zip(p_row) {
                    *ds = pj * (*ds - total) * scale;
                }
            }
            // dq = ds k; dk = ds^T q.
            Geometry::product([g.tq, g.tk, g.d], (dq, g.d), (dp, g.tk, 1), (k, g.d, 1));
            Geometry::product([g.tk, g.tq, g.d], (dk, g.d), (dp, 1, g.tk), (q, g.d, 1));
        });
    });
}

/// `f(s, part)` for every product `s` and its part of `out` (`len` elements each): consecutive
/// products in groups, one group per thread.
fn each_product<T: Float>(
    products: usize,
    threads: usize,
    out: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let groups = threads.clamp(1, products.max(1));
    let mut parts = split(
        &mut out[..products * len],
        (0..groups).map(|g| (products * (g + 1) / groups - products * g / groups) * len),
    );
    for_each_band(&mut parts, threads, |group, part| {
        let first = products * group / groups;
        for (i, one) in part.chunks_exact_mut(len.max(1)).enumerate() {
            f(first + i, one);
        }
    });
}
