//! The built-in functions: activations, reductions, layout, layers and losses, each lowered to
//! graph primitives. Numerically stable forms throughout: softmax and cross-entropy subtract the
//! row maximum (log-sum-exp), `bce_with_logits` uses `max(z, 0) - z t + log(1 + e^-|z|)`, and
//! `bce` clamps its logarithms at -100 and bounds its gradient as PyTorch does. Every loss
//! averages over its elements (PyTorch's `reduction = "mean"`); `cross_entropy` averages over
//! the batch.

use nabla_compiler::ir::{
    BinaryOp, Dim, Fill, NodeId, Op, ReduceOp, Shape, ShapeError, UnaryOp, Window,
};
use nabla_compiler::model::{CarrySpec, DropoutSpec, Mode, Prediction, PredictionKind, StateSpec};

use crate::args::Args;
use crate::ast::{Arg, ExprKind, Span};
use crate::diagnostic::Diagnostic;
use crate::init;
use crate::lower::{Env, Fail, LResult, Lowerer};

/// The largest kernel, stride, padding or dilation accepted (beyond any real image).
const MAX_WINDOW: usize = 1 << 16;

/// Every built-in function name.
pub const BUILTINS: [&str; 45] = [
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
            "softmax" | "log_softmax" => (|| {
                let a = Args::new(name, span, args, 1, 1, &["axis"])?;
                let x = self.expr(a.positional[0], env)?;
                let axis = self
                    .axis(&a, x)?
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
            })(),
            "sum" | "mean" | "max" | "min" => self.reduction(name, span, args, env),
            "transpose" => (|| {
                let a = Args::new(name, span, args, 1, 2, &["axes"])?;
                let x = self.expr(a.positional[0], env)?;
                let rank = self.graph.shape(x).rank();
                let perm = match a.get(1, "axes") {
                    None => (0..rank).rev().collect(),
                    Some(list) => {
                        let (values, _) = init::literal(list)?;
                        values
                            .iter()
                            .map(|&k| self.resolve_axis(x, k, "every axis in `axes`", list.span))
                            .collect::<LResult<Vec<usize>>>()?
                    }
                };
                located(self.graph.transpose(x, &perm), span)
            })(),
            "reshape" => self.reshape_call(span, args, env),
            "dense" => self.dense(span, args, env),
            "conv2d" => self.conv2d(span, args, env),
            "batch_norm" => self.batch_norm(span, args, env),
            "max_pool2d" | "avg_pool2d" => self.pool(name, span, args, env),
            "global_avg_pool" => self.tensor_args(name, span, args, env, 1).and_then(|x| {
                let (_, _, h, w) = self.images(name, &x, args[0].value.span)?;
                let sum = located(self.graph.sum(x[0], &[2, 3]), span)?;
                let mean = located(self.graph.scale(sum, 1.0 / (h * w) as f64), span)?;
                let d = self.graph.shape(x[0]).dims().to_vec();
                located(self.graph.reshape(mean, &Shape(d[..2].to_vec())), span)
            }),
            "flatten" => self.tensor_args(name, span, args, env, 1).and_then(|x| {
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
            }),
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
            "last" => self.tensor_args(name, span, args, env, 1).and_then(|x| {
                let shape = self.graph.shape(x[0]).clone();
                let Some(Dim::Known(steps)) = shape.dims().get(1).cloned() else {
                    return Err(Diagnostic::new(
                        format!("`last` needs a sequence [batch, steps, ...] with a known number of steps, got {shape}"),
                        args[0].value.span,
                    )
                    .into());
                };
                let step = located(self.graph.slice(x[0], 1, steps - 1, 1), span)?;
                let mut dims = shape.0.clone();
                dims.remove(1);
                located(self.graph.reshape(step, &Shape(dims)), span)
            }),
            _ => return None,
        };
        if let Ok(node) = result
            && self.graph.describe(node) != name
        {
            self.graph.tag_builtin(node, name);
        }
        Some(result)
    }

    /// `x` as images `[N, C, H, W]` with known `C`, `H`, `W`, or a located error.
    fn images(&self, name: &str, x: &[NodeId], at: Span) -> LResult<(Dim, usize, usize, usize)> {
        let shape = self.graph.shape(x[0]);
        match shape.dims() {
            [n, Dim::Known(c), Dim::Known(h), Dim::Known(w)] => Ok((n.clone(), *c, *h, *w)),
            _ => Err(wrong_shape(
                &format!("`{name}` needs images [batch, channels, height, width] of known size"),
                shape,
                at,
            )),
        }
    }

    /// A size given as a number or a pair `[height, width]`, at least `min`.
    fn pair(
        &self,
        at: Option<&crate::ast::Expr>,
        what: &str,
        default: [usize; 2],
        min: usize,
    ) -> LResult<[usize; 2]> {
        let Some(e) = at else {
            return Ok(default);
        };
        let (values, _) = init::literal(e)?;
        let pair = match values.as_slice() {
            [v] => [*v, *v],
            [h, w] => [*h, *w],
            _ => {
                return Err(Diagnostic::new(
                    format!("`{what}` must be a number or a pair [height, width]"),
                    e.span,
                )
                .label("expected a number or [h, w]")
                .into());
            }
        };
        if pair
            .iter()
            .any(|v| v.fract() != 0.0 || *v < min as f64 || *v > MAX_WINDOW as f64)
        {
            return Err(Diagnostic::new(
                format!(
                    "`{what}` must be whole numbers from {min} to {MAX_WINDOW}, got {}",
                    pair.map(|v| v.to_string()).join(" and ")
                ),
                e.span,
            )
            .into());
        }
        Ok(pair.map(|v| v as usize))
    }

    /// `window` if it fits its images, or a located error stating the output-size rule with
    /// the numbers of the axis that fails.
    fn fitting(&self, window: Window, x_shape: &Shape, span: Span) -> LResult<Window> {
        if window.output().is_ok() {
            return Ok(window);
        }
        let (k, p) = (window.kernel, window.padding);
        let axis = (0..2)
            .find(|&a| window.image[a] + 2 * p[a] < window.dilation[a] * (k[a] - 1) + 1)
            .unwrap_or(0);
        let (h, s, d) = (
            window.image[axis],
            window.stride[axis],
            window.dilation[axis],
        );
        let size = (h + 2 * p[axis]) as i64 - (d * (k[axis] - 1)) as i64 - 1;
        Err(Diagnostic::new(
            format!("a {}x{} window does not fit the input {x_shape} padded by {}x{}", k[0], k[1], p[0], p[1]),
            span,
        )
        .label(format!(
            "its {}: floor(({h} + 2×{} - {d}×({} - 1) - 1) / {s}) + 1 = {}",
            ["height", "width"][axis],
            p[axis],
            k[axis],
            size.div_euclid(s as i64) + 1
        ))
        .note("the output size is floor((H + 2p - d(k - 1) - 1) / s) + 1 per axis, and must be at least 1")
        .into())
    }

    /// `conv2d(x, out_channels, kernel, stride = 1, padding = 0, dilation = 1, groups = 1,
    /// bias = true, init = ..., bias_init = ...)`: a layer with `.w [out, in / groups, kh, kw]`
    /// and `.b [out]`, both `fan_in_uniform` (PyTorch's `nn.Conv2d` default) unless given.
    /// With groups, each group of `in / groups` channels is convolved with its `out / groups`
    /// filters (PyTorch's semantics), lowered to one convolution per group on channel slices.
    fn conv2d(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let names = [
            "out_channels",
            "kernel",
            "stride",
            "padding",
            "dilation",
            "groups",
            "bias",
            "init",
            "bias_init",
        ];
        let a = Args::new("conv2d", span, args, 3, 3, &names)?;
        let x = self.expr(a.positional[0], env)?;
        let x_shape = self.graph.shape(x).clone();
        let (_, c, h, w) = self.images("conv2d", &[x], a.positional[0].span)?;
        let out = crate::args::integer(a.required(1, "out_channels")?, "out_channels", 1, 1 << 20)?
            as usize;
        let kernel = self.pair(a.get(2, "kernel"), "kernel", [1, 1], 1)?;
        let stride = self.pair(a.named("stride"), "stride", [1, 1], 1)?;
        let dilation = self.pair(a.named("dilation"), "dilation", [1, 1], 1)?;
        let padding = match a.named("padding") {
            Some(e) if matches!(e.kind, ExprKind::Str(_)) => {
                let text = crate::args::string(e, "padding")?;
                if text != "same" {
                    return Err(Diagnostic::new(
                        format!("`padding` is a size or \"same\", got \"{text}\""),
                        e.span,
                    )
                    .into());
                }
                if stride != [1, 1] {
                    return Err(Diagnostic::new(
                        "padding = \"same\" needs stride 1 (as in PyTorch)",
                        e.span,
                    )
                    .into());
                }
                let total = [0, 1].map(|i| dilation[i] * (kernel[i] - 1));
                if total.iter().any(|t| t % 2 == 1) {
                    return Err(Diagnostic::new("padding = \"same\" with an even kernel needs uneven padding, which nabla does not support; use an odd kernel", e.span).into());
                }
                total.map(|t| t / 2)
            }
            other => self.pair(other, "padding", [0, 0], 0)?,
        };
        let mut groups = 1;
        if let Some(g) = a.named("groups") {
            groups = crate::args::integer(g, "groups", 1, 1 << 20)? as usize;
            if !c.is_multiple_of(groups) || !out.is_multiple_of(groups) {
                return Err(Diagnostic::new(
                    format!(
                        "`groups = {groups}` must divide both the input channels ({c}, of \
                         input shape {x_shape}) and `out_channels` ({out})"
                    ),
                    g.span,
                )
                .label(format!("{c} input and {out} output channels"))
                .into());
            }
        }
        let window = Window {
            image: [h, w],
            kernel,
            stride,
            padding,
            dilation,
            fill: Fill::Zero,
        };
        let window = self.fitting(window, &x_shape, span)?;
        let prefix = self.layer_name();
        let w_shape = [out, c / groups, kernel[0], kernel[1]];
        let fan_in = c / groups * kernel[0] * kernel[1];
        let fan_out = out * kernel[0] * kernel[1];
        let weight = self.layer_param(
            &a,
            "init",
            &format!("{prefix}.w"),
            &w_shape,
            (fan_in, fan_out),
            span,
        )?;
        // Groups: each slice of `groups` channels convolved with its slice of the filters,
        // the outputs joined along the channels.
        let mut outputs = Vec::with_capacity(groups);
        for g in 0..groups {
            let (xg, wg) = if groups == 1 {
                (x, weight)
            } else {
                let (ci, co) = (c / groups, out / groups);
                (
                    located(self.graph.slice(x, 1, g * ci, ci), span)?,
                    located(self.graph.slice(weight, 0, g * co, co), span)?,
                )
            };
            outputs.push(located(self.graph.node(Op::Conv(window), &[xg, wg]), span)?);
        }
        let y = located(self.graph.concat(&outputs, 1), span)?;
        match self.bias(&a, &prefix, out, (fan_in, fan_out), span)? {
            Some(b) => {
                let column = located(self.graph.reshape(b, &Shape::known(&[out, 1, 1])), span)?;
                located(self.graph.add(y, column), span)
            }
            None => Ok(y),
        }
    }

    /// `max_pool2d(x, kernel, stride = kernel, padding = 0, dilation = 1)` and `avg_pool2d(x,
    /// kernel, stride = kernel, padding = 0)` (padding counted in the average, PyTorch's
    /// `count_include_pad = true`). Max pooling passes its gradient to the first maximum of
    /// each window in row-major order, as PyTorch does ([`Op::MaxPoolGather`]); average pooling
    /// sums the windows of the images ([`Op::Windows`]).
    fn pool(&mut self, name: &str, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let max = name == "max_pool2d";
        let names: &[&str] = if max {
            &["kernel", "stride", "padding", "dilation"]
        } else {
            &["kernel", "stride", "padding"]
        };
        let a = Args::new(name, span, args, 2, 2, names)?;
        let x = self.expr(a.positional[0], env)?;
        let x_shape = self.graph.shape(x).clone();
        let (n, c, h, w) = self.images(name, &[x], a.positional[0].span)?;
        let kernel = self.pair(a.get(1, "kernel"), "kernel", [1, 1], 1)?;
        let stride = self.pair(a.named("stride"), "stride", kernel, 1)?;
        let padding = self.pair(a.named("padding"), "padding", [0, 0], 0)?;
        let dilation = self.pair(a.named("dilation"), "dilation", [1, 1], 1)?;
        if (0..2).any(|i| 2 * padding[i] > kernel[i]) {
            let at = a.named("padding").map_or(span, |e| e.span);
            return Err(Diagnostic::new(format!("pooling padding must be at most half the kernel size (as in PyTorch), got padding {}x{} for a {}x{} kernel", padding[0], padding[1], kernel[0], kernel[1]), at).into());
        }
        let fill = if max { Fill::NegInf } else { Fill::Zero };
        let window = Window {
            image: [h, w],
            kernel,
            stride,
            padding,
            dilation,
            fill,
        };
        let window = self.fitting(window, &x_shape, span)?;
        if max {
            return located(self.graph.node(Op::MaxPoolGather(window), &[x, x]), span);
        }
        let windows = located(self.graph.windows(x, window), span)?;
        let sum = located(self.graph.sum(windows, &[4, 5]), span)?;
        let pooled = located(
            self.graph.scale(sum, 1.0 / (kernel[0] * kernel[1]) as f64),
            span,
        )?;
        let [oh, ow] = window.output().map_err(|e| Diagnostic::new(e.0, span))?;
        let rows = Shape(vec![n, Dim::Known(oh), Dim::Known(ow), Dim::Known(c)]);
        let rows = located(self.graph.reshape(pooled, &rows), span)?;
        located(self.graph.transpose(rows, &[0, 3, 1, 2]), span)
    }

    /// `batch_norm(x, momentum = 0.1, eps = 1e-5, affine = true)` over features `[B, F]` or
    /// channels `[B, C, H, W]`, as PyTorch's `BatchNorm1d`/`2d`: training normalises with the
    /// batch's mean and biased variance and updates the running statistics (`.running_mean`,
    /// `.running_var`, the latter with the unbiased variance) by `(1 - momentum) * running +
    /// momentum * batch`; evaluation normalises with the running statistics. With `affine`, a
    /// scale `.w` (ones) and shift `.b` (zeros) follow.
    fn batch_norm(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
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
        let prefix = self.layer_name();
        let stat_shape = Shape::known(&[features]);
        let column_shape = Shape::known(&column);
        let state = |lw: &mut Self, name: &str, init: f64| -> LResult<NodeId> {
            let full = format!("{prefix}.{name}");
            let node = located(lw.graph.input(&full, stat_shape.clone()), span)?;
            lw.states.push(StateSpec {
                name: full,
                node,
                init,
                update: None,
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
        let eps = self.graph.constant(eps);
        let var_eps = located(self.graph.add(var, eps), span)?;
        let std = located(self.graph.unary(UnaryOp::Sqrt, var_eps), span)?;
        let normalised = located(self.graph.div(centred, std), span)?;
        if !a.flag("affine", true)? {
            return Ok(normalised);
        }
        let scale = self.new_param(
            &format!("{prefix}.w"),
            stat_shape.clone(),
            nabla_runtime::Init::Constant(1.0),
            "ones".into(),
            span,
        )?;
        let shift = self.new_param(
            &format!("{prefix}.b"),
            stat_shape.clone(),
            nabla_runtime::Init::Constant(0.0),
            "zeros".into(),
            span,
        )?;
        let scale = located(self.graph.reshape(scale, &column_shape), span)?;
        let shift = located(self.graph.reshape(shift, &column_shape), span)?;
        let scaled = located(self.graph.mul(normalised, scale), span)?;
        located(self.graph.add(scaled, shift), span)
    }

    /// `dropout(x, p)`: inverted dropout. Training multiplies `x` by a mask input the runtime
    /// fills each step with `1 / (1 - p)` or 0 (probability `p`); evaluation is the identity.
    fn dropout(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("dropout", span, args, 2, 2, &["p"])?;
        let x = self.expr(a.positional[0], env)?;
        let p_expr = a.required(1, "p")?;
        let p = crate::args::number(p_expr, "p")?;
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

    /// `embedding(tokens, vocab, dim, init = normal(0, 1))`: a layer with `.w [vocab, dim]`
    /// whose rows the tokens (an input declared `: index`) select.
    fn embedding(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("embedding", span, args, 3, 3, &["vocab", "dim", "init"])?;
        let tokens = self.expr(a.positional[0], env)?;
        let mut size = |i: usize, name: &str| -> LResult<usize> {
            let e = a.required(i, name)?;
            let node = self.expr(e, env)?;
            Ok(self.dim_size(self.constant_of(node), e.span)?)
        };
        let (vocab, dim) = (size(1, "vocab")?, size(2, "dim")?);
        if !self.class_target(tokens, vocab) {
            return Err(Diagnostic::new(
                "`embedding` reads token indices, but this is not an input declared `: index`",
                a.positional[0].span,
            )
            .label(format!("this has shape {}", self.graph.shape(tokens)))
            .note("declare the tokens like `input tokens[B, 64] : index`")
            .into());
        }
        let prefix = self.layer_name();
        let shape = [vocab, dim];
        let (init, init_name) = match a.named("init") {
            Some(e) => init::resolve(Some(e), &shape, (vocab, dim))?,
            None => (
                nabla_runtime::Init::Normal {
                    mean: 0.0,
                    std: 1.0,
                },
                "normal(0, 1)".into(),
            ),
        };
        let w = self.new_param(
            &format!("{prefix}.w"),
            Shape::known(&shape),
            init,
            init_name,
            span,
        )?;
        located(self.graph.node(Op::Gather, &[w, tokens]), span)
    }

    /// `rnn(x, hidden, h0 = zeros, nonlinearity = "tanh" | "relu")`, `lstm(x, hidden)` and
    /// `gru(x, hidden)` over `x [B, T, F]`, giving every step's hidden state `[B, T, hidden]`,
    /// with PyTorch's parameters (`.w_ih [G hidden, F]`, `.w_hh [G hidden, hidden]`, `.b_ih`,
    /// `.b_hh`, all uniform in ±1/sqrt(hidden); gates in PyTorch's order: LSTM `i, f, g, o`,
    /// GRU `r, z, n`) and formulas. The recurrence is unrolled over the `T` steps: one matrix
    /// product projects every step's input at once, then each step multiplies the previous
    /// state by `w_hh`.
    fn recurrent(&mut self, name: &str, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new(name, span, args, 2, 2, &["hidden", "h0", "nonlinearity"])?;
        let x = self.expr(a.positional[0], env)?;
        let hidden_expr = a.required(1, "hidden")?;
        let hidden_node = self.expr(hidden_expr, env)?;
        let hidden = self.dim_size(self.constant_of(hidden_node), hidden_expr.span)?;
        if let Some(h0) = a.named("h0")
            && !matches!(&h0.kind, ExprKind::Name(n) if n == "zeros")
        {
            return Err(
                Diagnostic::new("the initial state can only be `zeros`", h0.span)
                    .label("expected `zeros`")
                    .into(),
            );
        }
        let relu = match a.named("nonlinearity") {
            Some(e) if name == "rnn" => match crate::args::string(e, "nonlinearity")? {
                "tanh" => false,
                "relu" => true,
                other => {
                    return Err(Diagnostic::new(
                        format!("unknown nonlinearity \"{other}\""),
                        e.span,
                    )
                    .label("expected \"tanh\" or \"relu\"")
                    .into());
                }
            },
            Some(e) => {
                return Err(Diagnostic::new(
                    format!("`{name}` has fixed nonlinearities; only `rnn` takes one"),
                    e.span,
                )
                .into());
            }
            None => false,
        };
        let shape = self.graph.shape(x).clone();
        let (batch, steps, features) = match shape.dims() {
            [b, Dim::Known(t), Dim::Known(f)] => (b.clone(), *t, *f),
            _ => {
                return Err(wrong_shape(
                    &format!(
                        "`{name}` needs a sequence [batch, steps, features] with known steps and features"
                    ),
                    &shape,
                    a.positional[0].span,
                ));
            }
        };
        let gates = match name {
            "lstm" => 4,
            "gru" => 3,
            _ => 1,
        };
        let prefix = self.layer_name();
        let bound = 1.0 / (hidden as f64).sqrt();
        let param = |lw: &mut Self, suffix: &str, dims: &[usize]| {
            lw.new_param(
                &format!("{prefix}.{suffix}"),
                Shape::known(dims),
                nabla_runtime::Init::Uniform {
                    lo: -bound,
                    hi: bound,
                },
                format!("uniform(-{bound:.4}, {bound:.4})"),
                span,
            )
        };
        let w_ih = param(self, "w_ih", &[gates * hidden, features])?;
        let w_hh = param(self, "w_hh", &[gates * hidden, hidden])?;
        let b_ih = param(self, "b_ih", &[gates * hidden])?;
        let b_hh = param(self, "b_hh", &[gates * hidden])?;
        let g = |r: Result<NodeId, ShapeError>| located(r, span);
        // Every step's input projection at once; both biases join it, except the GRU's
        // `b_hh`, whose candidate part the reset gate scales.
        let w_ih_t = g(self.graph.transpose(w_ih, &[1, 0]))?;
        let projected = g(self.graph.matmul_last_axis(x, w_ih_t))?;
        let bias = if gates == 3 {
            b_ih
        } else {
            g(self.graph.add(b_ih, b_hh))?
        };
        let projected = g(self.graph.add(projected, bias))?;
        let w_hh_t = g(self.graph.transpose(w_hh, &[1, 0]))?;
        let row = Shape(vec![batch.clone(), Dim::Known(gates * hidden)]);
        let state_shape = Shape(vec![batch.clone(), Dim::Known(hidden)]);
        // The state before the first step: zeros (left out of the arithmetic), or in
        // generate mode an input carried over from the previous step.
        let carried = |lw: &mut Self, suffix: &str| -> LResult<Option<NodeId>> {
            if lw.mode != Mode::Generate {
                return Ok(None);
            }
            let name = format!("{prefix}.{suffix}");
            Ok(Some(located(
                lw.graph.input(&name, state_shape.clone()),
                span,
            )?))
        };
        let h0 = carried(self, "h")?;
        let c0 = if gates == 4 {
            carried(self, "c")?
        } else {
            None
        };
        let (mut h, mut c) = (h0, c0);
        let mut outputs = Vec::with_capacity(steps);
        for t in 0..steps {
            let xt = g(self.graph.slice(projected, 1, t, 1))?;
            let xt = g(self.graph.reshape(xt, &row))?;
            let hw = match h {
                Some(h) => Some(g(self.graph.matmul(h, w_hh_t))?),
                None => None,
            };
            let gate =
                |lw: &mut Self, v: NodeId, k: usize| g(lw.graph.slice(v, 1, k * hidden, hidden));
            let next = match gates {
                1 => {
                    let pre = match hw {
                        Some(hw) => g(self.graph.add(xt, hw))?,
                        None => xt,
                    };
                    if relu {
                        self.leaky_relu(pre, 0.0, span)?
                    } else {
                        g(self.graph.unary(UnaryOp::Tanh, pre))?
                    }
                }
                4 => {
                    let pre = match hw {
                        Some(hw) => g(self.graph.add(xt, hw))?,
                        None => xt,
                    };
                    let act = |lw: &mut Self, k: usize, op: UnaryOp| {
                        let v = gate(lw, pre, k)?;
                        g(lw.graph.unary(op, v))
                    };
                    let i = act(self, 0, UnaryOp::Sigmoid)?;
                    let f = act(self, 1, UnaryOp::Sigmoid)?;
                    let cand = act(self, 2, UnaryOp::Tanh)?;
                    let o = act(self, 3, UnaryOp::Sigmoid)?;
                    let fresh = g(self.graph.mul(i, cand))?;
                    let cell = match c {
                        Some(c) => {
                            let kept = g(self.graph.mul(f, c))?;
                            g(self.graph.add(kept, fresh))?
                        }
                        None => fresh,
                    };
                    c = Some(cell);
                    let squashed = g(self.graph.unary(UnaryOp::Tanh, cell))?;
                    g(self.graph.mul(o, squashed))?
                }
                _ => {
                    let hw = match hw {
                        Some(hw) => g(self.graph.add(hw, b_hh))?,
                        None => g(self.graph.broadcast(b_hh, &row))?,
                    };
                    let sum_gate = |lw: &mut Self, k: usize| {
                        let (a, b) = (gate(lw, xt, k)?, gate(lw, hw, k)?);
                        let s = g(lw.graph.add(a, b))?;
                        g(lw.graph.unary(UnaryOp::Sigmoid, s))
                    };
                    let r = sum_gate(self, 0)?;
                    let z = sum_gate(self, 1)?;
                    let (xn, hn) = (gate(self, xt, 2)?, gate(self, hw, 2)?);
                    let reset = g(self.graph.mul(r, hn))?;
                    let pre = g(self.graph.add(xn, reset))?;
                    let n = g(self.graph.unary(UnaryOp::Tanh, pre))?;
                    // (1 - z) n + z h = n + z (h - n)
                    match h {
                        Some(h) => {
                            let d = g(self.graph.sub(h, n))?;
                            let zd = g(self.graph.mul(z, d))?;
                            g(self.graph.add(n, zd))?
                        }
                        None => {
                            let zn = g(self.graph.mul(z, n))?;
                            g(self.graph.sub(n, zn))?
                        }
                    }
                }
            };
            h = Some(next);
            let mut step_shape = state_shape.0.clone();
            step_shape.insert(1, Dim::Known(1));
            outputs.push(g(self.graph.reshape(next, &Shape(step_shape)))?);
        }
        for (input, output, suffix) in [(h0, h, "h"), (c0, c, "c")] {
            if let (Some(input), Some(output)) = (input, output) {
                self.carries.push(CarrySpec {
                    name: format!("{prefix}.{suffix}"),
                    input,
                    output,
                });
            }
        }
        g(self.graph.concat(&outputs, 1))
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

    fn unary_call(
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

    /// `x > 0 ? x : slope * x` (relu for slope 0). The derivative at 0 is `slope`, as in PyTorch.
    fn leaky_relu(&mut self, x: NodeId, slope: f64, span: Span) -> LResult<NodeId> {
        let zero = self.graph.constant(0.0);
        let positive = located(self.graph.binary(BinaryOp::Gt, x, zero), span)?;
        let negative = if slope == 0.0 {
            zero
        } else {
            located(self.graph.scale(x, slope), span)?
        };
        located(self.graph.select(positive, x, negative), span)
    }

    /// The optional `axis = k` argument, resolved against `x`'s rank.
    fn axis(&self, a: &Args, x: NodeId) -> LResult<Option<usize>> {
        let Some(e) = a.named("axis") else {
            return Ok(None);
        };
        let k = crate::args::number(e, "axis")?;
        self.resolve_axis(x, k, "`axis`", e.span).map(Some)
    }

    /// An axis `k` of `x` as the user wrote it (negative ones count from the end), which must
    /// be a whole number in range: never truncated or wrapped into another axis.
    fn resolve_axis(&self, x: NodeId, k: f64, what: &str, span: Span) -> LResult<usize> {
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

    /// `(x - max(x), sum(exp(x - max(x))))` along `axis`, the stable core of softmax. The
    /// shift by the maximum changes no value of softmax or log-softmax, so no gradient flows
    /// through it (as in JAX's `logsumexp` and PyTorch's softmax backward): its exact gradient
    /// is zero, and computing that zero costs a reduction and ties handling per row.
    fn shifted_exp_sum(&mut self, x: NodeId, axis: usize, span: Span) -> LResult<(NodeId, NodeId)> {
        let max = located(self.graph.reduce(ReduceOp::Max, x, &[axis]), span)?;
        let max = located(self.graph.unary(UnaryOp::StopGradient, max), span)?;
        let shifted = located(self.graph.sub(x, max), span)?;
        let e = located(self.graph.unary(UnaryOp::Exp, shifted), span)?;
        let sum = located(self.graph.sum(e, &[axis]), span)?;
        Ok((shifted, sum))
    }

    fn log_softmax(&mut self, x: NodeId, axis: usize, span: Span) -> LResult<NodeId> {
        let (shifted, sum) = self.shifted_exp_sum(x, axis, span)?;
        let log_sum = located(self.graph.unary(UnaryOp::Log, sum), span)?;
        located(self.graph.sub(shifted, log_sum), span)
    }

    /// `sum`, `mean`, `max`, `min` over all elements or `axis = k` (which is then dropped, as in
    /// NumPy); `max(a, b)` and `min(a, b)` with two tensors are elementwise.
    fn reduction(&mut self, name: &str, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
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
        let axes: Vec<usize> = match self.axis(&a, x)? {
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

    fn mean_all(&mut self, x: NodeId, span: Span) -> LResult<NodeId> {
        let total = located(self.graph.sum_all(x), span)?;
        let count = located(
            self.graph.node(Op::Numel(self.graph.shape(x).clone()), &[]),
            span,
        )?;
        located(self.graph.div(total, count), span)
    }

    /// `reshape(x, [d0, d1, ...])`: numbers, symbols like `B`, and at most one `-1`.
    fn reshape_call(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
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
        let prefix = self.layer_name();
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

    /// Prediction and target of a loss, which must have equal shapes.
    fn loss_operands(&mut self, name: &str, a: &Args, env: &Env) -> LResult<(NodeId, NodeId)> {
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

    fn elementwise_loss(
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
    fn cross_entropy(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
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
