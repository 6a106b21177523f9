//! Attention without storing its scores (the compiler's `Op::Attention` and
//! `Op::AttentionGrad`; `nabla_compiler::ir::attention` is the reference): per product of the
//! batch (a head of an example), the scores `q k^T` go to a per-thread scratch of `Tq x Tk`,
//! are masked, scaled and turned into probabilities in place, and multiply the values, all by
//! register tiles ([`crate::tiles`]; the GEMM in f64 or without AVX2); only the output is
//! kept. The backward recomputes the probabilities (FlashAttention's trade: a product and a
//! softmax again instead of `Tq Tk` stored values per head). Memory is the scratch of each
//! thread, whatever the batch.
//!
//! Causal products run by blocks of [`BLOCK`] queries (or keys), each bounded by the keys its
//! queries see (or the queries that see its keys), so the multiply-adds by weights that are 0
//! everywhere in a block, about half of a causal head's, are skipped, as PyTorch's CPU flash
//! attention skips the key blocks after a query block. A skipped term adds 0 to a sum that
//! starts at +0, so a finite result has the bits of the whole product; a key no query of a
//! block sees no longer reaches that block's outputs even when it holds NaN, as in the
//! reference (`nabla_compiler::ir::attention`), which sums over the seen keys alone.
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

    /// The matrix from its row `i` on.
    fn down(self, i: usize) -> Matrix<T> {
        Matrix::new(self.at, i * self.row, self.row)
    }
}

/// Queries (or keys) per block of a causal head's products.
const BLOCK: usize = 16;

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

    /// The first query that sees key `j` (`Tq` when none does).
    fn first_viewer(&self, j: usize) -> usize {
        if self.causal {
            (j + self.tq).saturating_sub(self.tk).min(self.tq)
        } else {
            0
        }
    }

    /// The blocks of queries: the first, how many, and how many keys the last of them sees
    /// (one block of every query unless causal).
    fn query_blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let step = if self.causal { BLOCK } else { self.tq.max(1) };
        (0..self.tq).step_by(step).map(move |i| {
            let rows = step.min(self.tq - i);
            (i, rows, self.seen(i + rows - 1))
        })
    }

    /// The blocks of keys: the first, how many, and the first query that sees the first of
    /// them (one block of every key unless causal).
    fn key_blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let step = if self.causal { BLOCK } else { self.tk.max(1) };
        (0..self.tk)
            .step_by(step)
            .map(move |j| (j, step.min(self.tk - j), self.first_viewer(j)))
    }

    /// `out [Tq, n] = w rhs` for weights `w [Tq, Tk]` (row-major) and `rhs [Tk, n]`, by blocks
    /// of queries, each summing over the keys its last query sees.
    fn by_queries<T: Float>(&self, w: &[T], (rhs, n): (Matrix<T>, usize), out: Matrix<T>) {
        for (i, rows, seen) in self.query_blocks() {
            let block = Matrix::new(w.as_ptr(), i * self.tk, self.tk);
            product([rows, seen, n], out.down(i), (block, 1), (rhs, rhs.row, 1));
        }
    }

    /// `out [Tk, n] = w^T rhs` for weights `w [Tq, Tk]` (row-major) and `rhs [Tq, n]`, by
    /// blocks of keys, each summing over the queries from the first that sees its first key:
    /// the transpose's rows are 1 apart and its columns `Tk`.
    fn by_keys<T: Float>(&self, w: &[T], (rhs, n): (Matrix<T>, usize), out: Matrix<T>) {
        for (j, keys, first) in self.key_blocks() {
            let block = Matrix::new(w.as_ptr(), j + first * self.tk, 1);
            let summed = self.tq - first;
            product(
                [keys, summed, n],
                out.down(j),
                (block, self.tk),
                (rhs.down(first), rhs.row, 1),
            );
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
    /// one, a row of zeros where it sees none), from the scores `scale q k^T` computed in place,
    /// by blocks of queries, with `k^T` in `packed` (`D x Tk`).
    fn probabilities<T: Float>(&self, q: Matrix<T>, k: Matrix<T>, p: &mut [T], packed: &mut [T]) {
        let (tk, d) = (self.tk, self.d);
        let k_t = transpose(k, [tk, d], packed);
        for (i, rows, seen) in self.query_blocks() {
            let scores = Matrix::new(p.as_ptr(), i * tk, tk);
            product([rows, d, seen], scores, (q.down(i), 1), (k_t, tk, 1));
        }
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

/// `c [m, n] = A [m, k] @ B [k, n]` on this thread (zeros when `k` is 0): `c` and `a` by their
/// rows (`a` with the given column stride), `b` by its row and column strides. In f32 where
/// the CPU has wide registers, by the library's register tiles: a head's products (`64 x 32 x
/// 64` in the baby GPT) are small enough that the GEMM's packing costs more than it saves.
fn product<T: Float>(
    [m, k, n]: [usize; 3],
    c: Matrix<T>,
    (a, a_col): (Matrix<T>, usize),
    (b, b_row, b_col): (Matrix<T>, usize, usize),
) {
    if k == 0 {
        for i in 0..m {
            // SAFETY: row `i` of `c` holds `n` elements, as for the product.
            unsafe { std::slice::from_raw_parts_mut(c.at.add(i * c.row), n) }.fill(T::zero());
        }
        return;
    }
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
    let scratch = g.tq * g.tk + g.d * g.tk;
    each_product(&g, &buffers, threads, (scratch, false), &|x, scratch| {
        let (p, packed) = scratch.split_at_mut(g.tq * g.tk);
        g.probabilities(x.q, x.k, p, packed);
        g.by_queries(p, (x.v, g.dv), x.o);
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
    let scratch = 2 * tq * tk + d.max(dv) * tk;
    each_product(&g, &buffers, threads, (scratch, true), &|x, scratch| {
        let (p, rest) = scratch.split_at_mut(tq * tk);
        let (dp, packed) = rest.split_at_mut(tq * tk);
        g.probabilities(x.q, x.k, p, packed);
        let [dq, dk, d_v] = x.grads;
        g.by_keys(p, (x.o, dv), d_v);
        let v_t = transpose(x.v, [tk, dv], packed);
        for (i, rows, seen) in g.query_blocks() {
            let block = Matrix::new(dp.as_ptr(), i * tk, tk);
            product([rows, dv, seen], block, (x.o.down(i), 1), (v_t, tk, 1));
            for row in dp[i * tk..(i + rows) * tk].chunks_exact_mut(tk) {
                row[seen..].fill(T::zero());
            }
        }
        let scale = T::of(g.scale);
        for (p_row, dp_row) in p.chunks_exact(tk).zip(dp.chunks_exact_mut(tk)) {
            lanes::softmax_grad(p_row, dp_row, scale);
        }
        g.by_queries(dp, (x.k, d), dq);
        g.by_keys(dp, (x.q, d), dk);
    });
}

/// `x [rows, cols]` (by its row stride) transposed into `into`, as `cols` rows of `rows`: the
/// right operand of a product whose columns are `x`'s rows, made contiguous once per head
/// rather than by every block's product.
fn transpose<T: Float>(x: Matrix<T>, [rows, cols]: [usize; 2], into: &mut [T]) -> Matrix<T> {
    for (c, column) in into[..rows * cols].chunks_exact_mut(rows).enumerate() {
        for (r, to) in column.iter_mut().enumerate() {
            // SAFETY: element `(r, c)` of `x` is inside its buffer, as every view's is.
            *to = unsafe { *x.at.add(r * x.row + c) };
        }
    }
    Matrix::new(into.as_ptr(), 0, rows)
}
