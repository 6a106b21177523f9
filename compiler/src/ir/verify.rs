//! The graph verifier: checks the invariants every pass must keep. Run after every pass in tests
//! and debug builds.

use super::{Graph, ShapeError};

/// Checks that every node has as many operands as its op takes, that operands come before their
/// users (ids ascend along edges) and that every stored shape is the one its op infers.
pub fn verify(graph: &Graph) -> Result<(), ShapeError> {
    for id in graph.node_ids() {
        let node = graph.get(id);
        let operands = graph.operands(id);
        if let Some(late) = operands.iter().find(|o| o.index() >= id.index()) {
            return Err(ShapeError(format!(
                "%{} uses %{}, which does not come before it",
                id.index(),
                late.index()
            )));
        }
        let shapes: Vec<_> = operands.iter().map(|&o| graph.shape(o)).collect();
        let inferred = node
            .op
            .infer_shape(&shapes)
            .map_err(|e| ShapeError(format!("%{} ({}): {e}", id.index(), node.op)))?;
        if inferred != node.shape {
            return Err(ShapeError(format!(
                "%{} ({}) stores shape {} but its operands give {inferred}",
                id.index(),
                node.op,
                node.shape
            )));
        }
    }
    Ok(())
}
