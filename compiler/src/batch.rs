//! Sums of matrix products become one product of concatenations:
//! `A_1 B_1 + ... + A_n B_n = [A_1 ... A_n] [B_1; ...; B_n]`.
//!
//! An unrolled recurrence multiplies by the same weight at every step, so the weight's
//! gradient is a sum of T products whose inner dimension is only the batch, plus T - 1
//! additions of weight-sized results. One product whose inner dimension is T times the batch
//! does the same arithmetic at the tuned GEMM's full speed, on every core, and adds nothing
//! (PyTorch computes the gradient of `nn.RNN`'s weights this way too).
//!
//! A transposed operand stays a transpose of a concatenation (`[X_1^T ... X_n^T] = [X_1; ...;
//! X_n]^T`), which the product reads in place. Only products the sum alone uses are batched,
//! and only where copying their operands costs no more than the additions saved. The result
//! differs from the sum only by rounding (the order of the additions).
//!
//! Input: the simplified graph and its roots. Output: a graph computing the same roots.

use std::collections::HashMap;

use crate::ir::{BinaryOp, Graph, NodeId, Op, ShapeError};

/// The graph with its sums of products batched.
pub struct Batched {
    /// The rewritten graph, holding only what the roots need.
    pub graph: Graph,
    /// The roots in it, in the order given.
    pub roots: Vec<NodeId>,
    /// How many sums were rewritten.
    pub sums: usize,
}

/// Rewrites every sum of at least two products that is worth it (see the module docs).
pub fn batch_products(graph: &Graph, roots: &[NodeId]) -> Result<Batched, ShapeError> {
    let order = graph.ancestors(roots);
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        for &o in graph.operands(id) {
            *uses.entry(o).or_default() += 1;
        }
    }
    for &r in roots {
        *uses.entry(r).or_default() += 1;
    }
    let is_add = |id: NodeId| matches!(graph.op(id), Op::Binary(BinaryOp::Add));
    let used_once = |id: NodeId| uses.get(&id) == Some(&1);
    // An addition folded into the sum that reads it.
    let mut interior = vec![false; graph.len()];
    for &id in &order {
        if is_add(id) {
            for &o in graph.operands(id) {
                if is_add(o) && used_once(o) {
                    interior[o.index()] = true;
                }
            }
        }
    }
    let mut plans: HashMap<NodeId, Sum> = HashMap::new();
    for &id in order.iter().rev() {
        if is_add(id) && !interior[id.index()] {
            let sum = Sum::of(graph, id, &interior, &used_once);
            if sum.worth_it(graph) {
                plans.insert(id, sum);
            }
        }
    }
    let sums = plans.len();
    let mut out = Graph::new();
    out.dtype = graph.dtype;
    let mut new_id: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in &order {
        let copy = match plans.get(&id) {
            Some(sum) => sum.emit(graph, &mut out, &new_id)?,
            // What a batched sum absorbed is copied too, and left out by `extract` below.
            None => {
                let operands: Vec<NodeId> = graph.operands(id).iter().map(|o| new_id[o]).collect();
                out.node(graph.op(id).clone(), &operands)?
            }
        };
        out.tag_like(copy, graph, id);
        new_id.insert(id, copy);
    }
    let roots: Vec<NodeId> = roots.iter().map(|r| new_id[r]).collect();
    let (graph, roots) = out.extract(&roots);
    Ok(Batched { graph, roots, sums })
}

/// The terms of one sum: products it alone reads, and everything else.
struct Sum {
    products: Vec<NodeId>,
    others: Vec<NodeId>,
}

impl Sum {
    /// The terms under `root` through additions folded into it.
    fn of(
        graph: &Graph,
        root: NodeId,
        interior: &[bool],
        used_once: &dyn Fn(NodeId) -> bool,
    ) -> Sum {
        let mut sum = Sum {
            products: Vec::new(),
            others: Vec::new(),
        };
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if id == root || interior[id.index()] {
                // Right operand pushed first, so that terms come out left to right.
                stack.extend(graph.operands(id).iter().rev());
            } else if matches!(graph.op(id), Op::MatMul) && used_once(id) {
                sum.products.push(id);
            } else {
                sum.others.push(id);
            }
        }
        sum
    }

    /// Whether the concatenations copy no more than the additions of `[m, n]` results they
    /// save.
    fn worth_it(&self, graph: &Graph) -> bool {
        if self.products.len() < 2 {
            return false;
        }
        let dims = |id: NodeId| -> Option<[usize; 2]> {
            match graph.shape(id).0.as_slice() {
                [a, b] => Some([a.known()?, b.known()?]),
                _ => None,
            }
        };
        let Some([m, n]) = dims(self.products[0]) else {
            return false;
        };
        let mut inner = 0;
        for &p in &self.products {
            match dims(graph.operands(p)[0]) {
                Some([_, k]) => inner += k,
                None => return false,
            }
        }
        (self.products.len() - 1) * m * n >= inner * (m + n)
    }

    /// One product of the concatenated operands, plus the other terms, in `out`.
    fn emit(
        &self,
        graph: &Graph,
        out: &mut Graph,
        new_id: &HashMap<NodeId, NodeId>,
    ) -> Result<NodeId, ShapeError> {
        let side = |out: &mut Graph, operand: usize, axis: usize| {
            let parts: Vec<NodeId> = self
                .products
                .iter()
                .map(|&p| graph.operands(p)[operand])
                .collect();
            let all_transposed = parts
                .iter()
                .all(|&x| matches!(graph.op(x), Op::Transpose(perm) if perm == &[1, 0]));
            if all_transposed {
                let inner: Vec<NodeId> = parts
                    .iter()
                    .map(|&x| new_id[&graph.operands(x)[0]])
                    .collect();
                let joined = out.concat(&inner, 1 - axis)?;
                out.transpose(joined, &[1, 0])
            } else {
                let parts: Vec<NodeId> = parts.iter().map(|x| new_id[x]).collect();
                out.concat(&parts, axis)
            }
        };
        let a = side(out, 0, 1)?;
        let b = side(out, 1, 0)?;
        let mut total = out.matmul(a, b)?;
        for o in &self.others {
            total = out.add(total, new_id[o])?;
        }
        Ok(total)
    }
}
