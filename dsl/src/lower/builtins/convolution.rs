//! Convolution and pooling over `[N, C, H, W]` images: `conv2d` (groups, stride, padding,
//! dilation), `max_pool2d`, `avg_pool2d`, `global_avg_pool`, and the window geometry every one
//! of them checks.

use nabla_compiler::ir::{Dim, Fill, NodeId, Op, Shape, Window};

use super::{located, wrong_shape};
use crate::args::Args;
use crate::ast::{Arg, ExprKind, Span};
use crate::diagnostic::Diagnostic;
use crate::lower::{Env, LResult, Lowerer};

/// The largest kernel, stride, padding or dilation accepted (beyond any real image).
const MAX_WINDOW: usize = 1 << 16;

impl Lowerer<'_> {
    /// `global_avg_pool(x)`: the mean of each image channel, `[N, C]`.
    pub(super) fn global_avg_pool(
        &mut self,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        self.tensor_args("global_avg_pool", span, args, env, 1)
            .and_then(|x| {
                let (_, _, h, w) = self.images("global_avg_pool", &x, args[0].value.span)?;
                let sum = located(self.graph.sum(x[0], &[2, 3]), span)?;
                let mean = located(self.graph.scale(sum, 1.0 / (h * w) as f64), span)?;
                let d = self.graph.shape(x[0]).dims().to_vec();
                located(self.graph.reshape(mean, &Shape(d[..2].to_vec())), span)
            })
    }

    /// `x` as images `[N, C, H, W]` with known `C`, `H`, `W`, or a located error.
    pub(super) fn images(
        &self,
        name: &str,
        x: &[NodeId],
        at: Span,
    ) -> LResult<(Dim, usize, usize, usize)> {
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
    pub(super) fn pair(
        &mut self,
        at: Option<&crate::ast::Expr>,
        what: &str,
        default: [usize; 2],
        min: usize,
        env: &Env,
    ) -> LResult<[usize; 2]> {
        let Some(e) = at else {
            return Ok(default);
        };
        let values = self.known_numbers(e, env, what)?;
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
    pub(super) fn fitting(&self, window: Window, x_shape: &Shape, span: Span) -> LResult<Window> {
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
    pub(super) fn conv2d(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
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
        let out = self.known_whole(
            a.required(1, "out_channels")?,
            env,
            "out_channels",
            (1, 1 << 20),
        )?;
        let kernel = self.pair(a.get(2, "kernel"), "kernel", [1, 1], 1, env)?;
        let stride = self.pair(a.named("stride"), "stride", [1, 1], 1, env)?;
        let dilation = self.pair(a.named("dilation"), "dilation", [1, 1], 1, env)?;
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
            other => self.pair(other, "padding", [0, 0], 0, env)?,
        };
        let mut groups = 1;
        if let Some(g) = a.named("groups") {
            groups = self.known_whole(g, env, "groups", (1, 1 << 20))?;
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
        let prefix = self.layer_name(&["w", "b"]);
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
    pub(super) fn pool(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
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
        let kernel = self.pair(a.get(1, "kernel"), "kernel", [1, 1], 1, env)?;
        let stride = self.pair(a.named("stride"), "stride", kernel, 1, env)?;
        let padding = self.pair(a.named("padding"), "padding", [0, 0], 0, env)?;
        let dilation = self.pair(a.named("dilation"), "dilation", [1, 1], 1, env)?;
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
}
