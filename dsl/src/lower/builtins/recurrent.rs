//! Embeddings and recurrent layers: `embedding`, and `rnn`, `lstm`, `gru` unrolled over the
//! known number of steps (one product for every step's input, then one `h W_hh` product and the
//! gate arithmetic per step), and `last`.

use nabla_compiler::ir::{Dim, NodeId, Op, Shape, ShapeError, UnaryOp};
use nabla_compiler::model::{CarrySpec, Mode};

use super::{located, wrong_shape};
use crate::args::Args;
use crate::ast::{Arg, ExprKind, Span};
use crate::diagnostic::Diagnostic;
use crate::init;
use crate::lower::{Env, LResult, Lowerer};

impl Lowerer<'_> {
    /// `last(h)`: the last step of a sequence `[batch, steps, ...]`.
    pub(super) fn last(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
        self.tensor_args("last", span, args, env, 1).and_then(|x| {
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
    })
    }

    /// `embedding(tokens, vocab, dim, init = normal(0, 1))`: a layer with `.w [vocab, dim]`
    /// whose rows the tokens (an input declared `: index`) select.
    pub(super) fn embedding(&mut self, span: Span, args: &[Arg], env: &Env) -> LResult<NodeId> {
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
        let prefix = self.layer_name(&["w"]);
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
    pub(super) fn recurrent(
        &mut self,
        name: &str,
        span: Span,
        args: &[Arg],
        env: &Env,
    ) -> LResult<NodeId> {
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
        let prefix = self.layer_name(&["w_ih", "w_hh", "b_ih", "b_hh", "h", "c"]);
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
}
