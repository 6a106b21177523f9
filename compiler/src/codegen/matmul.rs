//! Matrix products. Large ones call a tuned GEMM (the `gemm` crate, through the `nabla_gemm`
//! shim of [`super::jit`]) with the operands' strides, so a transposed operand is never copied,
//! then run the epilogue as a vectorised loop over the product, which is still in cache. Small
//! ones, where a call and the GEMM's packing cost more than the arithmetic, use register tiles:
//! in f32 on a target with AVX2 and FMA, the kernel library's (`nabla_tiles_f32`: 256- or
//! 512-bit registers, which Cranelift does not emit), the epilogue then a loop as above; else
//! emitted here, each tile of up to 4 rows by 2 vectors (8 f32 columns) keeping its
//! accumulators in registers for the whole `k` loop, splatting one `A` element per row and
//! streaming one row of `B` per step through fused multiply-adds, and each finished accumulator
//! going through the epilogue in registers. A tile's operands are addressed from one pointer
//! each, advanced per step; its rows and columns sit at constant offsets from it, so a step does
//! no other index arithmetic. Both kinds of tile sum each element's terms in order, one fused
//! multiply-add each, so they give the same bits.

use cranelift_codegen::ir::{FuncRef, InstBuilder, Type, Value, types};

use super::clif::Emitter;
use super::transcendental::Body;
use crate::kernel::{Loop, Operand, row_major};

/// Rows of `C` per register tile.
const TILE_ROWS: i64 = 4;

/// The product's sizes and operands.
#[derive(Clone, Copy)]
struct Product {
    k: i64,
    a: Operand,
    b: Operand,
    out: usize,
    n: i64,
}

