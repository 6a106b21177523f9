//! Graph simplification by equality saturation with `egg`. The only entry point is
//! [`simplify`].
//!
//! The graph is copied into an e-graph ([`lang`]), whose classes carry shapes and constants
//! ([`analysis`]); the [`rules`] run to saturation or to the limits in [`Limits`]; and the
//! cheapest equivalent of each root is extracted back into a fresh graph.
//!
//! **Architecture invariant:** simplification never changes what a graph computes (for finite
//! values) nor any root's shape; tests check both sides in the interpreter.

pub mod analysis;
pub mod lang;
pub mod rules;

use std::collections::HashMap;
use std::time::Duration;

use egg::{CostFunction, Extractor, Id, Language, Runner};

use crate::ir::{Graph, NodeId, Op, ReduceOp, ShapeError};
use analysis::{TensorAnalysis, TensorEGraph};
use lang::TensorNode;

/// Bounds on saturation, always set so that simplification terminates quickly.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Maximum e-nodes.
    pub nodes: usize,
    /// Maximum iterations.
    pub iterations: usize,
    /// Maximum wall time.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nodes: 50_000,
            iterations: 30,
            time: Duration::from_secs(5),
        }
    }
}

/// A simplified graph and what saturation did.
#[derive(Debug)]
pub struct Simplified {
    /// The new graph, holding only what the roots need.
    pub graph: Graph,
    /// The roots in the new graph, in the order given.
    pub roots: Vec<NodeId>,
    /// Nodes the roots needed before simplification.
    pub nodes_before: usize,
    /// Why saturation stopped, how many iterations and e-nodes it took.
    pub report: String,
}

/// Simplifies what `roots` compute, returning a new graph. Root labels carry over.
pub fn simplify(
    graph: &Graph,
    roots: &[NodeId],
    limits: &Limits,
) -> Result<Simplified, ShapeError> {
    let nodes = graph.ancestors(roots);
    let mut egraph = TensorEGraph::new(TensorAnalysis);
    let mut class_of: HashMap<NodeId, Id> = HashMap::new();
    for &id in &nodes {
        let children = graph.operands(id).iter().map(|o| class_of[o]).collect();
        class_of.insert(
            id,
            egraph.add(TensorNode {
                op: graph.op(id).clone(),
                children,
            }),
        );
    }
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(limits.time)
        .run(&rules::all());
    let report = runner.report();
    let report = format!(
        "stopped: {:?}; {} iterations; {} e-nodes in {} e-classes; {:.3}s",
        report.stop_reason,
        report.iterations,
        report.egraph_nodes,
        report.egraph_classes,
        report.total_time
    );

    let extractor = Extractor::new(&runner.egraph, KernelCost);
    let mut out = Graph::new();
    out.dtype = graph.dtype;
    let mut new_roots = Vec::with_capacity(roots.len());
    for &root in roots {
        let (_, expr) = extractor.find_best(runner.egraph.find(class_of[&root]));
        let mut ids: Vec<NodeId> = Vec::with_capacity(expr.as_ref().len());
        for enode in expr.as_ref() {
            let operands: Vec<NodeId> = enode
                .children()
                .iter()
                .map(|&c| ids[usize::from(c)])
                .collect();
            ids.push(out.node(enode.op.clone(), &operands)?);
        }
        let new_root = *ids.last().expect("an extracted term has at least one node");
        if let Some(label) = &graph.get(root).label {
            out.label(new_root, label);
        }
        new_roots.push(new_root);
    }
    Ok(Simplified {
        graph: out,
        roots: new_roots,
        nodes_before: nodes.len(),
        report,
    })
}

/// Extraction cost: roughly the work a kernel does per output element, summed over the term.
struct KernelCost;

impl CostFunction<TensorNode> for KernelCost {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &TensorNode, mut costs: C) -> f64 {
        let own = match &enode.op {
            Op::MatMul => 16.0,
            Op::Reduce(ReduceOp::Sum | ReduceOp::Max, _) => 2.0,
            Op::Binary(crate::ir::BinaryOp::Pow) | Op::Unary(_) => 1.5,
            _ => 1.0,
        };
        enode.children.iter().fold(own, |acc, &c| acc + costs(c))
    }
}
