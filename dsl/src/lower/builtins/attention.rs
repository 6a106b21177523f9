//! Attention: `attention(q, k, v, ...)`, PyTorch's `scaled_dot_product_attention`, and the
//! `causal_self_attention(x, heads)` layer built on it (one `[C, 3C]` projection to queries,
//! keys and values, one `[C, C]` output projection, as nanoGPT's `CausalSelfAttention`).
//! Without a mask, attention is one op that never stores its scores (the kernel library
//! recomputes them for the backward), so memory grows with the context, not its square; with
//! a mask, batched products around a stable softmax.

use nabla_compiler::ir::{BinaryOp, Dim, NodeId, Op, ReduceOp, Shape, UnaryOp};

use super::{located, wrong_shape};
use crate::args::Args;
use crate::ast::{Arg, Span};
use crate::diagnostic::Diagnostic;
use crate::lower::{Env, LResult, Lowerer};

impl Lowerer<'_> {
    /// `attention(q, k, v, causal = false, mask = m, scale = 1/sqrt(D))` over `q [..., Tq, D]`,
    /// `k [..., Tk, D]`, `v [..., Tk, Dv]`: `softmax(q k^T scale, masked) v`. The scale
    /// multiplies `q`, the smaller operand when `D < Tk`. A position that `causal` (query `i`
    /// sees keys up to `i + Tk - Tq`, PyTorch's alignment) or a zero of `mask` (broadcast to
    /// the scores `[..., Tq, Tk]`) hides gets a score of -inf. A query whose every key is
    /// hidden (possible only with `mask`) gets zeros, not NaN.
    pub(super) fn attention(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        let a = Args::new("attention", span, args, 3, 3, &["causal", "mask", "scale"])?;
        let [q, k, v] = [0, 1, 2].map(|i| self.expr(a.positional[i], env));
        let (q, k, v) = (q?, k?, v?);
        let causal = a.flag("causal", false)?;
        let mask = match a.named("mask") {
            Some(e) => Some((self.expr(e, env)?, e.span)),
            None => None,
        };
        let (qs, ks) = (self.graph.shape(q).clone(), self.graph.shape(k).clone());
        let depth = match qs.dims().last() {
            Some(Dim::Known(d)) if qs.rank() >= 2 => *d,
            _ => {
                return Err(wrong_shape(
                    "`attention` needs queries [..., positions, depth] with a known depth",
                    &qs,
                    a.positional[0].span,
                ));
            }
        };
        let scale = a.number(9, "scale", 1.0 / (depth as f64).sqrt())?;
        if ks.rank() < 2 {
            return Err(wrong_shape(
                "`attention` needs keys [..., positions, depth]",
                &ks,
                a.positional[1].span,
            ));
        }
        self.attend([q, k, v], causal, mask, scale, span)
    }

    /// `causal_self_attention(x, heads, bias = false, init = ..., out_init = ...)` over
    /// `x [B, T, C]`: queries, keys and values from one projection `.w_qkv [C, 3C]` (in that
    /// order along its columns, as nanoGPT's `c_attn`), split into `heads` heads of `C / heads`
    /// features, causal attention per head, the heads joined again and projected by
    /// `.w_out [C, C]`; with `bias`, `.b_qkv [3C]` and `.b_out [C]`. Weights are
    /// `fan_in_uniform` (`nn.Linear`'s) unless `init` (the projection in) or `out_init` (the
    /// projection out, which GPT-2 scales by the depth) say otherwise.
    pub(super) fn causal_self_attention(
        &mut self,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
        let name = "causal_self_attention";
        let keys = ["heads", "bias", "init", "out_init", "bias_init"];
        let a = Args::new(name, span, args, 2, 2, &keys)?;
        let x = self.expr(a.positional[0], env)?;
        let shape = self.graph.shape(x).clone();
        let width = match shape.dims() {
            [_, Dim::Known(_), Dim::Known(c)] => *c,
            _ => {
                return Err(wrong_shape(
                    "`causal_self_attention` needs a sequence [batch, positions, width] of known positions and width",
                    &shape,
                    a.positional[0].span,
                ));
            }
        };
        let heads_expr = a.required(1, "heads")?;
        let heads = self.known_whole(heads_expr, env, "heads", (1, width))?;
        if width % heads != 0 {
            return Err(Diagnostic::new(
                format!("{heads} heads do not divide the width {width}"),
                heads_expr.span,
            )
            .label(format!("the width {width} must be a multiple of this"))
            .note("each head attends over width / heads features")
            .into());
        }
        let bias = a.flag("bias", false)?;
        let suffixes: &[&str] = if bias {
            &["w_qkv", "w_out", "b_qkv", "b_out"]
        } else {
            &["w_qkv", "w_out"]
        };
        let prefix = self.layer_name(suffixes);
        let fans = (width, 3 * width);
        let w_qkv = self.layer_param(
            &a,
            "init",
            &format!("{prefix}.w_qkv"),
            &[width, 3 * width],
            fans,
            span,
        )?;
        let mut qkv = located(self.graph.matmul_last_axis(x, w_qkv), span)?;
        if bias {
            let b = self.layer_param(
                &a,
                "bias_init",
                &format!("{prefix}.b_qkv"),
                &[3 * width],
                fans,
                span,
            )?;
            qkv = located(self.graph.add(qkv, b), span)?;
        }
        let depth = width / heads;
        let scale = 1.0 / (depth as f64).sqrt();
        let y = located(self.graph.self_attention(qkv, heads, true, scale), span)?;
        let fans = (width, width);
        let w_out = self.layer_param(
            &a,
            "out_init",
            &format!("{prefix}.w_out"),
            &[width, width],
            fans,
            span,
        )?;
        let y = located(self.graph.matmul_last_axis(y, w_out), span)?;
        if !bias {
            return Ok(y);
        }
        let b = self.layer_param(
            &a,
            "bias_init",
            &format!("{prefix}.b_out"),
            &[width],
            fans,
            span,
        )?;
        located(self.graph.add(y, b), span)
    }

    /// `softmax(q k^T scale, hidden positions -inf) v` for [`Self::attention`]'s checked
    /// operands: one [`Op::Attention`], which never stores the scores, unless a mask is given;
    /// then batched products around a masked softmax.
    fn attend(
        &mut self,
        [q, k, v]: [NodeId; 3],
        causal: bool,
        mask: Option<(NodeId, Span)>,
        scale: f64,
        span: Span,
    ) -> LResult<NodeId> {
        let Some((m, at)) = mask else {
            return located(self.graph.attention([q, k, v], causal, scale), span);
        };
        let rank = self.graph.shape(k).rank();
        let mut swap: Vec<usize> = (0..rank).collect();
        swap.swap(rank - 2, rank - 1);
        let kt = located(self.graph.transpose(k, &swap), span)?;
        let q = located(self.graph.scale(q, scale), span)?;
        let scores = located(self.graph.matmul_batched(q, kt), span)?;
        let shape = self.graph.shape(scores).clone();
        let hidden = self.graph.constant(f64::NEG_INFINITY);
        let mut masked = scores;
        if causal {
            let [tq, tk] = [
                &shape.dims()[shape.rank() - 2],
                &shape.dims()[shape.rank() - 1],
            ]
            .map(|d| d.known());
            let (Some(tq), Some(tk)) = (tq, tk) else {
                return Err(wrong_shape(
                    "a causal `attention` needs a known number of positions",
                    &shape,
                    span,
                ));
            };
            let square = Shape::known(&[tq, tk]);
            let iota = |lw: &mut Self, axis: usize| {
                located(
                    lw.graph.node(
                        Op::Iota {
                            shape: square.clone(),
                            axis,
                        },
                        &[],
                    ),
                    span,
                )
            };
            let (row, column) = (iota(self, 0)?, iota(self, 1)?);
            let offset = self.graph.constant(tk as f64 - tq as f64);
            let last_seen = located(self.graph.add(row, offset), span)?;
            let seen = located(self.graph.binary(BinaryOp::Le, column, last_seen), span)?;
            masked = located(self.graph.select(seen, masked, hidden), span)?;
        }
        let ms = self.graph.shape(m).clone();
        if !ms.broadcasts_to(&shape) {
            return Err(Diagnostic::new(
                format!("the mask {ms} does not broadcast to the attention scores {shape}"),
                at,
            )
            .label(format!("this has shape {ms}"))
            .note("the scores are [..., query positions, key positions]; a zero hides a key from a query")
            .into());
        }
        masked = located(self.graph.select(m, masked, hidden), span)?;
        let weights = self.masked_softmax(masked, shape.rank() - 1, span)?;
        located(self.graph.matmul_batched(weights, v), span)
    }

    /// Softmax along `axis` of scores where hidden positions are -inf. A row whose positions
    /// are all hidden has maximum -inf, replaced by 0 for the shift so that its exponentials
    /// are 0, and the sum is bounded below by f32's smallest normal number, so that the row is
    /// 0 rather than 0/0. A row with a visible position sums to at least 1 (its maximum's
    /// term), which the bound leaves alone.
    fn masked_softmax(&mut self, scores: NodeId, axis: usize, span: Span) -> LResult<NodeId> {
        let max = located(self.graph.reduce(ReduceOp::Max, scores, &[axis]), span)?;
        let max = located(self.graph.unary(UnaryOp::StopGradient, max), span)?;
        let hidden = self.graph.constant(f64::NEG_INFINITY);
        let zero = self.graph.constant(0.0);
        let all_hidden = located(self.graph.binary(BinaryOp::Eq, max, hidden), span)?;
        let shift = located(self.graph.select(all_hidden, zero, max), span)?;
        let shifted = located(self.graph.sub(scores, shift), span)?;
        let e = located(self.graph.unary(UnaryOp::Exp, shifted), span)?;
        let sum = located(self.graph.sum(e, &[axis]), span)?;
        let tiny = self.graph.constant(f64::from(f32::MIN_POSITIVE));
        let sum = located(self.graph.binary(BinaryOp::Max, sum, tiny), span)?;
        located(self.graph.div(e, sum), span)
    }
}
