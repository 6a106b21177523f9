//! Maps whose f32 `exp`, `erf`, `tanh`, `gelu` or `gelu`'s derivative the kernel library
//! computes in the CPU's widest registers (`nabla_kernels::transcendentals`), where the target
//! has AVX2 and FMA. Cranelift emits 128-bit vectors at most, and such a function is a few
//! dozen vector operations per four elements: the GELU of a transformer's MLP and its
//! gradient bounded their kernels. Each row is taken in blocks of up to [`BLOCK`] elements: a
//! first loop computes the functions' arguments into a stack array, one library call per
//! function replaces them by their values, and a second loop computes the rest of the body
//! from there. The library
//! computes what the inline code would, operation for operation, so the bits are the same
//! either way; rows shorter than one 512-bit register, scalars and f64 stay inline.

use cranelift_codegen::ir::{
    InstBuilder, MemFlagsData, StackSlot, StackSlotData, StackSlotKind, Type, Value, types,
};
use nabla_kernels::transcendentals::Transcendental;

use super::clif::Emitter;
use crate::ir::UnaryOp;
use crate::kernel::{Expr, Store};

/// Elements of a row handed to the library at once: 1 KiB of stack per function, which stays
/// in the L1 cache between the two loops.
const BLOCK: i64 = 256;

/// The body of a map or of a product's epilogue: what it computes, what it stores, and where
/// [`Expr::Product`] is read (an epilogue's product, at these coefficients).
pub(super) struct Body<'a> {
    pub(super) exprs: &'a [Expr],
    pub(super) stores: &'a [Store],
    pub(super) product: Option<(usize, Vec<i64>)>,
}

/// One function the library computes: the expression it is, its argument's and which.
#[derive(Clone, Copy)]
struct Wide {
    expr: usize,
    argument: usize,
    function: Transcendental,
}

