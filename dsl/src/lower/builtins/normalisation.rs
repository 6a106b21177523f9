//! Normalisation and dropout: `batch_norm` (batch statistics when training, running ones when
//! evaluating), `layer_norm` and `rms_norm` (each example's own statistics over its last axis,
//! the same in every mode) and `dropout` (a mask the runtime draws, the identity when
//! evaluating).

use nabla_compiler::ir::{Dim, NodeId, Op, Shape, UnaryOp};
use nabla_compiler::model::{DropoutSpec, Mode, StateSpec};

use super::{located, wrong_shape};
use crate::args::Args;
use crate::ast::{Arg, Span};
use crate::diagnostic::Diagnostic;
use crate::lower::{Env, LResult, Lowerer};

impl Lowerer<'_> {
    /// `batch_norm(x, momentum = 0.1, eps = 1e-5, affine = true)` over features `[B, F]` or
    /// channels `[B, C, H, W]`, as PyTorch's `BatchNorm1d`/`2d`: training normalises with the
    /// batch's mean and biased variance and updates the running statistics (`.running_mean`,
    /// `.running_var`, the latter with the unbiased variance) by `(1 - momentum) * running +
    /// momentum * batch`; evaluation normalises with the running statistics. With `affine`, a
    /// scale `.gamma` (ones) and shift `.beta` (zeros) follow.
    pub(super) fn batch_norm(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new(
            "batch_norm",
            span,
            args,
            1,
            1,
            &["momentum", "eps", "affine"],
        )?;
        let x = self.expr(a.positional[0], env)?;
        let shape = self.graph.shape(x).clone();
        let (features, axes, column): (usize, Vec<usize>, Vec<usize>) = match shape.dims() {
            [_, Dim::Known(f)] => (*f, vec![0], vec![*f]),
            [_, Dim::Known(c), Dim::Known(_), Dim::Known(_)] => (*c, vec![0, 2, 3], vec![*c, 1, 1]),
            _ => {
                return Err(wrong_shape(
                    "`batch_norm` needs features [batch, features] or images [batch, channels, height, width] of known size",
                    &shape,
                    a.positional[0].span,
                ));
            }
        };
        let momentum = a.number(9, "momentum", 0.1)?;
        let eps = a.number(9, "eps", 1e-5)?;
        for (key, value, ok) in [
            ("momentum", momentum, (0.0..=1.0).contains(&momentum)),
            ("eps", eps, eps > 0.0),
        ] {
            if !ok {
                let at = a.named(key).map_or(span, |e| e.span);
                return Err(Diagnostic::new(
                    format!(
                        "`{key}` must be {}, got {value}",
                        if key == "eps" {
                            "above 0"
                        } else {
                            "from 0 to 1"
                        }
                    ),
                    at,
                )
                .into());
            }
        }
        let prefix = self.layer_name(&["gamma", "beta", "running_mean", "running_var"]);
        let stat_shape = Shape::known(&[features]);
        let column_shape = Shape::known(&column);
        // The unbiased variance divides by one less than a channel's values in the batch.
        let per_example: usize = axes[1..]
            .iter()
            .map(|&a| shape.dims()[a].known().unwrap_or(1))
            .product();
        let min_batch = if per_example == 1 { 2 } else { 1 };
        let state = |lw: &mut Self, name: &str, init: f64| -> LResult<NodeId> {
            let full = format!("{prefix}.{name}");
            let node = located(lw.graph.input(&full, stat_shape.clone()), span)?;
            lw.states.push(StateSpec {
                name: full,
                node,
                init,
                update: None,
                min_batch,
            });
            Ok(node)
        };
        let running_mean = state(self, "running_mean", 0.0)?;
        let running_var = state(self, "running_var", 1.0)?;
        let (mean, var) = if self.mode == Mode::Train {
            let reduced: Vec<Dim> = axes.iter().map(|&a| shape.dims()[a].clone()).collect();
            let count = located(self.graph.node(Op::Numel(Shape(reduced)), &[]), span)?;
            let sum = located(self.graph.sum(x, &axes), span)?;
            let mean = located(self.graph.div(sum, count), span)?;
            let centred = located(self.graph.sub(x, mean), span)?;
            let squares = located(self.graph.mul(centred, centred), span)?;
            let total = located(self.graph.sum(squares, &axes), span)?;
            let var = located(self.graph.div(total, count), span)?;
            // running = (1 - momentum) running + momentum batch, the variance unbiased.
            let one = self.graph.constant(1.0);
            let count_less_one = located(self.graph.sub(count, one), span)?;
            let unbiased = located(self.graph.div(total, count_less_one), span)?;
            let updates = [(running_mean, mean, 0), (running_var, unbiased, 1)];
            for (running, batch, k) in updates {
                let batch = located(self.graph.unary(UnaryOp::StopGradient, batch), span)?;
                let batch = located(self.graph.reshape(batch, &stat_shape), span)?;
                let kept = located(self.graph.scale(running, 1.0 - momentum), span)?;
                let added = located(self.graph.scale(batch, momentum), span)?;
                let new = located(self.graph.add(kept, added), span)?;
                let n = self.states.len();
                self.states[n - 2 + k].update = Some(new);
            }
            (mean, var)
        } else {
            let mean = located(self.graph.reshape(running_mean, &column_shape), span)?;
            let var = located(self.graph.reshape(running_var, &column_shape), span)?;
            (mean, var)
        };
        let centred = located(self.graph.sub(x, mean), span)?;
        let normalised = self.normalise(centred, var, eps, span)?;
        if !a.flag("affine", true)? {
            return Ok(normalised);
        }
        self.scale_and_shift(normalised, &prefix, (features, &column_shape), true, span)
    }

    /// `centred / sqrt(var + eps)`.
    fn normalise(&mut self, centred: NodeId, var: NodeId, eps: f64, span: Span) -> LResult<NodeId> {
        let eps = self.graph.constant(eps);
        let var_eps = located(self.graph.add(var, eps), span)?;
        let std = located(self.graph.unary(UnaryOp::Sqrt, var_eps), span)?;
        located(self.graph.div(centred, std), span)
    }

    /// `x` times a scale `{prefix}.gamma` (ones), plus with `shift` a shift `{prefix}.beta`
    /// (zeros), both `[features]` and read in the shape `column`, which broadcasts along `x`.
    fn scale_and_shift(
        &mut self,
        x: NodeId,
        prefix: &str,
        (features, column): (usize, &Shape),
        shift: bool,
        span: Span,
    ) -> LResult<NodeId> {
        let param = |lw: &mut Self, name: &str, value: f64, init: &str| -> LResult<NodeId> {
            let p = lw.new_param(
                &format!("{prefix}.{name}"),
                Shape::known(&[features]),
                nabla_runtime::Init::Constant(value),
                init.into(),
                span,
            )?;
            located(lw.graph.reshape(p, column), span)
        };
        let scale = param(self, "gamma", 1.0, "ones")?;
        let scaled = located(self.graph.mul(x, scale), span)?;
        if !shift {
            return Ok(scaled);
        }
        let beta = param(self, "beta", 0.0, "zeros")?;
        located(self.graph.add(scaled, beta), span)
    }

    /// `layer_norm(x, eps = 1e-5, affine = true, bias = true)` and `rms_norm(x, eps = 1.1920929e-7,
    /// affine = true)` over the last axis, as PyTorch's `nn.LayerNorm` (`(x - mean) /
    /// sqrt(var + eps)`, the variance biased) and `nn.RMSNorm` (`x / sqrt(mean(x²) + eps)`,
    /// whose default `eps` is f32's machine epsilon), then a scale `.gamma` (ones) and, for
    /// `layer_norm` with `bias`, a shift `.beta` (zeros).
    pub(super) fn layer_norm(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let rms = name == "rms_norm";
        let keys: &[&str] = if rms {
            &["eps", "affine"]
        } else {
            &["eps", "affine", "bias"]
        };
        let a = Args::new(name, span, args, 1, 1, keys)?;
        let x = self.expr(a.positional[0], env)?;
        let shape = self.graph.shape(x).clone();
        let features = match shape.dims().last() {
            Some(Dim::Known(f)) => *f,
            _ => {
                return Err(wrong_shape(
                    &format!(
                        "`{name}` needs a tensor whose last axis (the features) has a known size"
                    ),
                    &shape,
                    a.positional[0].span,
                ));
            }
        };
        let eps = a.number(9, "eps", if rms { f64::from(f32::EPSILON) } else { 1e-5 })?;
        if eps <= 0.0 {
            let at = a.named("eps").map_or(span, |e| e.span);
            return Err(Diagnostic::new(format!("`eps` must be above 0, got {eps}"), at).into());
        }
        let axis = [shape.rank() - 1];
        let count = self.graph.constant(features as f64);
        let centred = if rms {
            x
        } else {
            let sum = located(self.graph.sum(x, &axis), span)?;
            let mean = located(self.graph.div(sum, count), span)?;
            located(self.graph.sub(x, mean), span)?
        };
        let squares = located(self.graph.mul(centred, centred), span)?;
        let total = located(self.graph.sum(squares, &axis), span)?;
        let var = located(self.graph.div(total, count), span)?;
        let normalised = self.normalise(centred, var, eps, span)?;
        if !a.flag("affine", true)? {
            return Ok(normalised);
        }
        let with_bias = !rms && a.flag("bias", true)?;
        let suffixes: &[&str] = if with_bias {
            &["gamma", "beta"]
        } else {
            &["gamma"]
        };
        let prefix = self.layer_name(suffixes);
        let column = Shape::known(&[features]);
        self.scale_and_shift(normalised, &prefix, (features, &column), with_bias, span)
    }

    /// `dropout(x, p)`: inverted dropout. Training multiplies `x` by a mask input the runtime
    /// fills each step with `1 / (1 - p)` or 0 (probability `p`); evaluation is the identity.
    pub(super) fn dropout(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("dropout", span, args, 2, 2, &["p"])?;
        let x = self.expr(a.positional[0], env)?;
        let p_expr = a.required(1, "p")?;
        let p = self.known_number(p_expr, env, "p")?;
        if !(0.0..1.0).contains(&p) {
            return Err(Diagnostic::new(
                format!("a dropout probability must be at least 0 and below 1, got {p}"),
                p_expr.span,
            )
            .label("the probability of zeroing each element")
            .into());
        }
        let shape = self.graph.shape(x).clone();
        if !matches!(shape.dims().first(), Some(Dim::Sym(_))) {
            return Err(Diagnostic::new(
                format!("dropout needs a tensor with the batch dimension first, like [B, 128], but this one has shape {shape}"),
                a.positional[0].span,
            )
            .label("each example draws its own mask")
            .into());
        }
        if self.mode != Mode::Train || p == 0.0 {
            return Ok(x);
        }
        let name = format!("dropout#{}", self.dropouts.len() + 1);
        let mask = located(self.graph.input(&name, shape), span)?;
        self.dropouts.push(DropoutSpec {
            name,
            node: mask,
            p,
        });
        located(self.graph.mul(x, mask), span)
    }
}
