//! Optimizers as graph nodes: the parameter and state updates of one training step, appended to
//! the differentiated graph so that forward, backward and update compile into one program.
//!
//! Formulas follow `torch.optim` (with `g` the gradient plus `weight_decay * w` plus
//! `l1 * sign(w)`):
//! - sgd: `v = momentum v + g`; `w -= lr (g + momentum v)` with Nesterov, else `w -= lr v`
//!   (plain SGD when momentum is 0);
//! - adagrad: `s += g²`; `w -= lr g / (sqrt(s) + eps)`;
//! - rmsprop: `s = alpha s + (1 - alpha) g²`; `u = g / (sqrt(s) + eps)`; with momentum
//!   `b = momentum b + u`, `w -= lr b`, else `w -= lr u`;
//! - adam: `m = β1 m + (1 - β1) g`; `v = β2 v + (1 - β2) g²`;
//!   `w -= lr (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + eps)`;
//! - adamw: Adam with decoupled weight decay, `w -= lr (adam's step + weight_decay w)`, the
//!   decay never added to `g` (`torch.optim.AdamW`);
//! - adamax: `m = β1 m + (1 - β1) g`; `u = max(β2 u, |g| + eps)`; `w -= lr / (1 - β1^t) m / u`.
//!
//! With `decay_vectors = false`, parameters of rank below 2 (biases, normalisations' scales and
//! shifts) are not decayed, as nanoGPT groups them. With `clip_grad_norm = c`, every gradient is
//! first scaled by `min(1, c / (norm + 1e-6))`, `norm` the 2-norm of all gradients together
//! (`torch.nn.utils.clip_grad_norm_`), inside the compiled step.
//!
//! The learning rate and the bias corrections `1 / (1 - β^t)` are scalar inputs, fed every step
//! by the runtime, so schedules never force a recompile.

use crate::ir::{BinaryOp, Graph, NodeId, Shape, ShapeError, UnaryOp};
use crate::model::Model;

/// An optimizer and its hyperparameters (each kind reads the fields it uses).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// Which algorithm.
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// SGD / RMSprop momentum.
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// L2 penalty: `weight_decay * w` added to the gradient.
    pub weight_decay: f64,
    /// L1 penalty: `l1 * sign(w)` added to the gradient.
    pub l1: f64,
    /// First-moment decay (Adam, Adamax).
    pub beta1: f64,
    /// Second-moment decay (Adam, Adamax); RMSprop's `alpha`.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Whether parameters of rank below 2 are decayed too (PyTorch's default; nanoGPT decays
    /// matrices only).
    pub decay_vectors: bool,
    /// Clip the gradients' global 2-norm to this before the update.
    pub clip_grad_norm: Option<f64>,
}

/// The optimization algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Stochastic gradient descent, optionally with (Nesterov) momentum.
    Sgd,
    /// AdaGrad.
    Adagrad,
    /// RMSprop.
    RmsProp,
    /// Adam with bias correction.
    Adam,
    /// Adam with decoupled weight decay.
    AdamW,
    /// Adamax.
    Adamax,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::RmsProp => "rmsprop",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Adamax => "adamax",
        })
    }
}

/// The optimizer as it would be written in a `train` block, with every setting its kind reads
/// (penalties when set): `sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 0.0001)`.
impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(self.lr))
    }
}

impl Optimizer {
    /// The optimizer as a `train` block writes it, with learning rate `lr`: a run's learning rate
    /// lives in the runtime's settings (a flag or a checkpoint may set it), and the rule here.
    pub fn describe(&self, lr: f64) -> String {
        let mut settings = vec![format!("lr = {lr}")];
        match self.kind {
            OptimizerKind::Sgd => {
                settings.push(format!("momentum = {}", self.momentum));
                if self.nesterov {
                    settings.push("nesterov = true".into());
                }
            }
            OptimizerKind::Adagrad => settings.push(format!("eps = {:e}", self.eps)),
            OptimizerKind::RmsProp => settings.extend([
                format!("alpha = {}", self.beta2),
                format!("eps = {:e}", self.eps),
                format!("momentum = {}", self.momentum),
            ]),
            OptimizerKind::Adam | OptimizerKind::AdamW | OptimizerKind::Adamax => {
                settings.extend([
                    format!("beta1 = {}", self.beta1),
                    format!("beta2 = {}", self.beta2),
                    format!("eps = {:e}", self.eps),
                ])
            }
        }
        if self.weight_decay != 0.0 {
            settings.push(format!("weight_decay = {}", self.weight_decay));
            if !self.decay_vectors {
                settings.push("decay_vectors = false".into());
            }
        }
        if self.l1 != 0.0 {
            settings.push(format!("l1 = {}", self.l1));
        }
        format!("{}({})", self.kind, settings.join(", "))
    }
}

