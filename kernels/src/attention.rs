//! Attention without storing its scores (the compiler's `Op::Attention` and
//! `Op::AttentionGrad`; `nabla_compiler::ir::attention` is the reference): per product of the
//! batch (a head of an example), the scores `q k^T` go to a per-thread scratch of `Tq x Tk`,
//! are masked, scaled and turned into probabilities in place, and multiply the values, all by
//! register tiles ([`crate::tiles`]; the GEMM in f64 or without AVX2); only the output is
//! kept. The backward recomputes the probabilities (FlashAttention's trade: a product and a
//! softmax again instead of `Tq Tk` stored values per head). Memory is the scratch of each thread, whatever the batch.
//!
//! Two layouts: separate `q [S, Tq, D]`, `k [S, Tk, D]`, `v [S, Tk, Dv]`, or, for
//! self-attention, one projection `qkv [B, T, 3C]` read in place, head `h` of `q`, `k` and `v`
//! being columns `h D ..`, `C + h D ..` and `2C + h D ..` (`C = heads D`), with the output
//! `[B, T, C]` and the gradient `[B, T, 3C]` in the same layouts, so that splitting and
//! merging the heads costs no copy. Examples (or products) are split into groups, one per
//! thread, so every value is computed in one order whatever the thread count.

use crate::convolution::with_scratch;
use crate::float::Float;
use crate::gemm::{Gemm, strided_gemm};
use crate::lanes;
use crate::parallel;
use crate::tiles;

/// The call's sizes, as its words lay them out: `[products, Tq, Tk, D, Dv, causal, the
/// scale's f64 bits, heads]`; `heads` is 0 for separate operands.
#[derive(Clone, Copy)]
struct Geometry {
    products: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    causal: bool,
    scale: f64,
    heads: usize,
}

/// A matrix inside a buffer: its first element and its row stride (columns are contiguous).
#[derive(Clone, Copy)]
struct Matrix<T> {
    at: *mut T,
    row: usize,
}

impl<T> Matrix<T> {
    fn new(base: *const T, offset: usize, row: usize) -> Matrix<T> {
        // The offsets below stay inside the buffers that `length` gives the call.
        Matrix {
            at: base.cast_mut().wrapping_add(offset),
            row,
        }
    }
}

/// One product's operands and results: `q`, `k`, `v` and the output (forward), or `q`, `k`,
/// `v`, the output's gradient, and `dq`, `dk`, `dv` (backward).
struct Views<T> {
    q: Matrix<T>,
    k: Matrix<T>,
    v: Matrix<T>,
    /// The output (forward) or its gradient (backward).
    o: Matrix<T>,
    /// The gradients of `q`, `k` and `v` (backward only).
    grads: [Matrix<T>; 3],
}

/// The buffers' starts, shared by the threads, which write disjoint elements of the output.
struct Buffers<T> {
    inputs: Vec<*const T>,
    out: *mut T,
}

// SAFETY: the pointers are read by every thread and written only at disjoint elements of `out`
// (each product's), while the call runs.
unsafe impl<T> Sync for Buffers<T> {}

impl Geometry {
    fn of(args: &[usize]) -> Geometry {
        Geometry {
            products: args[0],
            tq: args[1],
            tk: args[2],
            d: args[3],
            dv: args[4],
            causal: args[5] != 0,
            scale: f64::from_bits(args[6] as u64),
            heads: args[7],
        }
    }

    /// How many keys query `i` sees.
    fn seen(&self, i: usize) -> usize {
        if self.causal {
            (i + 1 + self.tk).saturating_sub(self.tq).min(self.tk)
        } else {
            self.tk
        }
    }

    /// The units split over the threads (examples with heads, products without) and the
    /// products in each.
    fn units(&self) -> (usize, usize) {
        match self.heads {
            0 => (self.products, 1),
            heads => (self.products, heads),
        }
    }

    /// Product `h` of unit `u`'s views. `backward` picks the backward's output layout.
    fn views<T>(&self, b: &Buffers<T>, u: usize, h: usize, backward: bool) -> Views<T> {
        let (tq, tk, d, dv) = (self.tq, self.tk, self.d, self.dv);
        if self.heads == 0 {
            let [q, k, v] = [0, 1, 2].map(|i| b.inputs[i]);
            let per = tq * d + tk * d + tk * dv;
            let o = if backward {
                Matrix::new(b.inputs[3], u * tq * dv, dv)
            } else {
                Matrix::new(b.out, u * tq * dv, dv)
            };
            return Views {
                q: Matrix::new(q, u * tq * d, d),
                k: Matrix::new(k, u * tk * d, d),
                v: Matrix::new(v, u * tk * dv, dv),
                o,
                grads: [
                    Matrix::new(b.out, u * per, d),
                    Matrix::new(b.out, u * per + tq * d, d),
                    Matrix::new(b.out, u * per + tq * d + tk * d, dv),
                ],
            };
        }
        let c = self.heads * d;
        let (packed, head) = (u * tq * 3 * c, h * d);
        let part = |base: *const T, i: usize| Matrix::new(base, packed + i * c + head, 3 * c);
        let o = if backward {
            Matrix::new(b.inputs[1], u * tq * c + head, c)
        } else {
            Matrix::new(b.out, u * tq * c + head, c)
        };
        Views {
            q: part(b.inputs[0], 0),
            k: part(b.inputs[0], 1),
            v: part(b.inputs[0], 2),
            o,
            grads: [part(b.out, 0), part(b.out, 1), part(b.out, 2)],
        }
    }