impl Emitter<'_, '_> {
    /// Evaluates `body` at every point of `dims` and stores its results, in vectors along the
    /// innermost variable when `vectorise` allows (see [`Self::innermost`]), its transcendental
    /// functions in the library's wide registers where the target has them.
    pub(super) fn points(&mut self, dims: &[usize], vectorise: bool, body: &Body) {
        let wide = self.wide_functions(dims, vectorise, body.exprs);
        let Some((&inner, outer)) = dims.split_last().filter(|_| !wide.is_empty()) else {
            return self.innermost(dims, vectorise, &mut |e, vars, ty| {
                e.point(body, vars, ty, &[]);
            });
        };
        let lanes = self.t.lanes();
        let vector_end = (inner as i64 / lanes) * lanes;
        let whole = vector_end / BLOCK * BLOCK;
        let scratch = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (wide.len() as i64 * BLOCK * self.t.size()) as u32,
            6,
        ));
        let sty = self.t.scalar;
        self.nest(outer, &mut |e, outer_vars| {
            e.for_range(0, whole, BLOCK, &mut |e, start| {
                e.block(body, (&wide, scratch), outer_vars, (start, BLOCK));
            });
            if vector_end > whole {
                let start = e.b.ins().iconst(types::I64, whole);
                e.block(
                    body,
                    (&wide, scratch),
                    outer_vars,
                    (start, vector_end - whole),
                );
            }
            let mut vars = outer_vars.to_vec();
            e.for_range(vector_end, inner as i64, 1, &mut |e, i| {
                vars.push(i);
                e.point(body, &vars, sty, &[]);
                vars.pop();
            });
        });
    }

    /// `body` at one point (a vector of points when `ty` is one), stored, with `fixed`
    /// expressions' values given instead of computed.
    fn point(&mut self, body: &Body, vars: &[Value], ty: Type, fixed: &[(usize, Value)]) {
        let values = self.values(body, vars, ty, fixed);
        for s in body.stores {
            self.store_at(values[s.value], s.slot, &s.coeffs, vars);
        }
    }

    /// The values of `body`'s expressions at one point, as [`Self::point`] computes them.
    fn values(
        &mut self,
        body: &Body,
        vars: &[Value],
        ty: Type,
        fixed: &[(usize, Value)],
    ) -> Vec<Value> {
        let product = body
            .product
            .as_ref()
            .map(|(slot, coeffs)| self.load_at(*slot, coeffs, vars, ty));
        self.eval(body.exprs, vars, ty, product, fixed)
    }

    /// The `len` points of the innermost variable from `start` (a whole number of vectors):
    /// the functions' arguments into `scratch`, the library's calls, then the body with the
    /// functions' values read back.
    fn block(
        &mut self,
        body: &Body,
        (wide, scratch): (&[Wide], StackSlot),
        outer_vars: &[Value],
        (start, len): (Value, i64),
    ) {
        let (vty, pointer, size) = (self.t.vector, self.t.pointer, self.t.size());
        let mut vars = outer_vars.to_vec();
        let at = |e: &mut Self, which: usize, i: Value| {
            let base =
                e.b.ins()
                    .stack_addr(pointer, scratch, (which as i64 * BLOCK * size) as i32);
            let from_start = e.b.ins().isub(i, start);
            let bytes = e.b.ins().imul_imm_s(from_start, size);
            e.b.ins().iadd(base, bytes)
        };
        // The first loop computes only what the arguments need: no argument depends on a
        // function's value, and a load nothing uses would stay (the product's among them).
        let needed = needed_by(body.exprs, wide.iter().map(|w| w.argument));
        let product = body.product.as_ref().filter(|_| {
            body.exprs
                .iter()
                .zip(&needed)
                .any(|(x, &n)| n && *x == Expr::Product)
        });
        self.for_vectors(start, len, &mut |e, i| {
            vars.push(i);
            let zero = e.constant(vty, 0.0);
            let fixed: Vec<(usize, Value)> = (0..body.exprs.len())
                .filter(|&x| !needed[x])
                .map(|x| (x, zero))
                .collect();
            let product = product.map(|(slot, coeffs)| e.load_at(*slot, coeffs, &vars, vty));
            let values = e.eval(body.exprs, &vars, vty, product, &fixed);
            for (which, w) in wide.iter().enumerate() {
                let address = at(e, which, i);
                e.b.ins()
                    .store(MemFlagsData::trusted(), values[w.argument], address, 0);
            }
            vars.pop();
        });
        let callee = self
            .t
            .transcendental
            .expect("wide functions need the library's");
        for (which, w) in wide.iter().enumerate() {
            let function = self.b.ins().iconst(types::I64, w.function as i64);
            let address =
                self.b
                    .ins()
                    .stack_addr(pointer, scratch, (which as i64 * BLOCK * size) as i32);
            let count = self.b.ins().iconst(types::I64, len);
            self.b.ins().call(callee, &[function, address, count]);
        }
        self.for_vectors(start, len, &mut |e, i| {
            vars.push(i);
            let fixed: Vec<(usize, Value)> = wide
                .iter()
                .enumerate()
                .map(|(which, w)| {
                    let address = at(e, which, i);
                    let value = e.b.ins().load(vty, MemFlagsData::trusted(), address, 0);
                    (w.expr, value)
                })
                .collect();
            e.point(body, &vars, vty, &fixed);
            vars.pop();
        });
    }

    /// The expressions the library computes: f32 `exp`, `erf`, `tanh`, `gelu` and its
    /// derivative whose arguments depend on no other such function, in a vectorised loop whose
    /// innermost extent holds at least one 512-bit register; none where the target lacks the
    /// library's wide build.
    fn wide_functions(&self, dims: &[usize], vectorise: bool, exprs: &[Expr]) -> Vec<Wide> {
        let long = dims.last().is_some_and(|&inner| inner >= 16);
        if self.t.transcendental.is_none() || self.t.scalar != types::F32 || !vectorise || !long {
            return Vec::new();
        }
        let mut after_wide = vec![false; exprs.len()];
        let mut wide = Vec::new();
        for (i, expr) in exprs.iter().enumerate() {
            after_wide[i] = operands(expr).iter().any(|&x| after_wide[x]);
            let function = match *expr {
                Expr::Unary(UnaryOp::Exp, _) => Some(Transcendental::Exp),
                Expr::Unary(UnaryOp::Erf, _) => Some(Transcendental::Erf),
                Expr::Unary(UnaryOp::Tanh, _) => Some(Transcendental::Tanh),
                Expr::Unary(UnaryOp::Gelu, _) => Some(Transcendental::Gelu),
                Expr::Unary(UnaryOp::GeluDerivative, _) => Some(Transcendental::GeluDerivative),
                _ => None,
            };
            if let (Some(function), Expr::Unary(_, argument)) = (function, expr)
                && !after_wide[*argument]
            {
                wide.push(Wide {
                    expr: i,
                    argument: *argument,
                    function,
                });
                after_wide[i] = true;
            }
        }
        wide
    }
}

/// The expressions an expression reads.
fn operands(expr: &Expr) -> Vec<usize> {
    match *expr {
        Expr::Unary(_, x) => vec![x],
        Expr::Binary(_, x, y) => vec![x, y],
        Expr::Select(c, x, y) => vec![c, x, y],
        Expr::Load { .. } | Expr::Const(_) | Expr::Index { .. } | Expr::Product => Vec::new(),
    }
}

/// Which of `exprs` (each reading only earlier ones) the `roots` need, themselves included.
fn needed_by(exprs: &[Expr], roots: impl Iterator<Item = usize>) -> Vec<bool> {
    let mut needed = vec![false; exprs.len()];
    for root in roots {
        needed[root] = true;
    }
    for i in (0..exprs.len()).rev() {
        if needed[i] {
            for x in operands(&exprs[i]) {
                needed[x] = true;
            }
        }
    }
    needed
}