impl Optimizer {
    /// PyTorch's defaults for `kind` (SGD gets lr 0.01, where PyTorch has none).
    pub fn defaults(kind: OptimizerKind) -> Optimizer {
        let lr = match kind {
            OptimizerKind::Adam | OptimizerKind::AdamW => 1e-3,
            OptimizerKind::Adamax => 2e-3,
            _ => 1e-2,
        };
        Optimizer {
            kind,
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: if kind == OptimizerKind::AdamW {
                1e-2
            } else {
                0.0
            },
            l1: 0.0,
            beta1: 0.9,
            beta2: if kind == OptimizerKind::RmsProp {
                0.99
            } else {
                0.999
            },
            eps: if kind == OptimizerKind::Adagrad {
                1e-10
            } else {
                1e-8
            },
            decay_vectors: true,
            clip_grad_norm: None,
        }
    }

    /// The per-parameter state buffers this optimizer keeps (suffixes of `param#...`).
    pub fn state_names(&self) -> &'static [&'static str] {
        match self.kind {
            OptimizerKind::Sgd if self.momentum == 0.0 => &[],
            OptimizerKind::Sgd => &["momentum"],
            OptimizerKind::Adagrad => &["sum_sq"],
            OptimizerKind::RmsProp if self.momentum == 0.0 => &["square_avg"],
            OptimizerKind::RmsProp => &["square_avg", "momentum"],
            OptimizerKind::Adam | OptimizerKind::AdamW => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Adamax => &["exp_avg", "exp_inf"],
        }
    }
}

/// Names of the scalar inputs a step reads.
pub const LR: &str = "#lr";
/// `1 / (1 - β1^t)`.
pub const BC1: &str = "#bc1";
/// `1 / (1 - β2^t)`.
pub const BC2: &str = "#bc2";

/// The external buffer holding optimizer state `state` of parameter `param`.
pub fn state_buffer(param: &str, state: &str) -> String {
    format!("{param}#{state}")
}

/// A training step: the model's graph with gradients and updates added.
pub struct TrainStep {
    /// The graph.
    pub graph: Graph,
    /// Named results: `loss`, and `prediction` when the model has one.
    pub outputs: Vec<(String, NodeId)>,
    /// New values for parameters and optimizer state, by buffer name.
    pub assignments: Vec<(NodeId, String)>,
}

impl TrainStep {
    /// The outputs, then the assigned values.
    pub fn roots(&self) -> Vec<NodeId> {
        crate::lower::roots(&self.outputs, &self.assignments)
    }
}

/// The train step of `model` from its gradient graph (`graph`, with the `loss` and the
/// gradient of every parameter in `grads`, as [`Model::gradient_graph`] makes it): each
/// parameter's update and new optimizer state, as assignments into named buffers.
pub fn apply(
    model: &Model,
    (mut graph, _, grads): (Graph, NodeId, Vec<NodeId>),
    optimizer: &Optimizer,
) -> Result<TrainStep, ShapeError> {
    let params: Vec<(String, NodeId)> = model
        .params
        .iter()
        .map(|p| (p.name.clone(), p.node))
        .collect();
    let mut assignments = updates(&mut graph, &params, grads, optimizer)?;
    assignments.extend(layer_state_updates(model));
    Ok(TrainStep {
        graph,
        outputs: loss_and_prediction(model),
        assignments,
    })
}

/// The outputs of a train step or an evaluation: `loss`, and `prediction` when the model has
/// one.
pub fn loss_and_prediction(model: &Model) -> Vec<(String, NodeId)> {
    let mut outputs = vec![("loss".to_string(), model.loss)];
    if let Some(p) = model.prediction {
        outputs.push(("prediction".to_string(), p.node));
    }
    outputs
}

/// The assignments of layer state (batch normalisation's running statistics), which the
/// forward pass computes.
pub fn layer_state_updates(model: &Model) -> impl Iterator<Item = (NodeId, String)> + '_ {
    model
        .states
        .iter()
        .filter_map(|state| state.update.map(|u| (u, state.name.clone())))
}

/// Each parameter's new value and new optimizer state, as assignments into named buffers:
/// `params` are the parameters' names and nodes in `g`, `grads` their gradients.
pub fn updates(
    g: &mut Graph,
    params: &[(String, NodeId)],
    grads: Vec<NodeId>,
    optimizer: &Optimizer,
) -> Result<Vec<(NodeId, String)>, ShapeError> {
    let mut assignments = Vec::new();
    let lr = g.input(LR, Shape::scalar())?;
    let grads = match optimizer.clip_grad_norm {
        Some(max_norm) => clip(g, &grads, max_norm)?,
        None => grads,
    };
    let decoupled = optimizer.kind == OptimizerKind::AdamW;
    for ((name, w), &grad) in params.iter().zip(&grads) {
        let (name, w) = (name.as_str(), *w);
        let shape = g.shape(w).clone();
        let state = |g: &mut Graph, state: &str| g.input(&state_buffer(name, state), shape.clone());
        let mut grad = grad;
        let decay = if optimizer.decay_vectors || shape.rank() >= 2 {
            optimizer.weight_decay
        } else {
            0.0
        };
        if decay != 0.0 && !decoupled {
            let decay = g.scale(w, decay)?;
            grad = g.add(grad, decay)?;
        }
        if optimizer.l1 != 0.0 {
            let sign = g.unary(UnaryOp::Sign, w)?;
            let l1 = g.scale(sign, optimizer.l1)?;
            grad = g.add(grad, l1)?;
        }
        let (mut step, states) = update(g, optimizer, grad, &state)?;
        if decay != 0.0 && decoupled {
            let decay = g.scale(w, decay)?;
            step = g.add(step, decay)?;
        }
        let scaled = g.mul(step, lr)?;
        let new_w = g.sub(w, scaled)?;
        assignments.push((new_w, name.to_string()));
        for (state, value) in optimizer.state_names().iter().zip(states) {
            assignments.push((value, state_buffer(name, state)));
        }
    }
    Ok(assignments)
}

