//! The e-class analysis: every e-class knows its shape and, when all its elements are one known
//! number, that number. The shape lets rules build correctly shaped replacements; the number
//! drives constant folding (a folded class gains a `const` or `broadcast(const)` node).

use egg::{Analysis, DidMerge, EGraph, Id};

use super::lang::TensorNode;
use crate::ir::{Op, ReduceOp, Scalar, Shape, interp};

/// What is known about an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    /// The shape every member has.
    pub shape: Shape,
    /// The value of every element, when it is one known constant.
    pub constant: Option<f64>,
}

/// Shape and constant analysis.
#[derive(Default)]
pub struct TensorAnalysis;

/// An e-graph over tensor ops.
pub type TensorEGraph = EGraph<TensorNode, TensorAnalysis>;

impl Analysis<TensorNode> for TensorAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut TensorEGraph, enode: &TensorNode, _id: Id) -> ClassData {
        let child = |i: usize| &egraph[enode.children[i]].data;
        let shapes: Vec<&Shape> = enode
            .children
            .iter()
            .map(|&c| &egraph[c].data.shape)
            .collect();
        // Rules only ever build well-shaped nodes; an ill-shaped one would be a rule bug, and
        // then keeping the first operand's shape is the least surprising fallback.
        let shape = enode
            .op
            .infer_shape(&shapes)
            .unwrap_or_else(|_| shapes.first().map_or_else(Shape::scalar, |s| (*s).clone()));
        let constant = match &enode.op {
            Op::Const(c) => Some(c.get()),
            Op::Numel(s) => s.numel().map(|n| n as f64),
            Op::Broadcast(_) | Op::Reshape(_) | Op::Transpose(_) => child(0).constant,
            Op::Reduce(ReduceOp::Max, _) => child(0).constant,
            Op::Reduce(ReduceOp::Sum, _) => {
                let (input, n_in) = (child(0), child(0).shape.numel());
                match (input.constant, n_in, shape.numel()) {
                    (Some(c), Some(n_in), Some(n_out)) if n_out > 0 => {
                        Some(c * (n_in / n_out) as f64)
                    }
                    _ => None,
                }
            }
            Op::Unary(u) => child(0).constant.map(|x| interp::unary(*u, x)),
            Op::Binary(b) => match (child(0).constant, child(1).constant) {
                (Some(x), Some(y)) => Some(interp::binary(*b, x, y)),
                _ => None,
            },
            Op::Select => match child(0).constant {
                Some(c) if c != 0.0 => child(1).constant,
                Some(_) => child(2).constant,
                None => None,
            },
            // Fed values, products and library calls are never folded.
            Op::Input { .. } | Op::Param { .. } | Op::Iota { .. } | Op::MatMul => None,
            library => {
                debug_assert!(library.is_library_call(), "{library} folds");
                None
            }
        };
        ClassData { shape, constant }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        match (a.constant, b.constant) {
            (None, Some(c)) => {
                a.constant = Some(c);
                DidMerge(true, false)
            }
            (Some(_), None) => DidMerge(false, true),
            _ => DidMerge(false, false),
        }
    }

    fn modify(egraph: &mut TensorEGraph, id: Id) {
        let data = egraph[id].data.clone();
        if let Some(c) = data.constant.filter(|c| c.is_finite()) {
            let folded = constant_node(egraph, c, &data.shape);
            egraph.union(id, folded);
        }
    }
}

/// Adds `c` filled to `shape`: a scalar `const`, broadcast when the shape is not scalar.
pub fn constant_node(egraph: &mut TensorEGraph, c: f64, shape: &Shape) -> Id {
    let scalar = egraph.add(TensorNode {
        op: Op::Const(Scalar::new(c)),
        children: vec![],
    });
    if shape.rank() == 0 {
        scalar
    } else {
        egraph.add(TensorNode {
            op: Op::Broadcast(shape.clone()),
            children: vec![scalar],
        })
    }
}
