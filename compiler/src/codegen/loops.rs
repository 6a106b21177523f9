//! Maps and reductions: loop nests over a phase's box, vectorised along the innermost loop
//! variable with a scalar tail.

use cranelift_codegen::ir::{InstBuilder, Type, Value, types};

use super::clif::Emitter;
use super::transcendental::Body;
use crate::ir::ReduceOp;
use crate::kernel::{Loop, Reduction};

impl Emitter<'_, '_> {
    /// Evaluates and stores at every point of the loop, in vectors unless a store's innermost
    /// coefficient is 0 (where the vector's lanes would write one element).
    pub(super) fn map(&mut self, l: &Loop) {
        let vectorise = l.stores.iter().all(|s| s.coeffs.last() != Some(&0));
        let body = Body {
            exprs: &l.exprs,
            stores: &l.stores,
            product: None,
        };
        self.points(&l.dims, vectorise, &body);
    }

    /// Runs `body` at every point of `dims`: the innermost variable in vector steps when
    /// `vectorise` allows and the extent is at least a vector, then in scalar steps. `body`
    /// gets the loop variables and the type to compute in.
    pub(super) fn innermost(
        &mut self,
        dims: &[usize],
        vectorise: bool,
        body: &mut dyn FnMut(&mut Self, &[Value], Type),
    ) {
        let Some((&inner, outer)) = dims.split_last() else {
            let scalar = self.t.scalar;
            return body(self, &[], scalar);
        };
        let lanes = self.t.lanes();
        let vector_end = if vectorise {
            (inner as i64 / lanes) * lanes
        } else {
            0
        };
        let (vty, sty) = (self.t.vector, self.t.scalar);
        self.nest(outer, &mut |e, outer_vars| {
            let mut vars = outer_vars.to_vec();
            let start = e.b.ins().iconst(types::I64, 0);
            e.for_vectors(start, vector_end, &mut |e, i| {
                vars.push(i);
                body(e, &vars, vty);
                vars.pop();
            });
            e.for_range(vector_end, inner as i64, 1, &mut |e, i| {
                vars.push(i);
                body(e, &vars, sty);
                vars.pop();
            });
        });
    }

    /// Accumulates the reductions over the loop. When the innermost variable is reduced by all
    /// of them, each output element is accumulated in registers (vector partial results, then
    /// their lanes) and written once; otherwise outputs are updated in memory, in vectors where
    /// they are contiguous.
    pub(super) fn reduce(&mut self, body: &Loop, reductions: &[Reduction]) {
        self.start_reductions(reductions);
        self.accumulate(body, reductions);
    }

    /// Sets every output of the reductions to its identity.
    pub(super) fn start_reductions(&mut self, reductions: &[Reduction]) {
        for r in reductions {
            let identity = identity(r.op);
            let out = [r.slot];
            self.innermost(&[r.len], true, &mut |e, vars, ty| {
                let v = e.constant(ty, identity);
                e.store_at(v, out[0], &[1], vars);
            });
        }
    }

    /// Accumulates the reductions over the loop (over a band of its rows in a row function),
    /// onto outputs already started.
    pub(super) fn accumulate(&mut self, body: &Loop, reductions: &[Reduction]) {
        let inner_reduced =
            !body.dims.is_empty() && reductions.iter().all(|r| r.coeffs.last() == Some(&0));
        if !inner_reduced {
            let contiguous = reductions.iter().all(|r| r.coeffs.last() == Some(&1));
            self.innermost(&body.dims, contiguous, &mut |e, vars, ty| {
                let values = e.eval(&body.exprs, vars, ty, None, &[]);
                for r in reductions {
                    let current = e.load_at(r.slot, &r.coeffs, vars, ty);
                    let next = e.combine(r.op, current, values[r.value]);
                    e.store_at(next, r.slot, &r.coeffs, vars);
                }
            });
            return;
        }
        let (&inner, outer) = body.dims.split_last().expect("not empty");
        let lanes = self.t.lanes();
        let vector_end = (inner as i64 / lanes) * lanes;
        let (vty, sty) = (self.t.vector, self.t.scalar);
        self.nest(outer, &mut |e, outer_vars| {
            let mut vars = outer_vars.to_vec();
            let vector_acc: Vec<_> = reductions
                .iter()
                .map(|r| {
                    let var = e.b.declare_var(vty);
                    let init = e.constant(vty, identity(r.op));
                    e.b.def_var(var, init);
                    var
                })
                .collect();
            e.for_range(0, vector_end, lanes, &mut |e, i| {
                vars.push(i);
                let values = e.eval(&body.exprs, &vars, vty, None, &[]);
                for (r, &var) in reductions.iter().zip(&vector_acc) {
                    let acc = e.b.use_var(var);
                    let next = e.combine(r.op, acc, values[r.value]);
                    e.b.def_var(var, next);
                }
                vars.pop();
            });
            let scalar_acc: Vec<_> = reductions
                .iter()
                .zip(&vector_acc)
                .map(|(r, &var)| {
                    let acc = e.b.use_var(var);
                    let mut total = e.b.ins().extractlane(acc, 0);
                    for lane in 1..lanes as u8 {
                        let x = e.b.ins().extractlane(acc, lane);
                        total = e.combine(r.op, total, x);
                    }
                    let var = e.b.declare_var(sty);
                    e.b.def_var(var, total);
                    var
                })
                .collect();
            e.for_range(vector_end, inner as i64, 1, &mut |e, i| {
                vars.push(i);
                let values = e.eval(&body.exprs, &vars, sty, None, &[]);
                for (r, &var) in reductions.iter().zip(&scalar_acc) {
                    let acc = e.b.use_var(var);
                    let next = e.combine(r.op, acc, values[r.value]);
                    e.b.def_var(var, next);
                }
                vars.pop();
            });
            let zero = e.b.ins().iconst(types::I64, 0);
            vars.push(zero);
            for (r, &var) in reductions.iter().zip(&scalar_acc) {
                let acc = e.b.use_var(var);
                let current = e.load_at(r.slot, &r.coeffs, &vars, sty);
                let next = e.combine(r.op, current, acc);
                e.store_at(next, r.slot, &r.coeffs, &vars);
            }
        });
    }

    fn combine(&mut self, op: ReduceOp, acc: Value, x: Value) -> Value {
        match op {
            ReduceOp::Sum => self.b.ins().fadd(acc, x),
            ReduceOp::Max => self.b.ins().fmax(acc, x),
        }
    }
}

/// The value a reduction starts from.
fn identity(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
    }
}