/// The gradients scaled by `min(1, max_norm / (norm + 1e-6))`, `norm` their global 2-norm.
fn clip(g: &mut Graph, grads: &[NodeId], max_norm: f64) -> Result<Vec<NodeId>, ShapeError> {
    let mut total = g.constant(0.0);
    for &grad in grads {
        let squares = g.mul(grad, grad)?;
        let sum = g.sum_all(squares)?;
        total = g.add(total, sum)?;
    }
    let norm = g.unary(UnaryOp::Sqrt, total)?;
    let guard = g.constant(1e-6);
    let denom = g.add(norm, guard)?;
    let limit = g.constant(max_norm);
    let ratio = g.div(limit, denom)?;
    let one = g.constant(1.0);
    let factor = g.binary(BinaryOp::Min, ratio, one)?;
    grads.iter().map(|&grad| g.mul(grad, factor)).collect()
}

/// The step direction (to be scaled by `-lr`) and the new state values, in
/// [`Optimizer::state_names`] order.
fn update(
    g: &mut Graph,
    o: &Optimizer,
    grad: NodeId,
    state: &dyn Fn(&mut Graph, &str) -> Result<NodeId, ShapeError>,
) -> Result<(NodeId, Vec<NodeId>), ShapeError> {
    // `decay * old + (1 - decay) * new`
    let ema = |g: &mut Graph, old: NodeId, new: NodeId, decay: f64| -> Result<NodeId, ShapeError> {
        let a = g.scale(old, decay)?;
        let b = g.scale(new, 1.0 - decay)?;
        g.add(a, b)
    };
    let eps = g.constant(o.eps);
    Ok(match o.kind {
        OptimizerKind::Sgd if o.momentum == 0.0 => (grad, vec![]),
        OptimizerKind::Sgd => {
            let v = state(g, "momentum")?;
            let decayed = g.scale(v, o.momentum)?;
            let v_new = g.add(decayed, grad)?;
            let step = if o.nesterov {
                let ahead = g.scale(v_new, o.momentum)?;
                g.add(grad, ahead)?
            } else {
                v_new
            };
            (step, vec![v_new])
        }
        OptimizerKind::Adagrad => {
            let s = state(g, "sum_sq")?;
            let sq = g.mul(grad, grad)?;
            let s_new = g.add(s, sq)?;
            let root = g.unary(UnaryOp::Sqrt, s_new)?;
            let denom = g.add(root, eps)?;
            (g.div(grad, denom)?, vec![s_new])
        }
        OptimizerKind::RmsProp => {
            let s = state(g, "square_avg")?;
            let sq = g.mul(grad, grad)?;
            let s_new = ema(g, s, sq, o.beta2)?;
            let root = g.unary(UnaryOp::Sqrt, s_new)?;
            let denom = g.add(root, eps)?;
            let u = g.div(grad, denom)?;
            if o.momentum == 0.0 {
                (u, vec![s_new])
            } else {
                let b = state(g, "momentum")?;
                let decayed = g.scale(b, o.momentum)?;
                let b_new = g.add(decayed, u)?;
                (b_new, vec![s_new, b_new])
            }
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            let (m, v) = (state(g, "exp_avg")?, state(g, "exp_avg_sq")?);
            let m_new = ema(g, m, grad, o.beta1)?;
            let sq = g.mul(grad, grad)?;
            let v_new = ema(g, v, sq, o.beta2)?;
            let bc1 = g.input(BC1, Shape::scalar())?;
            let bc2 = g.input(BC2, Shape::scalar())?;
            let m_hat = g.mul(m_new, bc1)?;
            let v_hat = g.mul(v_new, bc2)?;
            let root = g.unary(UnaryOp::Sqrt, v_hat)?;
            let denom = g.add(root, eps)?;
            (g.div(m_hat, denom)?, vec![m_new, v_new])
        }
        OptimizerKind::Adamax => {
            let (m, u) = (state(g, "exp_avg")?, state(g, "exp_inf")?);
            let m_new = ema(g, m, grad, o.beta1)?;
            let decayed = g.scale(u, o.beta2)?;
            let abs = g.unary(UnaryOp::Abs, grad)?;
            let bumped = g.add(abs, eps)?;
            let u_new = g.binary(BinaryOp::Max, decayed, bumped)?;
            let bc1 = g.input(BC1, Shape::scalar())?;
            let m_hat = g.mul(m_new, bc1)?;
            (g.div(m_hat, u_new)?, vec![m_new, u_new])
        }
    })
}
