//! The train step split at the gradient/update boundary, for data-parallel training: each
//! process (rank) runs a *local step* on its shard of the batch, the runtime sums one packed
//! buffer over every rank with one all-reduce, and every rank runs the same *update*.
//!
//! The local step is the forward and backward pass: its outputs are the loss and prediction,
//! and it writes, each times the scalar input `SHARE` (the rank's fraction of the global
//! batch), every parameter's gradient and then every layer state's new value (batch
//! normalisation's running statistics) into its part of the packed buffer `REDUCED`, laid out
//! by the memory plan ([`crate::memory::Packing`]) so that the kernel computing a value writes
//! it where the all-reduce reads it. Summed over ranks, the shares weigh each rank's mean
//! gradient by its examples: the global batch's mean gradient, whatever the split. Layer state
//! is summed the same way, so that every rank holds the same running statistics after every
//! step (each rank still normalises with its own shard's statistics, as PyTorch's DDP without
//! `SyncBatchNorm` does): evaluation is the same on every rank, and a checkpoint that rank 0
//! writes is every rank's.
//!
//! The update reads the summed values in place from the same buffer, applies the optimizer
//! (clipping included, on the global gradient) as [`crate::optim::apply`] does in the
//! one-process step, and copies the layer state out. It does not depend on the batch size.

use nabla_runtime::train::{REDUCED, SHARE};

use crate::ir::{Graph, NodeId, Shape, ShapeError};
use crate::memory::Packing;
use crate::model::Model;
use crate::optim::{self, Optimizer, TrainStep};

/// The name of parameter `param`'s gradient in [`REDUCED`].
fn gradient_part(param: &str) -> String {
    format!("#gradient of {param}")
}

/// The name of layer state `state`'s new value in [`REDUCED`].
fn state_part(state: &str) -> String {
    format!("#new {state}")
}

/// The layer states a train step updates.
fn updated_states(model: &Model) -> impl Iterator<Item = (&str, NodeId, NodeId)> {
    model
        .states
        .iter()
        .filter_map(|s| s.update.map(|u| (s.name.as_str(), s.node, u)))
}

/// Where each gradient and each updated layer state lies in [`REDUCED`], and its length.
pub fn layout(model: &Model) -> (Packing, usize) {
    let numel = |node: NodeId| model.graph.shape(node).numel().unwrap_or(0);
    let gradients = model
        .params
        .iter()
        .map(|p| (gradient_part(&p.name), p.node));
    let states = updated_states(model).map(|(name, node, _)| (state_part(name), node));
    let mut at = 0;
    let parts = gradients
        .chain(states)
        .map(|(part, node)| {
            let start = at;
            at += numel(node);
            (part, start)
        })
        .collect();
    let packing = Packing {
        buffer: REDUCED.into(),
        parts,
    };
    (packing, at)
}

/// The local step of `model` from its gradient graph (as [`Model::gradient_graph`] makes it).
pub fn local_step(
    model: &Model,
    (mut graph, _, grads): (Graph, NodeId, Vec<NodeId>),
) -> Result<TrainStep, ShapeError> {
    let share = graph.input(SHARE, Shape::scalar())?;
    let mut assignments = Vec::new();
    for (p, grad) in model.params.iter().zip(grads) {
        let weighed = graph.mul(grad, share)?;
        assignments.push((weighed, gradient_part(&p.name)));
    }
    for (name, _, update) in updated_states(model) {
        let weighed = graph.mul(update, share)?;
        assignments.push((weighed, state_part(name)));
    }
    Ok(TrainStep {
        graph,
        outputs: optim::loss_and_prediction(model),
        assignments,
    })
}

/// The update of `model`'s parameters, optimizer state and layer state from the summed values.
pub fn update(model: &Model, optimizer: &Optimizer) -> Result<TrainStep, ShapeError> {
    let mut graph = Graph::new();
    let mut params = Vec::new();
    let mut grads = Vec::new();
    for p in &model.params {
        let shape = model.graph.shape(p.node).clone();
        params.push((p.name.clone(), graph.param(&p.name, shape.clone())?));
        grads.push(graph.input(&gradient_part(&p.name), shape)?);
    }
    let mut assignments = optim::updates(&mut graph, &params, grads, optimizer)?;
    for (name, node, _) in updated_states(model) {
        let summed = graph.input(&state_part(name), model.graph.shape(node).clone())?;
        assignments.push((summed, name.to_string()));
    }
    Ok(TrainStep {
        graph,
        outputs: Vec::new(),
        assignments,
    })
}
