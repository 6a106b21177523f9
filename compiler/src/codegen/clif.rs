//! Kernels as Cranelift IR: loop nests over static shapes.
//!
//! Every kernel is `fn(table: *const *mut u8)` (see `nabla_runtime::program` for the ABI). Flat
//! elementwise arithmetic runs in 128-bit vectors (f32x4 or f64x2) with a scalar tail; matrix
//! products vectorise their innermost loop over output columns with fused multiply-adds;
//! transcendental functions call into Rust's `libm`-quality implementations. Loop bounds and
//! strides are compile-time constants, so no kernel takes a length or checks a bound: the
//! runtime checked every buffer against the plan before the first call.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{Block, FuncRef, InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::FunctionBuilder;

use crate::ir::{self, BinaryOp, Op, ReduceOp, UnaryOp};
use crate::schedule::KernelSpec;

/// Scalar functions generated code calls, by the order of [`MathFn::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathFn {
    /// `e^x`
    Exp,
    /// `ln x`
    Log,
    /// `tanh x`
    Tanh,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `a^b`
    Pow,
}

impl MathFn {
    /// Every function, in import order.
    pub const ALL: [MathFn; 5] = [
        MathFn::Exp,
        MathFn::Log,
        MathFn::Tanh,
        MathFn::Sigmoid,
        MathFn::Pow,
    ];

    /// How many arguments it takes.
    pub fn arity(self) -> usize {
        if self == MathFn::Pow { 2 } else { 1 }
    }
}

/// What the emitter needs to know about the element type and the imported functions.
pub struct Target {
    /// `F32` or `F64`.
    pub scalar: Type,
    /// `F32X4` or `F64X2`.
    pub vector: Type,
    /// The pointer type.
    pub pointer: Type,
    /// Imported math functions, indexed like [`MathFn::ALL`].
    pub math: Vec<FuncRef>,
}

impl Target {
    fn lanes(&self) -> i64 {
        self.vector.lane_count() as i64
    }

    fn size(&self) -> i64 {
        self.scalar.bytes() as i64
    }
}

/// Emits one kernel into an empty function whose only parameter is the buffer table.
pub fn emit_kernel(b: &mut FunctionBuilder, kernel: &KernelSpec, target: &Target) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let table = b.block_params(entry)[0];
    let mut e = Emitter {
        b,
        t: target,
        table,
    };
    match kernel {
        KernelSpec::Copy { src, dst, len } => {
            let (s, d) = (e.base(*src), e.base(*dst));
            e.flat_map(*len, &[s], d, &mut |_, xs, _| xs[0], true);
        }
        KernelSpec::Node {
            op,
            out,
            out_shape,
            args,
        } => e.node(op, *out, out_shape, args),
    }
    e.b.ins().return_(&[]);
    e.b.seal_all_blocks();
}

struct Emitter<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    t: &'a Target,
    table: Value,
}

/// Memory flags for buffer accesses: in bounds (the plan guarantees it), alignment not assumed
/// for vectors that start mid-buffer.
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Row-major strides as immediates.
fn strides(shape: &[usize]) -> Vec<i64> {
    ir::strides(shape).into_iter().map(|s| s as i64).collect()
}

/// Broadcast-reading strides as immediates.
fn broadcast_strides(shape: &[usize], out_rank: usize) -> Vec<i64> {
    ir::broadcast_strides(shape, out_rank)
        .into_iter()
        .map(|s| s as i64)
        .collect()
}

impl Emitter<'_, '_> {
    fn base(&mut self, slot: usize) -> Value {
        let offset = (slot * self.t.pointer.bytes() as usize) as i32;
        self.b
            .ins()
            .load(self.t.pointer, MemFlagsData::trusted(), self.table, offset)
    }

    /// `base + index * element size`.
    fn addr(&mut self, base: Value, index: Value) -> Value {
        let bytes = self.b.ins().imul_imm_s(index, self.t.size());
        self.b.ins().iadd(base, bytes)
    }

    fn load(&mut self, ty: Type, base: Value, index: Value) -> Value {
        let a = self.addr(base, index);
        self.b.ins().load(ty, flags(), a, 0)
    }

    fn store(&mut self, value: Value, base: Value, index: Value) {
        let a = self.addr(base, index);
        self.b.ins().store(flags(), value, a, 0);
    }

