//! Losses, each averaged over its elements (PyTorch's `reduction = "mean"`; `cross_entropy`
//! over the batch): `mse`, `l1`, `smooth_l1`, `bce` (logarithms clamped at -100, as PyTorch),
//! `bce_with_logits` (`max(z, 0) - z t + log(1 + e^-|z|)`) and `cross_entropy` (log-sum-exp).

use nabla_compiler::ir::{BinaryOp, Dim, NodeId, Op, Shape, ShapeError, UnaryOp};
use nabla_compiler::model::{Prediction, PredictionKind};

use super::located;
use crate::args::Args;
use crate::ast::{Arg, Span};
use crate::diagnostic::Diagnostic;
use crate::lower::{Env, LResult, Lowerer};

impl Lowerer<'_> {
    /// Prediction and target of a loss, which must have equal shapes.
    pub(super) fn loss_operands(
        &mut self,
        name: &str,
        a: &Args,
        env: &Env,
    ) -> LResult<(NodeId, NodeId)> {
        let (p_expr, t_expr) = (a.positional[0], a.positional[1]);
        let (p, t) = (self.expr(p_expr, env)?, self.expr(t_expr, env)?);
        let (ps, ts) = (self.graph.shape(p).clone(), self.graph.shape(t).clone());
        if ps != ts {
            return Err(Diagnostic::new(
                format!("`{name}` needs prediction and target of equal shape, got {ps} and {ts}"),
                a.span,
            )
            .secondary(p_expr.span, format!("prediction: {ps}"))
            .secondary(t_expr.span, format!("target: {ts}"))
            .into());
        }
        self.prediction = Some(match name {
            "bce_with_logits" => Prediction {
                node: p,
                kind: PredictionKind::Logit,
            },
            "bce" => Prediction {
                node: p,
                kind: PredictionKind::Probability,
            },
            _ => self.regression(p),
        });
        Ok((p, t))
    }

    pub(super) fn elementwise_loss(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let a = Args::new(name, span, args, 2, 3, &["beta"])?;
        let (p, t) = self.loss_operands(name, &a, env)?;
        let g = |r: Result<NodeId, ShapeError>| located(r, span);
        let per_element = match name {
            "mse" => {
                let d = g(self.graph.sub(p, t))?;
                g(self.graph.mul(d, d))?
            }
            "l1" => {
                let d = g(self.graph.sub(p, t))?;
                g(self.graph.unary(UnaryOp::Abs, d))?
            }
            "smooth_l1" => {
                // |d| < beta ? 0.5 d^2 / beta : |d| - 0.5 beta
                let beta = a.number(2, "beta", 1.0)?;
                if beta <= 0.0 {
                    return Err(Diagnostic::new("`beta` must be positive", span).into());
                }
                let d = g(self.graph.sub(p, t))?;
                let abs = g(self.graph.unary(UnaryOp::Abs, d))?;
                let beta_node = self.graph.constant(beta);
                let small = g(self.graph.binary(BinaryOp::Lt, abs, beta_node))?;
                let sq = g(self.graph.mul(d, d))?;
                let quadratic = g(self.graph.scale(sq, 0.5 / beta))?;
                let half_beta = self.graph.constant(0.5 * beta);
                let linear = g(self.graph.sub(abs, half_beta))?;
                g(self.graph.select(small, quadratic, linear))?
            }
            "bce" => {
                // Value: -(t max(log p, -100) + (1 - t) max(log(1 - p), -100)), PyTorch's.
                // Gradient: PyTorch's (p - t) / max(p (1 - p), 1e-12), not the derivative of the
                // clamped logs, which is 0 * inf = NaN once p rounds to 0 or 1. It is carried by
                // a surrogate: value + (p G - stop(p G)) with G = stop(that gradient) adds exactly
                // 0 to the value and exactly G to dL/dp. (Targets get no gradient.)
                let one = self.graph.constant(1.0);
                let floor = self.graph.constant(-100.0);
                let p_value = g(self.graph.unary(UnaryOp::StopGradient, p))?;
                let log_p = g(self.graph.unary(UnaryOp::Log, p_value))?;
                let log_p = g(self.graph.binary(BinaryOp::Max, log_p, floor))?;
                let q = g(self.graph.sub(one, p_value))?;
                let log_q = g(self.graph.unary(UnaryOp::Log, q))?;
                let log_q = g(self.graph.binary(BinaryOp::Max, log_q, floor))?;
                let not_t = g(self.graph.sub(one, t))?;
                let a1 = g(self.graph.mul(t, log_p))?;
                let a2 = g(self.graph.mul(not_t, log_q))?;
                let s = g(self.graph.add(a1, a2))?;
                let value = g(self.graph.unary(UnaryOp::Neg, s))?;
                let residual = g(self.graph.sub(p_value, t))?;
                let variance = g(self.graph.mul(p_value, q))?;
                let tiny = self.graph.constant(1e-12);
                let bounded = g(self.graph.binary(BinaryOp::Max, variance, tiny))?;
                let grad = g(self.graph.div(residual, bounded))?;
                let surrogate = g(self.graph.mul(p, grad))?;
                let surrogate_value = g(self.graph.unary(UnaryOp::StopGradient, surrogate))?;
                let zero = g(self.graph.sub(surrogate, surrogate_value))?;
                g(self.graph.add(value, zero))?
            }
            _ => {
                // max(z, 0) - z t + log(1 + e^-|z|)
                let zero = self.graph.constant(0.0);
                let one = self.graph.constant(1.0);
                let relu = g(self.graph.binary(BinaryOp::Max, p, zero))?;
                let zt = g(self.graph.mul(p, t))?;
                let abs = g(self.graph.unary(UnaryOp::Abs, p))?;
                let neg = g(self.graph.unary(UnaryOp::Neg, abs))?;
                let e = g(self.graph.unary(UnaryOp::Exp, neg))?;
                let one_plus = g(self.graph.add(one, e))?;
                let softplus = g(self.graph.unary(UnaryOp::Log, one_plus))?;
                let d = g(self.graph.sub(relu, zt))?;
                g(self.graph.add(d, softplus))?
            }
        };
        self.mean_all(per_element, span)
    }

    /// `cross_entropy(logits, y)` over the last axis: `y` holds class indices (a `: class`
    /// target with the logits' shape less its last axis) or probabilities (the logits' shape).
    /// The mean over the batch of `-sum(target * log_softmax(logits))`.
    pub(super) fn cross_entropy(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("cross_entropy", span, args, 2, 2, &[])?;
        let (l_expr, y_expr) = (a.positional[0], a.positional[1]);
        let (logits, y) = (self.expr(l_expr, env)?, self.expr(y_expr, env)?);
        let (ls, ys) = (
            self.graph.shape(logits).clone(),
            self.graph.shape(y).clone(),
        );
        let Some((Dim::Known(classes), batch_dims)) =
            ls.0.split_last().map(|(c, b)| (c.clone(), b.to_vec()))
        else {
            return Err(Diagnostic::new(format!("`cross_entropy` needs logits whose last axis (the classes) has a known size, got {ls}"), l_expr.span).into());
        };
        if classes < 2 {
            return Err(Diagnostic::new(
                format!("`cross_entropy` over {classes} class is always 0: its logits {ls} need at least 2 classes on their last axis; for one logit of a yes/no answer use `bce_with_logits`"),
                l_expr.span,
            )
            .into());
        }
        let batch = Shape(batch_dims);
        let target = if self.class_target(y, classes) {
            if ys != batch {
                return Err(Diagnostic::new(
                    format!("class targets for logits {ls} must have shape {batch}, got {ys}"),
                    a.span,
                )
                .secondary(l_expr.span, format!("logits: {ls}"))
                .secondary(y_expr.span, format!("class indices: {ys}"))
                .into());
            }
            let mut column = batch.0.clone();
            column.push(Dim::Known(1));
            let y_col = located(self.graph.reshape(y, &Shape(column)), span)?;
            let iota = located(
                self.graph.node(
                    Op::Iota {
                        shape: ls.clone(),
                        axis: ls.rank() - 1,
                    },
                    &[],
                ),
                span,
            )?;
            located(self.graph.binary(BinaryOp::Eq, y_col, iota), span)?
        } else if ys == ls {
            y
        } else {
            return Err(Diagnostic::new(format!("`cross_entropy` needs class indices of shape {batch} (declared `: class`) or probabilities of shape {ls}, got {ys}"), a.span)
                .secondary(l_expr.span, format!("logits: {ls}"))
                .secondary(y_expr.span, format!("target: {ys}")).into());
        };
        self.prediction = Some(Prediction {
            node: logits,
            kind: PredictionKind::Classes,
        });
        let log_probs = self.log_softmax(logits, ls.rank() - 1, span)?;
        let picked = located(self.graph.mul(target, log_probs), span)?;
        let total = located(self.graph.sum_all(picked), span)?;
        let count = located(self.graph.node(Op::Numel(batch), &[]), span)?;
        let mean = located(self.graph.div(total, count), span)?;
        located(self.graph.unary(UnaryOp::Neg, mean), span)
    }
}
