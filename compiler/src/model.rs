//! A model: a graph plus the roles of its nodes (inputs, targets, parameters, loss).
//!
//! This is the hand-off between the DSL and everything after it. It is plain data with no
//! reference to source text, so models can also be built directly in Rust.

use nabla_runtime::Init;
pub use nabla_runtime::train::PredictionKind;

use crate::ir::{Graph, NodeId, ShapeError};

/// Whether fed data is a model input or a training target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Fed at training and inference time.
    Input,
    /// Fed only to compute the loss.
    Target,
}

/// What the numbers of a fed tensor mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Real values.
    Real,
    /// Integer class indices in `0..classes` (known once a loss names the class count).
    Class {
        /// The number of classes, when a loss has fixed it.
        classes: Option<usize>,
    },
}

/// Which program a model is lowered for: layers such as dropout behave differently when
/// training and when evaluating, and the difference is fixed at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The train step (and its gradients).
    Train,
    /// Evaluation and prediction.
    Eval,
    /// Generation, one token at a time: evaluation, with every sequence one step long and
    /// the recurrent layers' states fed in and read out ([`Model::carries`]).
    Generate,
}

/// A recurrent layer's state carried from one generation step to the next (generate mode
/// only): an input holding the state before the step and the node holding it after.
#[derive(Clone, Debug)]
pub struct CarrySpec {
    /// The name it is fed and read under (`h.h`, `h.c`).
    pub name: String,
    /// Its input node, `[B, hidden]`, zeros at the first step.
    pub input: NodeId,
    /// Its value after the step.
    pub output: NodeId,
}

/// A dropout layer's random mask: an input the runtime fills at every training step with
/// `1 / (1 - p)` (kept) or 0 (dropped), drawn from the seed, the layer and the step.
#[derive(Clone, Debug)]
pub struct DropoutSpec {
    /// The name the mask is fed under: `dropout#1`, `dropout#2`, ... in source order (no
    /// model name can contain `#`).
    pub name: String,
    /// Its input node, of the dropped tensor's shape (batch first).
    pub node: NodeId,
    /// The probability of dropping an element.
    pub p: f64,
}

/// A buffer a layer keeps across steps without training it (batch normalisation's running
/// statistics): an input of the graph, which the train step updates and which is saved with the
/// parameters.
#[derive(Clone, Debug)]
pub struct StateSpec {
    /// Its name (`bn1.running_mean`).
    pub name: String,
    /// Its input node.
    pub node: NodeId,
    /// Its value before training.
    pub init: f64,
    /// Its new value after a train step (train mode only).
    pub update: Option<NodeId>,
    /// The fewest examples a train step needs for `update` to be defined: 2 for a variance
    /// over the batch axis alone (its unbiased estimate divides by `n - 1`), else 1.
    pub min_batch: usize,
}

/// A fed tensor.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// The name data is fed under.
    pub name: String,
    /// Its node.
    pub node: NodeId,
    /// Input or target.
    pub role: Role,
    /// Real values or class indices.
    pub kind: ValueKind,
}

/// A trainable parameter.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The name it is saved under (`w1`, `h2.w`).
    pub name: String,
    /// Its node.
    pub node: NodeId,
    /// How to fill it before training.
    pub init: Init,
    /// The initialiser as the user wrote it (`he_uniform`), for summaries.
    pub init_name: String,
}

/// A named intermediate value.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The name.
    pub name: String,
    /// Its node.
    pub node: NodeId,
}

/// What a model predicts and how to read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// The node.
    pub node: NodeId,
    /// How accuracy is read from it.
    pub kind: PredictionKind,
}

/// A model ready for differentiation, checking and compilation.
#[derive(Clone, Debug)]
pub struct Model {
    /// The model's name.
    pub name: String,
    /// The forward graph.
    pub graph: Graph,
    /// Inputs and targets, in declaration order.
    pub inputs: Vec<InputSpec>,
    /// Parameters, in creation order.
    pub params: Vec<ParamSpec>,
    /// Named intermediate values, in order.
    pub bindings: Vec<Binding>,
    /// The scalar loss.
    pub loss: NodeId,
    /// The model's prediction (what the loss compares with the target), when known.
    pub prediction: Option<Prediction>,
    /// Dropout masks (train mode only).
    pub dropouts: Vec<DropoutSpec>,
    /// Layer state kept across steps (batch normalisation's running statistics).
    pub states: Vec<StateSpec>,
    /// Recurrent state carried between generation steps (generate mode only).
    pub carries: Vec<CarrySpec>,
}

impl Model {
    /// Total number of trainable scalars (parameters never have symbolic dimensions).
    pub fn param_count(&self) -> usize {
        self.params
            .iter()
            .map(|p| self.graph.shape(p.node).numel().unwrap_or(0))
            .sum()
    }

    /// Binds every symbolic dimension that `lookup` knows, checking all shapes again; every
    /// node this model names follows its node into the bound graph (see [`Graph::bind`]).
    pub fn bind(&mut self, lookup: &dyn Fn(&str) -> Option<usize>) -> Result<(), ShapeError> {
        // Destructured whole, so that a new field naming nodes cannot be forgotten here.
        let Model {
            name: _,
            graph,
            inputs,
            params,
            bindings,
            loss,
            prediction,
            dropouts,
            states,
            carries,
        } = self;
        let moved = graph.bind(lookup)?;
        let to = |node: &mut NodeId| *node = moved[node.index()];
        inputs.iter_mut().for_each(|i| to(&mut i.node));
        params.iter_mut().for_each(|p| to(&mut p.node));
        bindings.iter_mut().for_each(|b| to(&mut b.node));
        to(loss);
        if let Some(p) = prediction {
            to(&mut p.node);
        }
        dropouts.iter_mut().for_each(|d| to(&mut d.node));
        for state in states {
            to(&mut state.node);
            if let Some(update) = &mut state.update {
                to(update);
            }
        }
        for carry in carries {
            to(&mut carry.input);
            to(&mut carry.output);
        }
        Ok(())
    }
}

impl Model {
    /// A copy of the graph with the gradient of the loss for every parameter added:
    /// `(graph, loss, gradients in parameter order)`. The gradients of parameters and of the
    /// bindings between them and the loss are labelled `grad NAME` (a parameter's name first).
    pub fn gradient_graph(
        &self,
    ) -> Result<(Graph, NodeId, Vec<NodeId>), crate::autodiff::AutodiffError> {
        let mut graph = self.graph.clone();
        let params: Vec<NodeId> = self.params.iter().map(|p| p.node).collect();
        let names: Vec<(&str, NodeId)> = self
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.node))
            .chain(self.bindings.iter().map(|b| (b.name.as_str(), b.node)))
            .collect();
        let grads = crate::autodiff::differentiate_named(&mut graph, self.loss, &params, &names)?;
        Ok((graph, self.loss, grads))
    }
}
