//! The emitter core: one Cranelift function per kernel of the kernel IR, its phases in order.
//! Expressions are evaluated in 128-bit vectors (f32x4 or f64x2) along the innermost loop
//! variable where the phase allows it (two vectors an iteration where nothing is carried from
//! one to the next), with a scalar tail; loads whose innermost coefficient is
//! 1 are vector loads, 0 a splat, anything else a gather of lanes. Transcendental functions call
//! into Rust's implementations, lane by lane. Loop bounds and strides are compile-time
//! constants, so no kernel takes a length or checks a bound: the runtime checked every buffer
//! against the plan before the first call. The one exception is a band of rows: a large map or
//! product epilogue is also emitted as a function of `start..end` of its outermost variable,
//! which the kernel hands to the pool, so both cores stream memory (the optimizer's update of
//! a large weight, a wide activation); bands are inside the rows the plan checked.
//!
//! The phase families live beside this file: [`super::loops`] (maps and reductions) and
//! [`super::matmul`] (register-tiled products with their epilogues); the buffer accesses in
//! [`super::access`]; the f32 functions computed in registers (`tanh`, `exp`, `log`,
//! `sigmoid`) in [`super::math`].

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{Endianness, FuncRef, InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::FunctionBuilder;

use crate::ir::{BinaryOp, UnaryOp};
use crate::kernel::{Expr, Kernel, Phase};

/// Scalar functions generated code calls: the transcendental unary ops and `pow`, imported in
/// the order of [`MathFn::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathFn {
    /// A transcendental [`UnaryOp`] (`exp`, `log`, `tanh`, `sin`, `erf`, ...).
    Unary(UnaryOp),
    /// `a^b`
    Pow,
}

impl MathFn {
    /// Every function, in import order.
    pub const ALL: [MathFn; 12] = [
        MathFn::Unary(UnaryOp::Exp),
        MathFn::Unary(UnaryOp::Log),
        MathFn::Unary(UnaryOp::Tanh),
        MathFn::Unary(UnaryOp::Sigmoid),
        MathFn::Unary(UnaryOp::Sin),
        MathFn::Unary(UnaryOp::Cos),
        MathFn::Unary(UnaryOp::Tan),
        MathFn::Unary(UnaryOp::Sinh),
        MathFn::Unary(UnaryOp::Cosh),
        MathFn::Unary(UnaryOp::Atan),
        MathFn::Unary(UnaryOp::Erf),
        MathFn::Pow,
    ];

    /// How many arguments it takes.
    pub fn arity(self) -> usize {
        if self == MathFn::Pow { 2 } else { 1 }
    }

    /// Its name in symbols (`exp`, `pow`).
    pub fn name(self) -> &'static str {
        match self {
            MathFn::Unary(u) => crate::ir::Op::Unary(u).name(),
            MathFn::Pow => "pow",
        }
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
    /// The imported matrix product (see [`super::jit`]'s `gemm` shim).
    pub gemm: FuncRef,
    /// The imported small f32 product in AVX-512 or AVX2 registers, where the target has AVX2
    /// and FMA: small products call it instead of emitting 128-bit register tiles.
    pub tiles: Option<FuncRef>,
    /// The imported f32 `exp`, `erf` and `tanh` of a block in AVX-512 or AVX2 registers, where
    /// the target has AVX2 and FMA: maps hand it their transcendental functions' arguments
    /// ([`super::transcendental`]).
    pub transcendental: Option<FuncRef>,
    /// The imported library of windows and convolutions (see [`super::jit`]'s `call` shim).
    pub call: FuncRef,
    /// Threads the matrix product may use.
    pub threads: i64,
    /// The imported row splitter (see [`super::jit`]'s `parallel` shim).
    pub parallel: FuncRef,
    /// The functions computing a band of rows of this kernel's phases that run on several
    /// threads, with the phase's rows, by phase index (see [`Loop::split_rows`](crate::kernel::Loop::split_rows)).
    pub rows: HashMap<usize, (FuncRef, usize)>,
    /// Whether vector comparisons must take their operands from registers: x86-64 without
    /// AVX, where Cranelift 0.135 encodes SSE's `cmpps`/`cmppd` with an unaligned memory
    /// operand, which faults ([`Emitter::compare`]).
    pub compares_in_registers: bool,
}

