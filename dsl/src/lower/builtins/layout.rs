//! Reductions and layout: `sum`, `mean`, `max`, `min` over axes, `reshape`, `transpose`,
//! `flatten`, and how an axis the user wrote is resolved.

use nabla_compiler::ir::{BinaryOp, Dim, NodeId, Op, ReduceOp, Shape, UnaryOp};

use super::{known_product, located};
use crate::args::Args;
use crate::ast::{Arg, ExprKind, Span};
use crate::diagnostic::Diagnostic;
use crate::lower::{Env, LResult, Lowerer};

impl Lowerer<'_> {
    /// `transpose(x, axes = [...])`: the axes reversed by default.
    pub(super) fn transpose_call(
        &mut self,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let a = Args::new("transpose", span, args, 1, 2, &["axes"])?;
        let x = self.expr(a.positional[0], env)?;
        let rank = self.graph.shape(x).rank();
        let perm = match a.get(1, "axes") {
            None => (0..rank).rev().collect(),
            Some(list) => {
                let values = self.known_numbers(list, env, "axes")?;
                values
                    .iter()
                    .map(|&k| self.resolve_axis(x, k, "every axis in `axes`", list.span))
                    .collect::<LResult<Vec<usize>>>()?
            }
        };
        located(self.graph.transpose(x, &perm), span)
    }

    /// `flatten(x)`: `[batch, ...]` to `[batch, n]`.
    pub(super) fn flatten(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        self.tensor_args("flatten", span, args, env, 1).and_then(|x| {
        let shape = self.graph.shape(x[0]).clone();
        let rest = Shape(shape.dims().get(1..).unwrap_or_default().to_vec());
        let (Some(first), Some(n)) = (shape.dims().first(), rest.numel()) else {
            return Err(Diagnostic::new(
                format!("`flatten` needs a tensor [batch, ...] whose other dimensions are known, got {shape}"),
                args[0].value.span,
            )
            .into());
        };
        let flat = Shape(vec![first.clone(), Dim::Known(n)]);
        located(self.graph.reshape(x[0], &flat), span)
    })
    }

    /// The optional `axis = k` argument, resolved against `x`'s rank.
    pub(super) fn axis(&mut self, a: &Args, x: NodeId, env: &Env) -> LResult<Option<usize>> {
        let Some(e) = a.named("axis") else {
            return Ok(None);
        };
        let k = self.known_number(e, env, "axis")?;
        self.resolve_axis(x, k, "`axis`", e.span).map(Some)
    }

    /// An axis `k` of `x` as the user wrote it (negative ones count from the end), which must
    /// be a whole number in range: never truncated or wrapped into another axis.
    pub(super) fn resolve_axis(&self, x: NodeId, k: f64, what: &str, span: Span) -> LResult<usize> {
        if k.fract() != 0.0 || !k.is_finite() {
            return Err(
                Diagnostic::new(format!("{what} must be a whole number, got {k}"), span).into(),
            );
        }
        let rank = self.graph.shape(x).rank() as i64;
        let axis = self.graph.shape(x).axis(k as i64).map_err(|err| {
            Diagnostic::new(err.0, span).label(format!(
                "expected an axis from {} to {}",
                -rank,
                rank - 1
            ))
        })?;
        Ok(axis)
    }

    /// `sum`, `mean`, `max`, `min` over all elements or `axis = k` (which is then dropped, as in
    /// NumPy); `max(a, b)` and `min(a, b)` with two tensors are elementwise.
    pub(super) fn reduction(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let a = Args::new(
            name,
            span,
            args,
            1,
            if matches!(name, "max" | "min") { 2 } else { 1 },
            &["axis"],
        )?;
        let x = self.expr(a.positional[0], env)?;
        if a.positional.len() == 2 {
            let y = self.expr(a.positional[1], env)?;
            let op = if name == "max" {
                BinaryOp::Max
            } else {
                BinaryOp::Min
            };
            return self.graph.binary(op, x, y).map_err(|e| {
                self.shape_error(
                    e,
                    span,
                    &[(a.positional[0].span, x), (a.positional[1].span, y)],
                )
            });
        }
        let shape = self.graph.shape(x).clone();
        let axes: Vec<usize> = match self.axis(&a, x, env)? {
            Some(axis) => vec![axis],
            None => (0..shape.rank()).collect(),
        };
        let reduced = match name {
            "sum" | "mean" => located(self.graph.sum(x, &axes), span)?,
            "max" => located(self.graph.reduce(ReduceOp::Max, x, &axes), span)?,
            _ => {
                let neg = located(self.graph.unary(UnaryOp::Neg, x), span)?;
                let m = located(self.graph.reduce(ReduceOp::Max, neg, &axes), span)?;
                located(self.graph.unary(UnaryOp::Neg, m), span)?
            }
        };
        let kept = Shape(
            shape
                .0
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, d)| d.clone())
                .collect(),
        );
        let dropped = located(self.graph.reshape(reduced, &kept), span)?;
        if name != "mean" {
            return Ok(dropped);
        }
        let count_shape = Shape(axes.iter().map(|&i| shape.0[i].clone()).collect());
        let count = located(self.graph.node(Op::Numel(count_shape), &[]), span)?;
        located(self.graph.div(dropped, count), span)
    }

    pub(super) fn mean_all(&mut self, x: NodeId, span: Span) -> LResult<NodeId> {
        let total = located(self.graph.sum_all(x), span)?;
        let count = located(
            self.graph.node(Op::Numel(self.graph.shape(x).clone()), &[]),
            span,
        )?;
        located(self.graph.div(total, count), span)
    }

    /// `reshape(x, [d0, d1, ...])`: numbers, symbols like `B`, and at most one `-1`.
    pub(super) fn reshape_call(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("reshape", span, args, 2, 2, &["shape"])?;
        let x = self.expr(a.positional[0], env)?;
        let list = a.required(1, "shape")?;
        let ExprKind::List(items) = &list.kind else {
            return Err(
                Diagnostic::new("`reshape` needs a list of dimensions", list.span)
                    .label("expected a list like [B, 784]")
                    .into(),
            );
        };
        let mut dims = Vec::new();
        let mut infer = None;
        for (i, item) in items.iter().enumerate() {
            match (item.as_name(), item.constant()) {
                (Some(name), _) => dims.push(Dim::sym(name)),
                (None, Some(-1.0)) if infer.is_none() => {
                    infer = Some(i);
                    dims.push(Dim::Known(1));
                }
                (None, value) => dims.push(Dim::Known(self.dim_size(value, item.span)?)),
            }
        }
        if let Some(i) = infer {
            let from = self.graph.shape(x).clone();
            let (n_from, n_to) = (known_product(&from), known_product(&Shape(dims.clone())));
            let symbols = |s: &Shape| {
                let mut v: Vec<Dim> =
                    s.0.iter()
                        .filter(|d| d.known().is_none())
                        .cloned()
                        .collect();
                v.sort();
                v
            };
            if symbols(&from) != symbols(&Shape(dims.clone())) {
                return Err(Diagnostic::new(format!("cannot infer the `-1` dimension reshaping {from}: keep its symbolic dimensions"), list.span)
                    .label("a `-1` stands for a known number of elements").into());
            }
            if n_to == 0 || n_from % n_to != 0 {
                return Err(Diagnostic::new(
                    format!("cannot infer the `-1` dimension reshaping {from}"),
                    list.span,
                )
                .into());
            }
            dims[i] = Dim::Known(n_from / n_to);
        }
        let target = Shape(dims);
        self.graph
            .reshape(x, &target)
            .map_err(|e| self.shape_error(e, span, &[(a.positional[0].span, x)]))
    }
}