    fn constant(&mut self, ty: Type, v: f64) -> Value {
        let scalar = if self.t.scalar == types::F32 {
            self.b.ins().f32const(v as f32)
        } else {
            self.b.ins().f64const(v)
        };
        if ty.is_vector() {
            self.b.ins().splat(ty, scalar)
        } else {
            scalar
        }
    }

    /// `for i in (start..end).step_by(step) { body(i) }` with constant bounds.
    fn for_range(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        if start >= end {
            return;
        }
        let header: Block = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        let first = self.b.ins().iconst(types::I64, start);
        self.b.ins().jump(header, &[first.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(more, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    /// Nested loops over `dims`; `body` receives one flat offset per stride vector.
    fn nest(
        &mut self,
        dims: &[usize],
        stride_sets: &[Vec<i64>],
        body: &mut dyn FnMut(&mut Self, &[Value]),
    ) {
        let zero = self.b.ins().iconst(types::I64, 0);
        let offsets = vec![zero; stride_sets.len()];
        self.nest_from(0, dims, stride_sets, offsets, body);
    }

    fn nest_from(
        &mut self,
        depth: usize,
        dims: &[usize],
        stride_sets: &[Vec<i64>],
        offsets: Vec<Value>,
        body: &mut dyn FnMut(&mut Self, &[Value]),
    ) {
        if depth == dims.len() {
            body(self, &offsets);
            return;
        }
        self.for_range(0, dims[depth] as i64, 1, &mut |e, i| {
            let inner: Vec<Value> = offsets
                .iter()
                .zip(stride_sets)
                .map(|(&o, s)| {
                    let step = e.b.ins().imul_imm_s(i, s[depth]);
                    e.b.ins().iadd(o, step)
                })
                .collect();
            e.nest_from(depth + 1, dims, stride_sets, inner, body);
        });
    }

    /// `out[i] = f(ins[0][i], ins[1][i], ...)` for `i < len`, in vectors when `vectorise`, then
    /// a scalar tail. `f` gets the loaded values and the element type.
    fn flat_map(
        &mut self,
        len: usize,
        ins: &[Value],
        out: Value,
        f: &mut dyn FnMut(&mut Self, &[Value], Type) -> Value,
        vectorise: bool,
    ) {
        let lanes = self.t.lanes();
        let vector_end = if vectorise {
            (len as i64 / lanes) * lanes
        } else {
            0
        };
        let vty = self.t.vector;
        let sty = self.t.scalar;
        self.for_range(0, vector_end, lanes, &mut |e, i| {
            let xs: Vec<Value> = ins.iter().map(|&base| e.load(vty, base, i)).collect();
            let y = f(e, &xs, vty);
            e.store(y, out, i);
        });
        self.for_range(vector_end, len as i64, 1, &mut |e, i| {
            let xs: Vec<Value> = ins.iter().map(|&base| e.load(sty, base, i)).collect();
            let y = f(e, &xs, sty);
            e.store(y, out, i);
        });
    }

    fn call(&mut self, f: MathFn, args: &[Value]) -> Value {
        let index = MathFn::ALL
            .iter()
            .position(|&g| g == f)
            .expect("every function is imported");
        let call = self.b.ins().call(self.t.math[index], args);
        self.b.inst_results(call)[0]
    }

    /// 1.0 where `cond` holds, else 0.0 (scalar).
    fn mask(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        let c = self.b.ins().fcmp(cc, a, b);
        let one = self.constant(self.t.scalar, 1.0);
        let zero = self.constant(self.t.scalar, 0.0);
        self.b.ins().select(c, one, zero)
    }

    fn unary(&mut self, op: UnaryOp, x: Value, ty: Type) -> Value {
        match op {
            UnaryOp::StopGradient => x,
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Recip => {
                let one = self.constant(ty, 1.0);
                self.b.ins().fdiv(one, x)
            }
            UnaryOp::Exp => self.call(MathFn::Exp, &[x]),
            UnaryOp::Log => self.call(MathFn::Log, &[x]),
            UnaryOp::Tanh => self.call(MathFn::Tanh, &[x]),
            UnaryOp::Sigmoid => self.call(MathFn::Sigmoid, &[x]),
            UnaryOp::Sign => {
                let zero = self.constant(ty, 0.0);
                let pos = self.mask(FloatCC::GreaterThan, x, zero);
                let neg = self.mask(FloatCC::LessThan, x, zero);
                let s = self.b.ins().fsub(pos, neg);
                // sign(0) = 0 and sign(NaN) = NaN, as the interpreter has it.
                let is_zero_or_nan = self.b.ins().fcmp(FloatCC::UnorderedOrEqual, x, zero);
                self.b.ins().select(is_zero_or_nan, x, s)
            }
        }
    }

    fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        match op {
            BinaryOp::Add => self.b.ins().fadd(a, b),
            BinaryOp::Sub => self.b.ins().fsub(a, b),
            BinaryOp::Mul => self.b.ins().fmul(a, b),
            BinaryOp::Div => self.b.ins().fdiv(a, b),
            BinaryOp::Max => self.b.ins().fmax(a, b),
            BinaryOp::Min => self.b.ins().fmin(a, b),
            BinaryOp::Pow => self.call(MathFn::Pow, &[a, b]),
            BinaryOp::Lt => self.mask(FloatCC::LessThan, a, b),
            BinaryOp::Gt => self.mask(FloatCC::GreaterThan, a, b),
            BinaryOp::Eq => self.mask(FloatCC::Equal, a, b),
        }
    }

    fn node(&mut self, op: &Op, out: usize, out_shape: &[usize], args: &[(usize, Vec<usize>)]) {
        let len: usize = out_shape.iter().product();
        let out_base = self.base(out);
        let bases: Vec<Value> = args.iter().map(|(slot, _)| self.base(*slot)).collect();
        let sty = self.t.scalar;
        match op {
            Op::Input { .. } | Op::Param { .. } | Op::Reshape(_) => {
                unreachable!("the scheduler gives these no kernel")
            }
            Op::Const(c) => {
                let v = c.get();
                self.flat_map(len, &[], out_base, &mut |e, _, ty| e.constant(ty, v), true);
            }
            Op::Numel(s) => {
                let n = s.numel().expect("bound before scheduling") as f64;
                self.flat_map(len, &[], out_base, &mut |e, _, ty| e.constant(ty, n), false);
            }
            Op::Iota { axis, .. } => {
                let (stride, dim) = (strides(out_shape)[*axis], out_shape[*axis] as i64);
                self.for_range(0, len as i64, 1, &mut |e, i| {
                    let q = e.b.ins().udiv_imm_u(i, stride);
                    let r = e.b.ins().urem_imm_u(q, dim);
                    let v = e.b.ins().fcvt_from_uint(sty, r);
                    e.store(v, out_base, i);
                });
            }
            Op::Unary(u) => {
                let vectorise = matches!(
                    u,
                    UnaryOp::Neg
                        | UnaryOp::Abs
                        | UnaryOp::Sqrt
                        | UnaryOp::Recip
                        | UnaryOp::StopGradient
                );
                self.flat_map(
                    len,
                    &bases,
                    out_base,
                    &mut |e, xs, ty| e.unary(*u, xs[0], ty),
                    vectorise,
                );
            }
            Op::Binary(bop) => {
                let vectorise = matches!(
                    bop,
                    BinaryOp::Add
                        | BinaryOp::Sub
                        | BinaryOp::Mul
                        | BinaryOp::Div
                        | BinaryOp::Max
                        | BinaryOp::Min
                );
                self.flat_map(
                    len,
                    &bases,
                    out_base,
                    &mut |e, xs, _| e.binary(*bop, xs[0], xs[1]),
                    vectorise,
                );
            }
            Op::Select => {
                self.flat_map(
                    len,
                    &bases,
                    out_base,
                    &mut |e, xs, ty| {
                        let zero = e.constant(ty, 0.0);
                        let c = e.b.ins().fcmp(FloatCC::NotEqual, xs[0], zero);
                        e.b.ins().select(c, xs[1], xs[2])
                    },
                    false,
                );
            }
            Op::Broadcast(_) => {
                let in_strides = broadcast_strides(&args[0].1, out_shape.len());
                let src = bases[0];
                self.nest(out_shape, &[strides(out_shape), in_strides], &mut |e, o| {
                    let v = e.load(sty, src, o[1]);
                    e.store(v, out_base, o[0]);
                });
            }
            Op::Transpose(perm) => {
                let in_strides = strides(&args[0].1);
                let permuted: Vec<i64> = perm.iter().map(|&p| in_strides[p]).collect();
                let src = bases[0];
                self.nest(out_shape, &[strides(out_shape), permuted], &mut |e, o| {
                    let v = e.load(sty, src, o[1]);
                    e.store(v, out_base, o[0]);
                });
            }
            Op::Reduce(r, _) => {
                let init = if *r == ReduceOp::Sum {
                    0.0
                } else {
                    f64::NEG_INFINITY
                };
                self.flat_map(
                    len,
                    &[],
                    out_base,
                    &mut |e, _, ty| e.constant(ty, init),
                    true,
                );
                let in_shape = &args[0].1;
                let out_strides = broadcast_strides(out_shape, in_shape.len());
                let src = bases[0];
                let r = *r;
                self.nest(in_shape, &[strides(in_shape), out_strides], &mut |e, o| {
                    let x = e.load(sty, src, o[0]);
                    let acc = e.load(sty, out_base, o[1]);
                    let y = if r == ReduceOp::Sum {
                        e.b.ins().fadd(acc, x)
                    } else {
                        e.b.ins().fmax(acc, x)
                    };
                    e.store(y, out_base, o[1]);
                });
            }
            Op::MatMul => self.matmul(out_base, bases[0], bases[1], &args[0].1, &args[1].1),
        }
    }

    /// `C[M, N] = A[M, K] @ B[K, N]` by register tiles: each tile of up to 4 rows by 2 vectors
    /// (8 f32 columns) keeps its accumulators in registers for the whole `k` loop, splatting
    /// one `A` element per row and streaming one row of `B` per step through fused
    /// multiply-adds. Columns left over after whole vectors use scalar tiles, rows left over
    /// after whole groups of 4 use shorter tiles.
    fn matmul(&mut self, c: Value, a: Value, b: Value, a_shape: &[usize], b_shape: &[usize]) {
        let (m, k, n) = (a_shape[0] as i64, a_shape[1] as i64, b_shape[1] as i64);
        let lanes = self.t.lanes();
        let wide = 2 * lanes;
        let dims = MatDims { k, n };
        let full_rows = (m / TILE_ROWS) * TILE_ROWS;
        let row_tiles = |e: &mut Self, i0: Value, rows: i64| {
            let wide_end = (n / wide) * wide;
            e.for_range(0, wide_end, wide, &mut |e, j0| {
                e.tile(c, a, b, dims, i0, j0, rows, 2, 0)
            });
            let mut j = wide_end;
            if n - j >= lanes {
                let j0 = e.b.ins().iconst(types::I64, j);
                e.tile(c, a, b, dims, i0, j0, rows, 1, 0);
                j += lanes;
            }
            if n > j {
                let j0 = e.b.ins().iconst(types::I64, j);
                e.tile(c, a, b, dims, i0, j0, rows, 0, n - j);
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

    /// One tile of `C` at (`i0`, `j0`): `rows` rows by `vectors` vectors or `scalars` columns.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &mut self,
        c: Value,
        a: Value,
        b: Value,
        d: MatDims,
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
        let a_rows: Vec<Value> = (0..rows)
            .map(|r| {
                let row = self.b.ins().iadd_imm_s(i0, r);
                self.b.ins().imul_imm_s(row, d.k)
            })
            .collect();
        self.for_range(0, d.k, 1, &mut |e, p| {
            let b_row = e.b.ins().imul_imm_s(p, d.n);
            let b_start = e.b.ins().iadd(b_row, j0);
            let b_values: Vec<Value> = columns
                .iter()
                .map(|&(ty, offset)| {
                    let index = e.b.ins().iadd_imm_s(b_start, offset);
                    e.load(ty, b, index)
                })
                .collect();
            for (r, &a_row) in a_rows.iter().enumerate() {
                let a_index = e.b.ins().iadd(a_row, p);
                let a_scalar = e.load(sty, a, a_index);
                let a_vector = if vectors > 0 {
                    Some(e.b.ins().splat(vty, a_scalar))
                } else {
                    None
                };
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
        for r in 0..rows {
            let row = self.b.ins().iadd_imm_s(i0, r);
            let c_row = self.b.ins().imul_imm_s(row, d.n);
            let c_start = self.b.ins().iadd(c_row, j0);
            for (ci, &(_, offset)) in columns.iter().enumerate() {
                let value = self.b.use_var(acc[r as usize * columns.len() + ci]);
                let index = self.b.ins().iadd_imm_s(c_start, offset);
                self.store(value, c, index);
            }
        }
    }
}

/// Rows of `C` per register tile.
const TILE_ROWS: i64 = 4;

/// The inner and column sizes of a matrix product.
#[derive(Clone, Copy)]
struct MatDims {
    k: i64,
    n: i64,
}