impl Target {
    pub(super) fn lanes(&self) -> i64 {
        self.vector.lane_count() as i64
    }

    pub(super) fn size(&self) -> i64 {
        self.scalar.bytes() as i64
    }
}

/// Emits one kernel into an empty function whose only parameter is the buffer table. Phases
/// with a function in `target.rows` run it on bands of rows over the threads instead of their
/// own loop.
pub fn emit_kernel(b: &mut FunctionBuilder, kernel: &Kernel, target: &Target) {
    let mut e = Emitter::enter(b, target, kernel);
    for (index, phase) in kernel.phases.iter().enumerate() {
        let split = target.rows.get(&index).copied();
        match phase {
            Phase::Map(l) => match split {
                Some((f, extent)) => e.parallel_rows(f, extent),
                None => e.map(l),
            },
            Phase::Reduce { body, reductions } => match split {
                Some((f, extent)) => {
                    e.start_reductions(reductions);
                    e.parallel_rows(f, extent);
                }
                None => e.reduce(body, reductions),
            },
            Phase::MatMul {
                m,
                k,
                n,
                a,
                b,
                out,
                method,
                epilogue,
            } => e.matmul([*m, *k, *n], *method, *a, *b, *out, epilogue, split),
            Phase::Call {
                call,
                args,
                inputs,
                output,
            } => e.library(*call, args, inputs, *output),
        }
    }
    e.b.ins().return_(&[]);
    e.b.seal_all_blocks();
}

/// Emits the rows `start..end` of phase `index` of `kernel` (see [`Loop::split_rows`](crate::kernel::Loop::split_rows)) into an empty
/// function of the buffer table, `start` and `end`.
pub fn emit_rows(b: &mut FunctionBuilder, kernel: &Kernel, index: usize, target: &Target) {
    let mut e = Emitter::enter(b, target, kernel);
    let params =
        e.b.func
            .dfg
            .block_params(e.b.current_block().expect("entered"))
            .to_vec();
    e.rows = Some((params[1], params[2]));
    match &kernel.phases[index] {
        Phase::MatMul { out, epilogue, .. } => e.epilogue(*out, epilogue),
        Phase::Reduce { body, reductions } => e.accumulate(body, reductions),
        phase => e.map(phase.body()),
    }
    e.b.ins().return_(&[]);
    e.b.seal_all_blocks();
}

impl Emitter<'_, '_> {
    /// A call into the library: the thread count and the call's sizes as words in one stack
    /// slot, the operands' addresses in another (only register arguments, whatever the
    /// platform and however many operands).
    fn library(
        &mut self,
        call: crate::kernel::Call,
        args: &[usize],
        inputs: &[usize],
        output: usize,
    ) {
        let words: Vec<Value> = [self.t.threads as usize]
            .iter()
            .chain(args)
            .map(|&w| self.b.ins().iconst(types::I64, w as i64))
            .collect();
        let words = self.stack_array(&words);
        let bases: Vec<Value> = inputs.iter().map(|&s| self.base(s)).collect();
        let operands = self.stack_array(&bases);
        let args = [
            self.b.ins().iconst(types::I64, call.number() as i64),
            operands,
            self.base(output),
            words,
        ];
        let callee = self.t.call;
        self.b.ins().call(callee, &args);
    }

    /// The address of a stack array holding `items`, 64-bit words.
    fn stack_array(&mut self, items: &[Value]) -> Value {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * items.len().max(1) as u32,
            3,
        ));
        for (i, &v) in items.iter().enumerate() {
            self.b
                .ins()
                .stack_store(self.t.pointer, v, slot, 8 * i as i32);
        }
        self.b.ins().stack_addr(self.t.pointer, slot, 0)
    }
}

pub(super) struct Emitter<'a, 'b> {
    pub(super) b: &'a mut FunctionBuilder<'b>,
    pub(super) t: &'a Target,
    pub(super) table: Value,
    /// Buffer start addresses, loaded once per slot.
    pub(super) bases: HashMap<usize, Value>,
    /// The bounds of the outermost loop variable, when the function computes a band of rows.
    rows: Option<(Value, Value)>,
    /// The slots the kernel writes (in any phase); every other slot is read-only while it runs.
    pub(super) written: Vec<usize>,
}