impl Emitter<'_, '_> {
    /// `out = A[m, k] @ B[k, n]` by `method`, then `epilogue` at every element; for a product
    /// the GEMM computes, by `rows` (a row function and the rows) over the threads when given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul(
        &mut self,
        [m, k, n]: [usize; 3],
        method: crate::kernel::Product,
        a: Operand,
        b: Operand,
        out: usize,
        epilogue: &Loop,
        rows: Option<(FuncRef, usize)>,
    ) {
        if method == crate::kernel::Product::Gemm {
            let gemm = self.t.gemm;
            self.library_product(gemm, [m, k, n], a, b, out);
            return match rows {
                Some((f, extent)) => self.parallel_rows(f, extent),
                None => self.epilogue(out, epilogue),
            };
        }
        if let Some(tiles) = self.t.tiles {
            self.library_product(tiles, [m, k, n], a, b, out);
            return self.epilogue(out, epilogue);
        }
        let (m, n) = (m as i64, n as i64);
        let p = Product {
            k: k as i64,
            a,
            b,
            out,
            n,
        };
        let lanes = self.t.lanes();
        let wide = 2 * lanes;
        let full_rows = (m / TILE_ROWS) * TILE_ROWS;
        let row_tiles = |e: &mut Self, i0: Value, rows: i64| {
            let wide_end = (n / wide) * wide;
            e.for_range(0, wide_end, wide, &mut |e, j0| {
                e.tile(p, epilogue, i0, j0, rows, 2, 0)
            });
            let mut j = wide_end;
            if n - j >= lanes {
                let j0 = e.b.ins().iconst(types::I64, j);
                e.tile(p, epilogue, i0, j0, rows, 1, 0);
                j += lanes;
            }
            if n > j {
                let j0 = e.b.ins().iconst(types::I64, j);
                e.tile(p, epilogue, i0, j0, rows, 0, n - j);
            }
        };
        self.for_range(0, full_rows, TILE_ROWS, &mut |e, i0| {
            row_tiles(e, i0, TILE_ROWS)
        });
        if m > full_rows {
            let i0 = self.b.ins().iconst(types::I64, full_rows);
            row_tiles(self, i0, m - full_rows);
        }
    }

    /// The product by a call to `f`, the GEMM or the library's register tiles, which take the
    /// same arguments: `(m, k, n, a, a_row, a_col, b, b_row, b_col, c, threads)`.
    fn library_product(
        &mut self,
        f: FuncRef,
        [m, k, n]: [usize; 3],
        a: Operand,
        b: Operand,
        out: usize,
    ) {
        let int = |e: &mut Self, v: i64| e.b.ins().iconst(types::I64, v);
        let args = [
            int(self, m as i64),
            int(self, k as i64),
            int(self, n as i64),
            self.base(a.slot),
            int(self, a.row),
            int(self, a.col),
            self.base(b.slot),
            int(self, b.row),
            int(self, b.col),
            self.base(out),
            int(self, self.t.threads),
        ];
        self.b.ins().call(f, &args);
    }

    /// The epilogue of a product in `out`, reading it back at each point of the epilogue's
    /// loop: the product's `[m, n]`, or a reshape of it in the same element order.
    pub(super) fn epilogue(&mut self, out: usize, epilogue: &Loop) {
        if epilogue.stores.is_empty() {
            return;
        }
        let body = Body {
            exprs: &epilogue.exprs,
            stores: &epilogue.stores,
            product: Some((out, row_major(&epilogue.dims))),
        };
        self.points(&epilogue.dims, true, &body);
    }

    /// One tile at (`i0`, `j0`): `rows` rows by `vectors` vectors or `scalars` columns.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &mut self,
        p: Product,
        epilogue: &Loop,
        i0: Value,
        j0: Value,
        rows: i64,
        vectors: i64,
        scalars: i64,
    ) {
        let (vty, sty, lanes) = (self.t.vector, self.t.scalar, self.t.lanes());
        let columns: Vec<(Type, i64)> = (0..vectors)
            .map(|v| (vty, v * lanes))
            .chain((0..scalars).map(|s| (sty, s)))
            .collect();
        let mut acc = Vec::new();
        for _ in 0..rows {
            for &(ty, _) in &columns {
                let zero = self.constant(ty, 0.0);
                let var = self.b.declare_var(ty);
                self.b.def_var(var, zero);
                acc.push(var);
            }
        }
        let row_index: Vec<Value> = (0..rows).map(|r| self.b.ins().iadd_imm_s(i0, r)).collect();
        let size = self.t.size();
        let (a_base, b_base) = (self.base(p.a.slot), self.base(p.b.slot));
        let a_start = self.addr_scaled(a_base, i0, p.a.row);
        let b_start = self.addr_scaled(b_base, j0, p.b.col);
        let (a_flags, b_flags) = (self.read_flags(p.a.slot), self.read_flags(p.b.slot));
        self.for_range(0, p.k, 1, &mut |e, k| {
            let b_at = e.step_address(b_start, k, p.b.row);
            let b_values: Vec<Value> = columns
                .iter()
                .map(|&(ty, offset)| {
                    e.load_lanes(ty, b_at, offset * p.b.col * size, p.b.col * size, b_flags)
                })
                .collect();
            let a_at = e.step_address(a_start, k, p.a.col);
            for r in 0..rows as usize {
                let a_scalar = e.load_lanes(sty, a_at, r as i64 * p.a.row * size, 0, a_flags);
                let a_vector = (vectors > 0).then(|| e.b.ins().splat(vty, a_scalar));
                for (ci, &(ty, _)) in columns.iter().enumerate() {
                    let var = acc[r * columns.len() + ci];
                    let sum = e.b.use_var(var);
                    let factor = if ty.is_vector() {
                        a_vector.expect("made for vector tiles")
                    } else {
                        a_scalar
                    };
                    let next = e.b.ins().fma(factor, b_values[ci], sum);
                    e.b.def_var(var, next);
                }
            }
        });
        for (r, &i) in row_index.iter().enumerate() {
            for (ci, &(ty, offset)) in columns.iter().enumerate() {
                let product = self.b.use_var(acc[r * columns.len() + ci]);
                let j = self.b.ins().iadd_imm_s(j0, offset);
                let vars = [i, j];
                self.store_at(product, p.out, &[p.n, 1], &vars);
                let values = self.eval(&epilogue.exprs, &vars, ty, Some(product), &[]);
                for s in &epilogue.stores {
                    self.store_at(values[s.value], s.slot, &s.coeffs, &vars);
                }
            }
        }
    }

    /// `base + index * stride` elements, as an address.
    fn addr_scaled(&mut self, base: Value, index: Value, stride: i64) -> Value {
        let at = self.b.ins().imul_imm_s(index, stride);
        self.addr(base, at)
    }

    /// `start` advanced by step `k` along `stride` elements.
    fn step_address(&mut self, start: Value, k: Value, stride: i64) -> Value {
        let offset = self.b.ins().imul_imm_s(k, stride * self.t.size());
        self.b.ins().iadd(start, offset)
    }
}
