//! The graph verifier: the invariants every graph pass must keep. The pipeline runs it after
//! each graph pass ([`crate::pipeline`]), as tinygrad brackets its pass list with its verifier:
//! a pass that breaks the graph is named at once, instead of surfacing later as a wrong number.

use std::collections::HashMap;

use super::{Graph, NodeId, Op};

/// A broken invariant: the node where it shows and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("%{node} {problem}")]
pub struct VerifyError {
    /// The node's index.
    pub node: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks, for every node: that it has as many operands as its op takes, that they come before
/// it (ascending ids are a topological order), that its stored shape is the one its op infers
/// from theirs, and that no earlier node is the same op of the same operands (the graph
/// hash-conses).
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let mut seen: HashMap<(&Op, &[NodeId]), NodeId> = HashMap::with_capacity(graph.len());
    for id in graph.node_ids() {
        let fail = |problem: String| {
            Err(VerifyError {
                node: id.index(),
                problem,
            })
        };
        let node = graph.get(id);
        let operands = graph.operands(id);
        if operands.len() != node.op.arity() {
            return fail(format!(
                "({}) takes {} operands but has {}",
                node.op,
                node.op.arity(),
                operands.len()
            ));
        }
        if let Some(late) = operands.iter().find(|o| o.index() >= id.index()) {
            return fail(format!(
                "uses %{}, which does not come before it",
                late.index()
            ));
        }
        let shapes: Vec<_> = operands.iter().map(|&o| graph.shape(o)).collect();
        let inferred = match node.op.infer_shape(&shapes) {
            Ok(shape) => shape,
            Err(e) => return fail(format!("({}): {e}", node.op)),
        };
        if inferred != node.shape {
            return fail(format!(
                "({}) stores shape {} but its operands give {inferred}",
                node.op, node.shape
            ));
        }
        if let Some(first) = seen.insert((&node.op, operands), id) {
            return fail(format!(
                "({}) is %{} again: the same op of the same operands",
                node.op,
                first.index()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Shape, UnaryOp};

    /// `x` and `exp x`, well formed.
    fn graph() -> (Graph, NodeId, NodeId) {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[3])).unwrap();
        let e = g.unary(UnaryOp::Exp, x).unwrap();
        (g, x, e)
    }

    fn problem(g: &Graph) -> String {
        verify(g).expect_err("a broken graph").to_string()
    }

    #[test]
    fn a_well_formed_graph_passes() {
        assert_eq!(verify(&graph().0), Ok(()));
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let exp = Op::Unary(UnaryOp::Exp);
        let (mut g, x, _) = graph();
        g.push_unchecked(exp.clone(), &[x], Shape::known(&[3]));
        assert_eq!(
            problem(&g),
            "%2 (exp) is %1 again: the same op of the same operands"
        );
        let (mut g, x, _) = graph();
        g.push_unchecked(exp.clone(), &[x, x], Shape::known(&[3]));
        assert_eq!(problem(&g), "%2 (exp) takes 1 operands but has 2");
        let (mut g, _, _) = graph();
        g.push_unchecked(exp.clone(), &[NodeId::new(2)], Shape::known(&[3]));
        assert_eq!(problem(&g), "%2 uses %2, which does not come before it");
        let (mut g, _, e) = graph();
        g.push_unchecked(exp, &[e], Shape::known(&[4]));
        assert_eq!(
            problem(&g),
            "%2 (exp) stores shape [4] but its operands give [3]"
        );
    }
}
