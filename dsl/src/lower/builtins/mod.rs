//! The built-in functions, each lowered to graph primitives: this file dispatches a call by name
//! and holds what the families share (tensor arguments, `dense`, layer parameters); one file per
//! family holds the rest ([`activations`], [`layout`], [`convolution`], [`normalisation`],
//! [`attention`], [`recurrent`], [`losses`]). Numerically stable forms throughout: softmax and cross-entropy subtract the
//! row maximum (log-sum-exp), `bce_with_logits` uses `max(z, 0) - z t + log(1 + e^-|z|)`, and
//! `bce` clamps its logarithms at -100 and bounds its gradient as PyTorch does. Every loss
//! averages over its elements (PyTorch's `reduction = "mean"`); `cross_entropy` averages over
//! the batch.

use nabla_compiler::ir::{Dim, NodeId, Shape, ShapeError, UnaryOp};
use nabla_compiler::model::Mode;

use crate::args::Args;
use crate::ast::{Arg, Expr, ExprKind, Span};
use crate::diagnostic::Diagnostic;
use crate::init;
use crate::lower::{Env, Fail, LResult, Lowerer};

mod activations;
mod attention;
mod convolution;
mod layout;
mod losses;
mod normalisation;
mod recurrent;

/// Every built-in function name.
pub const BUILTINS: [&str; 52] = [
    "exp",
    "log",
    "sqrt",
    "abs",
    "tanh",
    "sigmoid",
    "stop_gradient",
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "atan",
    "erf",
    "relu",
    "step",
    "leaky_relu",
    "gelu",
    "silu",
    "where",
    "identity",
    "softmax",
    "log_softmax",
    "sum",
    "mean",
    "max",
    "min",
    "transpose",
    "reshape",
    "dense",
    "dropout",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "flatten",
    "batch_norm",
    "layer_norm",
    "rms_norm",
    "attention",
    "causal_self_attention",
    "embedding",
    "rnn",
    "lstm",
    "gru",
    "last",
    "mse",
    "l1",
    "smooth_l1",
    "bce",
    "bce_with_logits",
    "cross_entropy",
];

/// Whether `name` is a built-in function.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}

