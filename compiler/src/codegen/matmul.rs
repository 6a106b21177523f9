//! Matrix products by register tiles, with the epilogue applied to each tile in registers:
//! each tile of up to 4 rows by 2 vectors (8 f32 columns) keeps its accumulators in registers
//! for the whole `k` loop, splatting one `A` element per row and streaming one row of `B` per
//! step through fused multiply-adds. Columns left over after whole vectors use scalar tiles,
//! rows left over after whole groups of 4 use shorter tiles. Each finished accumulator goes
//! through the epilogue's expressions (bias, activation, an optimizer update) and only what the
//! epilogue stores reaches memory.

use cranelift_codegen::ir::{InstBuilder, Type, Value, types};

use super::clif::Emitter;
use crate::kernel::{Loop, Operand};

/// Rows of `C` per register tile.
const TILE_ROWS: i64 = 4;

/// The product's sizes and operands.
#[derive(Clone, Copy)]
struct Product {
    k: i64,
    a: Operand,
    b: Operand,
}

impl Emitter<'_, '_> {
    /// `A[m, k] @ B[k, n]`, then `epilogue` at every element.
    pub(super) fn matmul(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: Operand,
        b: Operand,
        epilogue: &Loop,
    ) {
        let (m, n) = (m as i64, n as i64);
        let p = Product { k: k as i64, a, b };
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
        self.for_range(0, p.k, 1, &mut |e, step| {
            let b_values: Vec<Value> = columns
                .iter()
                .map(|&(ty, offset)| {
                    let j = e.b.ins().iadd_imm_s(j0, offset);
                    e.load_at(p.b.slot, &[p.b.row, p.b.col], &[step, j], ty)
                })
                .collect();
            for (r, &i) in row_index.iter().enumerate() {
                let a_scalar = e.load_at(p.a.slot, &[p.a.row, p.a.col], &[i, step], sty);
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
                let values = self.eval(&epilogue.exprs, &vars, ty, Some(product));
                for s in &epilogue.stores {
                    self.store_at(values[s.value], s.slot, &s.coeffs, &vars);
                }
            }
        }
    }
}
