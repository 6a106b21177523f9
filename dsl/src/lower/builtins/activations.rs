//! Activations: `relu` and its kin, `gelu` and `silu`, `where`, the elementwise functions,
//! and `softmax`/`log_softmax` in their stable form (the row maximum subtracted before `exp`).

use nabla_compiler::ir::{BinaryOp, NodeId, ReduceOp, UnaryOp};

use super::located;
use crate::args::Args;
use crate::ast::{Arg, Span};
use crate::diagnostic::Diagnostic;
use crate::lower::{Env, LResult, Lowerer};

impl Lowerer<'_> {
    /// `identity`, `relu`, `step` (Heaviside: 1 where x > 0, else 0, the derivative of relu,
    /// which `nabla diff` prints) and `leaky_relu`.
    pub(super) fn activation(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        match name {
            "identity" => self.tensor_args(name, span, args, env, 1).map(|x| x[0]),
            "relu" => self
                .tensor_args(name, span, args, env, 1)
                .and_then(|x| self.leaky_relu(x[0], 0.0, span)),
            // Heaviside: 1 where x > 0, else 0 (the derivative of relu; `nabla diff` prints it)
            "step" => self.tensor_args(name, span, args, env, 1).and_then(|x| {
                let zero = self.graph.constant(0.0);
                located(self.graph.binary(BinaryOp::Gt, x[0], zero), span)
            }),
            "leaky_relu" => (|| {
                let a = Args::new(name, span, args, 1, 2, &["a"])?;
                let slope = a.number(1, "a", 0.01)?;
                let x = self.expr(a.positional[0], env)?;
                self.leaky_relu(x, slope, span)
            })(),
            "silu" => self.tensor_args(name, span, args, env, 1).and_then(|x| {
                let s = located(self.graph.unary(UnaryOp::Sigmoid, x[0]), span)?;
                located(self.graph.mul(x[0], s), span)
            }),
            "gelu" => self.gelu(span, args, env),
            "where" => self
                .tensor_args(name, span, args, env, 3)
                .and_then(|x| located(self.graph.select(x[0], x[1], x[2]), span)),
            _ => unreachable!("an activation"),
        }
    }

    /// `gelu(x, approximate = "none" | "tanh")`, PyTorch's `nn.GELU`: exactly
    /// `x/2 (1 + erf(x / sqrt 2))` (one primitive, [`UnaryOp::Gelu`]), or
    /// `x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))`.
    fn gelu(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("gelu", span, args, 1, 1, &["approximate"])?;
        let tanh = match a.named("approximate") {
            None => false,
            Some(e) => match crate::args::string(e, "approximate")? {
                "none" => false,
                "tanh" => true,
                other => {
                    return Err(Diagnostic::new(
                        format!("unknown approximation \"{other}\""),
                        e.span,
                    )
                    .label("expected \"none\" or \"tanh\"")
                    .into());
                }
            },
        };
        let x = self.expr(a.positional[0], env)?;
        if !tanh {
            return located(self.graph.unary(UnaryOp::Gelu, x), span);
        }
        let cube = located(self.graph.mul(x, x), span)?;
        let cube = located(self.graph.mul(cube, x), span)?;
        let cube = located(self.graph.scale(cube, 0.044715), span)?;
        let sum = located(self.graph.add(x, cube), span)?;
        let sum = located(
            self.graph.scale(sum, (2.0 / std::f64::consts::PI).sqrt()),
            span,
        )?;
        let inner = located(self.graph.unary(UnaryOp::Tanh, sum), span)?;
        let one = self.graph.constant(1.0);
        let plus_one = located(self.graph.add(inner, one), span)?;
        let half = located(self.graph.scale(x, 0.5), span)?;
        located(self.graph.mul(half, plus_one), span)
    }

    /// `softmax` and `log_softmax` along an axis (the last by default).
    pub(super) fn softmax(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let a = Args::new(name, span, args, 1, 1, &["axis"])?;
        let x = self.expr(a.positional[0], env)?;
        let axis = self
            .axis(&a, x, env)?
            .unwrap_or(self.graph.shape(x).rank().saturating_sub(1));
        if self.graph.shape(x).rank() == 0 {
            return Err(Diagnostic::new(
                format!("`{name}` needs at least one axis, but its argument is a scalar"),
                span,
            )
            .into());
        }
        if name == "log_softmax" {
            return self.log_softmax(x, axis, span);
        }
        let (shifted, sum_exp) = self.shifted_exp_sum(x, axis, span)?;
        let e = located(self.graph.unary(UnaryOp::Exp, shifted), span)?;
        located(self.graph.div(e, sum_exp), span)
    }

    pub(super) fn unary_call(
        &mut self,
        name: &str,
        op: UnaryOp,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let x = self.tensor_args(name, span, args, env, 1)?[0];
        if let Some(c) = self.constant_of(x) {
            return Ok(self
                .graph
                .constant(nabla_compiler::ir::interp::unary(op, c)));
        }
        located(self.graph.unary(op, x), span)
    }

    /// `x <= 0 ? slope * x : x` (relu for slope 0). The derivative at 0 is `slope`, as in
    /// PyTorch, and NaN goes through as in PyTorch (`NaN <= 0` is false), so that a NaN reaches
    /// the loss and the divergence guard.
    pub(super) fn leaky_relu(&mut self, x: NodeId, slope: f64, span: Span) -> LResult<NodeId> {
        let zero = self.graph.constant(0.0);
        let not_positive = located(self.graph.binary(BinaryOp::Le, x, zero), span)?;
        let negative = if slope == 0.0 {
            zero
        } else {
            located(self.graph.scale(x, slope), span)?
        };
        located(self.graph.select(not_positive, negative, x), span)
    }

    /// `(x - max(x), sum(exp(x - max(x))))` along `axis`, the stable core of softmax. The
    /// shift by the maximum changes no value of softmax or log-softmax, so no gradient flows
    /// through it (as in JAX's `logsumexp` and PyTorch's softmax backward): its exact gradient
    /// is zero, and computing that zero costs a reduction and ties handling per row.
    pub(super) fn shifted_exp_sum(
        &mut self,
        x: NodeId,
        axis: usize,
        span: Span,
    ) -> LResult<(NodeId, NodeId)> {
        let max = located(self.graph.reduce(ReduceOp::Max, x, &[axis]), span)?;
        let max = located(self.graph.unary(UnaryOp::StopGradient, max), span)?;
        let shifted = located(self.graph.sub(x, max), span)?;
        let e = located(self.graph.unary(UnaryOp::Exp, shifted), span)?;
        let sum = located(self.graph.sum(e, &[axis]), span)?;
        Ok((shifted, sum))
    }

    pub(super) fn log_softmax(&mut self, x: NodeId, axis: usize, span: Span) -> LResult<NodeId> {
        let (shifted, sum) = self.shifted_exp_sum(x, axis, span)?;
        let log_sum = located(self.graph.unary(UnaryOp::Log, sum), span)?;
        located(self.graph.sub(shifted, log_sum), span)
    }
}