    /// `p [Tq, Tk]`: each query's attention weights over the keys (0 where it does not see
    /// one, a row of zeros where it sees none), from the scores `scale q k^T` computed in place.
    fn probabilities<T: Float>(&self, q: Matrix<T>, k: Matrix<T>, p: &mut [T]) {
        let (tq, tk, d) = (self.tq, self.tk, self.d);
        let scores = Matrix::new(p.as_ptr(), 0, tk);
        product([tq, d, tk], scores, (q, 1), (k, 1, k.row));
        let scale = T::of(self.scale);
        for (i, row) in p.chunks_exact_mut(tk).enumerate() {
            let seen = self.seen(i);
            if seen == 0 {
                row.fill(T::zero());
                continue;
            }
            let (active, rest) = row.split_at_mut(seen.next_multiple_of(lanes::LANES).min(tk));
            rest.fill(T::zero());
            lanes::softmax(active, seen, scale);
        }
    }
}

/// `c [m, n] = A [m, k] @ B [k, n]` on this thread: `c` and `a` by their rows (`a` with the
/// given column stride), `b` by its row and column strides. In f32 where the CPU has wide
/// registers, by the library's register tiles: a head's products (`64 x 32 x 64` in the baby
/// GPT) are small enough that the GEMM's packing costs more than it saves.
fn product<T: Float>(
    [m, k, n]: [usize; 3],
    c: Matrix<T>,
    (a, a_col): (Matrix<T>, usize),
    (b, b_row, b_col): (Matrix<T>, usize, usize),
) {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && tiles::vectorised() {
        let small = Gemm {
            m,
            k,
            n,
            a: a.at.cast_const().cast(),
            a_row: a.row as isize,
            a_col: a_col as isize,
            b: b.at.cast_const().cast(),
            b_row: b_row as isize,
            b_col: b_col as isize,
            c: c.at.cast(),
            c_row: c.row as isize,
        };
        // SAFETY: as below; `T` is f32.
        return unsafe { small.tiles() };
    }
    // SAFETY: every caller passes matrices inside the call's buffers for these sizes (the
    // layouts `Geometry::views` gives), and `c` apart from `a` and `b`.
    unsafe {
        strided_gemm(
            [m, n, k],
            (c.at, c.row as isize),
            (a.at.cast_const(), a.row as isize, a_col as isize),
            (b.at.cast_const(), b_row as isize, b_col as isize),
            false,
        )
    }
}

/// Runs `f(views, scratch)` for every product, a group of units per thread.
fn each_product<T: Float>(
    g: &Geometry,
    buffers: &Buffers<T>,
    threads: usize,
    (scratch, backward): (usize, bool),
    f: &(dyn Fn(&Views<T>, &mut [T]) + Sync),
) {
    let (units, heads) = g.units();
    let groups = threads.clamp(1, units.max(1));
    parallel::for_each_part(groups, threads, &|group| {
        with_scratch(scratch, |scratch: &mut [T]| {
            for u in units * group / groups..units * (group + 1) / groups {
                for h in 0..heads {
                    f(&g.views(buffers, u, h, backward), scratch);
                }
            }
        });
    });
}

/// The output: `p v` for each query's weights `p`.
pub(super) fn forward<T: Float>(args: &[usize], inputs: &[&[T]], out: &mut [T], threads: usize) {
    let g = Geometry::of(args);
    let buffers = Buffers {
        inputs: inputs.iter().map(|x| x.as_ptr()).collect(),
        out: out.as_mut_ptr(),
    };
    each_product(&g, &buffers, threads, (g.tq * g.tk, false), &|x, p| {
        g.probabilities(x.q, x.k, p);
        let weights = Matrix::new(p.as_ptr(), 0, g.tk);
        product([g.tq, g.tk, g.dv], x.o, (weights, 1), (x.v, x.v.row, 1));
    });
}

/// The gradients of `q`, `k` and `v` from the gradient of the output, the weights recomputed:
/// `dv = p^T do`, `dp = do v^T`, `ds = scale p (dp - sum(p dp))`, `dq = ds k`, `dk = ds^T q`.
pub(super) fn backward<T: Float>(args: &[usize], inputs: &[&[T]], out: &mut [T], threads: usize) {
    let g = Geometry::of(args);
    let buffers = Buffers {
        inputs: inputs.iter().map(|x| x.as_ptr()).collect(),
        out: out.as_mut_ptr(),
    };
    let (tq, tk, d, dv) = (g.tq, g.tk, g.d, g.dv);
    each_product(&g, &buffers, threads, (2 * tq * tk, true), &|x, scratch| {
        let (p, dp) = scratch.split_at_mut(tq * tk);
        g.probabilities(x.q, x.k, p);
        let [dq, dk, d_v] = x.grads;
        // The weights' transpose: rows 1 apart, columns `Tk`.
        let weights_t = Matrix::new(p.as_ptr(), 0, 1);
        product([tk, tq, dv], d_v, (weights_t, tk), (x.o, x.o.row, 1));
        let (ds, ds_t) = (
            Matrix::new(dp.as_ptr(), 0, tk),
            Matrix::new(dp.as_ptr(), 0, 1),
        );
        product([tq, dv, tk], ds, (x.o, 1), (x.v, 1, x.v.row));
        let scale = T::of(g.scale);
        for (p_row, dp_row) in p.chunks_exact(tk).zip(dp.chunks_exact_mut(tk)) {
            lanes::softmax_grad(p_row, dp_row, scale);
        }
        product([tq, tk, d], dq, (ds, 1), (x.k, x.k.row, 1));
        product([tk, tq, d], dk, (ds_t, tk), (x.q, x.q.row, 1));
    });
}