impl Lowerer<'_> {
    /// Lowers a built-in call, or `None` when `name` is not a built-in.
    pub(crate) fn builtin(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> Option<LResult<NodeId>> {
        let unary = match name {
            "exp" => Some(UnaryOp::Exp),
            "log" => Some(UnaryOp::Log),
            "sqrt" => Some(UnaryOp::Sqrt),
            "abs" => Some(UnaryOp::Abs),
            "tanh" => Some(UnaryOp::Tanh),
            "sigmoid" => Some(UnaryOp::Sigmoid),
            "stop_gradient" => Some(UnaryOp::StopGradient),
            "sin" => Some(UnaryOp::Sin),
            "cos" => Some(UnaryOp::Cos),
            "tan" => Some(UnaryOp::Tan),
            "sinh" => Some(UnaryOp::Sinh),
            "cosh" => Some(UnaryOp::Cosh),
            "atan" => Some(UnaryOp::Atan),
            "erf" => Some(UnaryOp::Erf),
            _ => None,
        };
        if let Some(op) = unary {
            return Some(self.unary_call(name, op, span, args, env));
        }
        let result = match name {
            "identity" | "relu" | "step" | "leaky_relu" | "gelu" | "silu" | "where" => {
                self.activation(name, span, args, env)
            }
            "softmax" | "log_softmax" => self.softmax(name, span, args, env),
            "sum" | "mean" | "max" | "min" => self.reduction(name, span, args, env),
            "transpose" => self.transpose_call(span, args, env),
            "reshape" => self.reshape_call(span, args, env),
            "dense" => self.dense(span, args, env),
            "conv2d" => self.conv2d(span, args, env),
            "batch_norm" => self.batch_norm(span, args, env),
            "layer_norm" | "rms_norm" => self.layer_norm(name, span, args, env),
            "attention" => self.attention(span, args, env),
            "causal_self_attention" => self.causal_self_attention(span, args, env),
            "max_pool2d" | "avg_pool2d" => self.pool(name, span, args, env),
            "global_avg_pool" => self.global_avg_pool(span, args, env),
            "flatten" => self.flatten(span, args, env),
            "dropout" => {
                let dropped = self.dropout(span, args, env);
                if self.mode != Mode::Train {
                    // The identity: the result is the argument itself, which keeps its own tag.
                    return Some(dropped);
                }
                dropped
            }
            "mse" | "l1" | "smooth_l1" | "bce" | "bce_with_logits" => {
                self.elementwise_loss(name, span, args, env)
            }
            "cross_entropy" => self.cross_entropy(span, args, env),
            "embedding" => self.embedding(span, args, env),
            "rnn" | "lstm" | "gru" => self.recurrent(name, span, args, env),
            "last" => self.last(span, args, env),
            _ => return None,
        };
        if let Ok(node) = result
            && self.graph.describe(node) != name
        {
            self.graph.tag_builtin(node, name);
        }
        Some(result)
    }

    /// Exactly `n` positional tensor arguments.
    fn tensor_args(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
        n: usize,
    ) -> LResult<Vec<NodeId>> {
        let a = Args::new(name, span, args, n, n, &[])?;
        a.positional.iter().map(|e| self.expr(e, env)).collect()
    }

    /// The numbers an argument stands for when the model is compiled, row-major: a number, a
    /// (nested) list of them, or anything that folds to constants, such as a function's
    /// parameter or `2 * k`. A layer's sizes and windows are fixed when it is built (as in
    /// PyTorch's constructors), so a value that depends on the model's inputs is refused.
    pub(super) fn known_numbers(&mut self, e: &Expr, env: &Env, what: &str) -> LResult<Vec<f64>> {
        if let ExprKind::List(items) = &e.kind {
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                values.extend(self.known_numbers(item, env, what)?);
            }
            return Ok(values);
        }
        let node = self.expr(e, env)?;
        match self.constant_of(node) {
            Some(v) if v.is_finite() => Ok(vec![v]),
            _ => Err(Diagnostic::new(
                format!("`{what}` must be known when the model is compiled"),
                e.span,
            )
            .label("expected a number, or a function parameter bound to one")
            .into()),
        }
    }

    /// One number known when the model is compiled (see [`Self::known_numbers`]).
    pub(super) fn known_number(&mut self, e: &Expr, env: &Env, what: &str) -> LResult<f64> {
        if matches!(e.kind, ExprKind::List(_)) {
            return Err(
                Diagnostic::new(format!("`{what}` must be a number"), e.span)
                    .label("expected a number, not a list")
                    .into(),
            );
        }
        Ok(self.known_numbers(e, env, what)?[0])
    }

    /// A whole number in `min..=max` known when the model is compiled.
    pub(super) fn known_whole(
        &mut self,
        e: &Expr,
        env: &Env,
        what: &str,
        range: (usize, usize),
    ) -> LResult<usize> {
        let v = self.known_number(e, env, what)?;
        let (min, max) = range;
        Ok(crate::args::whole(v, e.span, what, (min as u64, max as u64))? as usize)
    }

    /// `dense(x, n, init = ..., bias = true, bias_init = ...)`: `x @ w + b` with `w: [in, n]`
    /// and `b: [n]`, both PyTorch `nn.Linear`-initialised unless told otherwise.
    fn dense(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new(
            "dense",
            span,
            args,
            2,
            2,
            &["units", "init", "bias", "bias_init"],
        )?;
        let x = self.expr(a.positional[0], env)?;
        let units_expr = a.required(1, "units")?;
        let units_node = self.expr(units_expr, env)?;
        let units = self.dim_size(self.constant_of(units_node), units_expr.span)?;
        let shape = self.graph.shape(x).clone();
        let middle_known = shape.dims().iter().skip(1).all(|d| d.known().is_some());
        let fan_in = match shape.dims() {
            [_, .., Dim::Known(n)] if middle_known => *n,
            _ => {
                return Err(wrong_shape(
                    "`dense` needs a tensor [batch, ..., features] whose other dimensions are known",
                    &shape,
                    a.positional[0].span,
                ));
            }
        };
        let prefix = self.layer_name(&["w", "b"]);
        let w_shape = [fan_in, units];
        let w = self.layer_param(
            &a,
            "init",
            &format!("{prefix}.w"),
            &w_shape,
            (fan_in, units),
            span,
        )?;
        let y = located(self.graph.matmul_last_axis(x, w), span)?;
        match self.bias(&a, &prefix, units, (fan_in, units), span)? {
            Some(b) => located(self.graph.add(y, b), span),
            None => Ok(y),
        }
    }

    /// A layer's bias `{prefix}.b [units]` unless `bias = false` (see [`Self::layer_param`]).
    fn bias(
        &mut self,
        a: &Args,
        prefix: &str,
        units: usize,
        fans: (usize, usize),
        span: Span,
    ) -> LResult<Option<NodeId>> {
        if !a.flag("bias", true)? {
            return Ok(None);
        }
        let name = format!("{prefix}.b");
        self.layer_param(a, "bias_init", &name, &[units], fans, span)
            .map(Some)
    }

    /// A layer's parameter `name` of `shape`, initialised as the argument `init_key` says, else
    /// `fan_in_uniform` (PyTorch's default for linear and convolution layers' weights and
    /// biases).
    fn layer_param(
        &mut self,
        a: &Args,
        init_key: &str,
        name: &str,
        shape: &[usize],
        fans: (usize, usize),
        span: Span,
    ) -> LResult<NodeId> {
        let (init, init_name) = match a.named(init_key) {
            Some(e) => init::resolve(Some(e), shape, fans)?,
            None => (init::fan_in_uniform(fans.0), "fan_in_uniform".into()),
        };
        self.new_param(name, Shape::known(shape), init, init_name, span)
    }
}

/// Maps a builder result to an error located at `span`.
fn located<T>(r: Result<T, ShapeError>, span: Span) -> LResult<T> {
    r.map_err(|e| {
        Diagnostic::new(format!("shape mismatch: {}", e.0), span)
            .label("in this expression")
            .into()
    })
}

/// The error for an argument of a shape the built-in cannot take: what it `needs`, and what
/// it got, named in full at the argument.
fn wrong_shape(needs: &str, shape: &Shape, span: Span) -> Fail {
    Diagnostic::new(format!("{needs}, got {shape}"), span)
        .label(format!("this has shape {shape}"))
        .into()
}

fn known_product(shape: &Shape) -> usize {
    shape.0.iter().filter_map(Dim::known).product()
}