impl<'a, 'b> Emitter<'a, 'b> {
    /// Starts the function's entry block, whose first parameter is the buffer table, and loads
    /// every buffer start `kernel` uses there, where it dominates every use.
    fn enter(b: &'a mut FunctionBuilder<'b>, t: &'a Target, kernel: &Kernel) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let table = b.block_params(entry)[0];
        let mut e = Emitter {
            b,
            t,
            table,
            bases: HashMap::new(),
            rows: None,
            written: kernel.phases.iter().flat_map(Phase::writes).collect(),
        };
        for slot in kernel.slots() {
            e.base(slot);
        }
        e
    }

    /// Calls the row function `rows` over `extent` rows, split over the threads.
    pub(super) fn parallel_rows(&mut self, rows: FuncRef, extent: usize) {
        let pointer = self.t.pointer;
        let args = [
            self.b.ins().func_addr(pointer, rows),
            self.table,
            self.b.ins().iconst(types::I64, extent as i64),
            self.b.ins().iconst(types::I64, self.t.threads),
        ];
        let callee = self.t.parallel;
        self.b.ins().call(callee, &args);
    }
}

impl Emitter<'_, '_> {
    pub(super) fn constant(&mut self, ty: Type, v: f64) -> Value {
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

    /// `for i in (start..start + len).step_by(lanes) { body(i) }` for the first lane of each
    /// vector (`len` a whole number of vectors), two vectors an iteration while two remain:
    /// half the loop's compare, branches and index updates per element, and the two bodies'
    /// independent work side by side. Each element is computed as in one vector a step.
    pub(super) fn for_vectors(
        &mut self,
        start: Value,
        len: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        let lanes = self.t.lanes();
        let pairs = len / (2 * lanes) * (2 * lanes);
        let pairs_end = self.b.ins().iadd_imm_s(start, pairs);
        if pairs > 0 {
            self.for_values(start, pairs_end, 2 * lanes, &mut |e, i| {
                body(e, i);
                let next = e.b.ins().iadd_imm_s(i, lanes);
                body(e, next);
            });
        }
        if pairs < len {
            body(self, pairs_end);
        }
    }

    /// `for i in (start..end).step_by(step) { body(i) }` with constant bounds.
    pub(super) fn for_range(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        if start >= end {
            return;
        }
        let (start, end) = (
            self.b.ins().iconst(types::I64, start),
            self.b.ins().iconst(types::I64, end),
        );
        self.rotated(start, end, step, false, body);
    }

    /// `for i in (start..end).step_by(step) { body(i) }` with bounds computed at run time.
    pub(super) fn for_values(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        self.rotated(start, end, step, true, body);
    }

    /// The loop with its test at the bottom: one conditional branch an iteration, where a
    /// test at the top took it and a jump back. `guarded`
    /// tests before the first iteration too, for bounds known only at run time: a band of rows
    /// is never empty as `nabla_parallel` splits them, but a row function does not rely on it.
    fn rotated(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        guarded: bool,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(inner, types::I64);
        // The exit is each branch's first target: Cranelift's loop-invariant code motion
        // visits the dominator tree's children in reverse successor order and stops
        // hoisting out of a loop once it has visited a block outside it, so with the body
        // first nothing would leave the loop (a per-channel scale reloaded at every element).
        if guarded {
            let empty = self
                .b
                .ins()
                .icmp(IntCC::SignedGreaterThanOrEqual, start, end);
            self.b.ins().brif(empty, exit, &[], inner, &[start.into()]);
        } else {
            self.b.ins().jump(inner, &[start.into()]);
        }
        self.b.switch_to_block(inner);
        let i = self.b.block_params(inner)[0];
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        let done = self
            .b
            .ins()
            .icmp(IntCC::SignedGreaterThanOrEqual, next, end);
        self.b.ins().brif(done, exit, &[], inner, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    /// Nested loops over `dims`, calling `body` with the loop variables.
    pub(super) fn nest(&mut self, dims: &[usize], body: &mut dyn FnMut(&mut Self, &[Value])) {
        self.nest_from(dims, &mut Vec::new(), body);
    }

    fn nest_from(
        &mut self,
        dims: &[usize],
        vars: &mut Vec<Value>,
        body: &mut dyn FnMut(&mut Self, &[Value]),
    ) {
        let depth = vars.len();
        if depth == dims.len() {
            body(self, vars);
            return;
        }
        let mut inner = |e: &mut Self, i: Value| {
            vars.push(i);
            e.nest_from(dims, vars, body);
            vars.pop();
        };
        match self.rows {
            Some((start, end)) if depth == 0 => self.for_values(start, end, 1, &mut inner),
            _ => self.for_range(0, dims[depth] as i64, 1, &mut inner),
        }
    }

    /// Evaluates `exprs` at the point `vars` (whose last entry is lane 0's innermost index when
    /// `ty` is a vector), with `product` standing for [`Expr::Product`] and the expressions
    /// `fixed` names taking the values it gives instead of being computed.
    pub(super) fn eval(
        &mut self,
        exprs: &[Expr],
        vars: &[Value],
        ty: Type,
        product: Option<Value>,
        fixed: &[(usize, Value)],
    ) -> Vec<Value> {
        let mut values: Vec<Value> = Vec::with_capacity(exprs.len());
        for (index, expr) in exprs.iter().enumerate() {
            if let Some(&(_, v)) = fixed.iter().find(|(i, _)| *i == index) {
                values.push(v);
                continue;
            }
            let v = match expr {
                Expr::Load { slot, coeffs } => self.load_at(*slot, coeffs, vars, ty),
                Expr::Const(c) => self.constant(ty, *c),
                Expr::Index { coeffs } => self.index_value(coeffs, vars, ty),
                Expr::Unary(op, x) => self.unary(*op, values[*x], ty),
                Expr::Binary(op, x, y) => self.binary(*op, values[*x], values[*y], ty),
                Expr::Select(c, x, y) => {
                    // A comparison selects by its own condition, not by the 1.0 or 0.0 it
                    // makes (the same choice; Cranelift drops the unused mask).
                    let cond = if let Expr::Binary(op, a, b) = exprs[*c]
                        && let Some(cc) = condition(op)
                    {
                        self.compare(cc, values[a], values[b], ty)
                    } else {
                        let zero = self.constant(ty, 0.0);
                        self.compare(FloatCC::NotEqual, values[*c], zero, ty)
                    };
                    self.choose(cond, values[*x], values[*y], ty)
                }
                Expr::Product => product.expect("a product only appears in its epilogue"),
            };
            values.push(v);
        }
        values
    }

    /// `Σ coeffs[k] * vars[k]` as a float, per lane for vectors.
    pub(super) fn index_value(&mut self, coeffs: &[i64], vars: &[Value], ty: Type) -> Value {
        let at = self.offset(coeffs, vars);
        let sty = self.t.scalar;
        if !ty.is_vector() {
            return self.b.ins().fcvt_from_sint(sty, at);
        }
        let stride = coeffs.last().copied().unwrap_or(0);
        let mut v = self.constant(ty, 0.0);
        for lane in 0..self.t.lanes() {
            let i = self.b.ins().iadd_imm_s(at, lane * stride);
            let x = self.b.ins().fcvt_from_sint(sty, i);
            v = self.b.ins().insertlane(v, x, lane as u8);
        }
        v
    }

    /// A comparison as a condition: a flag for scalars, a lane mask (as floats) for vectors.
    /// Where [`Target::compares_in_registers`], each vector operand first has +0 added: the
    /// same value for the comparison (only -0 becomes +0, which compares equal to it), but
    /// the result of an addition, so Cranelift cannot fold a load into the compare as an
    /// unaligned memory operand, which SSE's `cmpps` may not have.
    pub(super) fn compare(&mut self, cc: FloatCC, a: Value, b: Value, ty: Type) -> Value {
        let (a, b) = if ty.is_vector() && self.t.compares_in_registers {
            let zero = self.constant(ty, 0.0);
            (self.b.ins().fadd(a, zero), self.b.ins().fadd(b, zero))
        } else {
            (a, b)
        };
        let c = self.b.ins().fcmp(cc, a, b);
        if ty.is_vector() {
            let little = MemFlagsData::new().with_endianness(Endianness::Little);
            self.b.ins().bitcast(ty, little, c)
        } else {
            c
        }
    }

    /// `cond ? a : b` for a condition made by [`Emitter::compare`].
    pub(super) fn choose(&mut self, cond: Value, a: Value, b: Value, ty: Type) -> Value {
        if ty.is_vector() {
            self.b.ins().bitselect(cond, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    /// 1.0 where the comparison holds, else 0.0.
    pub(super) fn mask(&mut self, cc: FloatCC, a: Value, b: Value, ty: Type) -> Value {
        let cond = self.compare(cc, a, b, ty);
        let one = self.constant(ty, 1.0);
        let zero = self.constant(ty, 0.0);
        self.choose(cond, one, zero, ty)
    }

    /// A math function of scalars, applied lane by lane to vectors.
    fn call(&mut self, f: MathFn, args: &[Value], ty: Type) -> Value {
        let index = MathFn::ALL
            .iter()
            .position(|&g| g == f)
            .expect("every function is imported");
        let func = self.t.math[index];
        if !ty.is_vector() {
            let call = self.b.ins().call(func, args);
            return self.b.inst_results(call)[0];
        }
        let mut out = self.constant(ty, 0.0);
        for lane in 0..self.t.lanes() as u8 {
            let lane_args: Vec<Value> = args
                .iter()
                .map(|&a| self.b.ins().extractlane(a, lane))
                .collect();
            let call = self.b.ins().call(func, &lane_args);
            let r = self.b.inst_results(call)[0];
            out = self.b.ins().insertlane(out, r, lane);
        }
        out
    }

    pub(super) fn unary(&mut self, op: UnaryOp, x: Value, ty: Type) -> Value {
        match op {
            UnaryOp::StopGradient => x,
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Recip => {
                let one = self.constant(ty, 1.0);
                self.b.ins().fdiv(one, x)
            }
            UnaryOp::Sign => {
                // 1 above 0, -1 below, else x itself: sign(±0) = ±0 and sign(NaN) = NaN, as
                // the interpreter has it.
                let zero = self.constant(ty, 0.0);
                let (one, minus_one) = (self.constant(ty, 1.0), self.constant(ty, -1.0));
                let below = self.compare(FloatCC::LessThan, x, zero, ty);
                let not_above = self.choose(below, minus_one, x, ty);
                let above = self.compare(FloatCC::GreaterThan, x, zero, ty);
                self.choose(above, one, not_above, ty)
            }
            UnaryOp::Tanh if ty.lane_type() == types::F32 => self.tanh_f32(x, ty),
            UnaryOp::Exp if ty.lane_type() == types::F32 => self.exp_f32(x, ty),
            UnaryOp::Log if ty.lane_type() == types::F32 => self.log_f32(x, ty),
            UnaryOp::Sigmoid if ty.lane_type() == types::F32 => self.sigmoid_f32(x, ty),
            UnaryOp::Erf if ty.lane_type() == types::F32 => self.erf_f32(x, ty),
            UnaryOp::Gelu => self.gelu(x, ty),
            UnaryOp::GeluDerivative => self.gelu_derivative(x, ty),
            // Every other op is transcendental: a call.
            transcendental => self.call(MathFn::Unary(transcendental), &[x], ty),
        }
    }

    pub(super) fn binary(&mut self, op: BinaryOp, a: Value, b: Value, ty: Type) -> Value {
        if let Some(cc) = condition(op) {
            return self.mask(cc, a, b, ty);
        }
        match op {
            BinaryOp::Add => self.b.ins().fadd(a, b),
            BinaryOp::Sub => self.b.ins().fsub(a, b),
            BinaryOp::Mul => self.b.ins().fmul(a, b),
            BinaryOp::Div => self.b.ins().fdiv(a, b),
            BinaryOp::Max => self.b.ins().fmax(a, b),
            BinaryOp::Min => self.b.ins().fmin(a, b),
            BinaryOp::Pow => self.call(MathFn::Pow, &[a, b], ty),
            BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Eq => {
                unreachable!("comparisons are masks, above")
            }
        }
    }
}

/// The condition a comparison op tests, or `None` for an op that is not one.
fn condition(op: BinaryOp) -> Option<FloatCC> {
    match op {
        BinaryOp::Lt => Some(FloatCC::LessThan),
        BinaryOp::Gt => Some(FloatCC::GreaterThan),
        BinaryOp::Le => Some(FloatCC::LessThanOrEqual),
        BinaryOp::Eq => Some(FloatCC::Equal),
        _ => None,
    }
}
