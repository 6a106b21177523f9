//! The computation graph: a petgraph `DiGraph` of primitive [`Op`]s with static shapes.
//!
//! The graph owns its nodes; builders borrow `&mut Graph` and hand out `Copy` [`NodeId`]s.
//! Every insertion goes through [`Graph::node`], which infers and checks the shape and
//! hash-conses: asking twice for the same op on the same operands returns the same node, so the
//! graph never holds two structurally equal nodes (common subexpressions are shared by
//! construction). The convenience builders (`add`, `matmul`, `sum`, ...) insert the explicit
//! broadcasts that the primitives require, and fold chains of layout ops as they are built (a
//! transpose of a transpose, a reshape of a reshape, a broadcast of a broadcast), so that no pass
//! ever sees one.
//!
//! ```
//! use nabla_compiler::ir::{Graph, Shape, Dim};
//! let mut g = Graph::new();
//! let x = g.input("x", Shape(vec![Dim::sym("B"), Dim::Known(3)])).unwrap();
//! let w = g.param("w", Shape::known(&[3, 2])).unwrap();
//! let b = g.param("b", Shape::known(&[2])).unwrap();
//! let xw = g.matmul(x, w).unwrap();
//! let h = g.add(xw, b).unwrap(); // `b` is broadcast to [B, 2]
//! assert_eq!(g.shape(h).to_string(), "[B, 2]");
//! ```

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use super::op::{BinaryOp, Op, ReduceOp, Scalar, UnaryOp, Window};
use super::shape::{Shape, ShapeError};

/// A node of a [`Graph`].
pub type NodeId = NodeIndex<u32>;

/// The element type a graph is evaluated and compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// 32-bit floats: training.
    #[default]
    F32,
    /// 64-bit floats: checking.
    F64,
}

/// One node: its op, its operands, its inferred shape, and the DSL name it was bound to, if any.
#[derive(Clone, Debug)]
pub struct Node {
    /// The primitive.
    pub op: Op,
    /// The operands, in order. They are kept in the node rather than as positions on the
    /// petgraph edges, so that an op may have any number of them (a concatenation of a
    /// thousand time steps) and their order cannot wrap or be lost.
    operands: Vec<NodeId>,
    /// The output shape, inferred from the op and its operands.
    pub shape: Shape,
    /// A name for humans (`h1`, `loss`, `grad w`), shown in dumps.
    pub label: Option<String>,
    /// The DSL built-in whose result this node is (`relu`, `cross_entropy`), shown in dumps and
    /// kernel titles instead of the primitive.
    pub builtin: Option<String>,
    /// The rewrite rules that made this node other than what the graph it was simplified from
    /// computed (`div-const`), for the inspector; empty for most nodes.
    pub rewrites: Vec<String>,
}

/// A computation graph. Every node holds its operands in order; the petgraph edges (one per
/// operand, from operand to user) carry no data and serve traversals.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    inner: DiGraph<Node, ()>,
    interned: HashMap<(Op, Vec<NodeId>), NodeId>,
    /// The element type the graph is meant to run in.
    pub dtype: DType,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Inserts `op` applied to `operands`, or returns the existing identical node.
    pub fn node(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, ShapeError> {
        let key = (op, operands.to_vec());
        if let Some(&id) = self.interned.get(&key) {
            return Ok(id);
        }
        let shapes: Vec<&Shape> = operands.iter().map(|&o| self.shape(o)).collect();
        let shape = key.0.infer_shape(&shapes)?;
        let id = self.inner.add_node(Node {
            op: key.0.clone(),
            operands: key.1.clone(),
            shape,
            label: None,
            builtin: None,
            rewrites: Vec::new(),
        });
        for &o in operands {
            self.inner.add_edge(o, id, ());
        }
        self.interned.insert(key, id);
        Ok(id)
    }

    /// The node's data.
    pub fn get(&self, id: NodeId) -> &Node {
        &self.inner[id]
    }

    /// The node's op.
    pub fn op(&self, id: NodeId) -> &Op {
        &self.inner[id].op
    }

    /// The node's shape.
    pub fn shape(&self, id: NodeId) -> &Shape {
        &self.inner[id].shape
    }

    /// Names a node for dumps; the first name given sticks.
    pub fn label(&mut self, id: NodeId, label: &str) {
        self.inner[id]
            .label
            .get_or_insert_with(|| label.to_string());
    }

    /// Records that a node is the result of a DSL built-in; the first name given sticks.
    pub fn tag_builtin(&mut self, id: NodeId, builtin: &str) {
        self.inner[id]
            .builtin
            .get_or_insert_with(|| builtin.to_string());
    }

    /// How dumps and kernel titles name a node's computation: the built-in it came from, else
    /// its primitive.
    pub fn describe(&self, id: NodeId) -> &str {
        let node = &self.inner[id];
        node.builtin.as_deref().unwrap_or(node.op.name())
    }

    /// The operands of a node, in order.
    pub fn operands(&self, id: NodeId) -> &[NodeId] {
        &self.inner[id].operands
    }

    /// All node ids, in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.inner.node_indices()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.inner.node_count()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.inner.node_count() == 0
    }

    /// Nodes in an order where every operand comes before its users. Nodes are never removed and
    /// only ever added after their operands, so ascending ids are such an order; passes that
    /// drop nodes build a new graph instead.
    pub fn topo_order(&self) -> Vec<NodeId> {
        self.inner.node_indices().collect()
    }

    /// The nodes that read `id`, each once, in ascending order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self
            .inner
            .neighbors_directed(id, Direction::Outgoing)
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// The nodes `roots` depend on (themselves included), in topological order.
    pub fn ancestors(&self, roots: &[NodeId]) -> Vec<NodeId> {
        let mut seen = vec![false; self.inner.node_count()];
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if !std::mem::replace(&mut seen[id.index()], true) {
                stack.extend(self.inner.neighbors_directed(id, Direction::Incoming));
            }
        }
        self.topo_order()
            .into_iter()
            .filter(|id| seen[id.index()])
            .collect()
    }

    /// A new graph of what `roots` need, with the roots' ids in it; labels carry over.
    pub fn extract(&self, roots: &[NodeId]) -> (Graph, Vec<NodeId>) {
        let (out, new_id) = self
            .copy(&self.ancestors(roots), &Op::clone)
            .expect("a well-shaped graph copies");
        let roots = roots.iter().map(|r| new_id[r.index()]).collect();
        (out, roots)
    }

    /// A new graph of `nodes` (each after its operands), every op as `op_of` makes it, built
    /// through [`Graph::node`] so that nodes made equal become one; labels carry over. The
    /// result maps every node of this graph (by index) to its copy (`NodeId::end()` when not
    /// copied).
    fn copy(
        &self,
        nodes: &[NodeId],
        op_of: &dyn Fn(&Op) -> Op,
    ) -> Result<(Graph, Vec<NodeId>), ShapeError> {
        let mut out = Graph::new();
        out.dtype = self.dtype;
        let mut new_id = vec![NodeId::end(); self.len()];
        for &id in nodes {
            let operands: Vec<NodeId> = self
                .operands(id)
                .iter()
                .map(|o| new_id[o.index()])
                .collect();
            let copy = out.node(op_of(self.op(id)), &operands)?;
            out.tag_like(copy, self, id);
            new_id[id.index()] = copy;
        }
        Ok((out, new_id))
    }

    /// Gives `copy` the label, built-in tag and rewrites that `id` has in `source`.
    pub fn tag_like(&mut self, copy: NodeId, source: &Graph, id: NodeId) {
        let node = source.get(id);
        if let Some(label) = &node.label {
            self.label(copy, label);
        }
        if let Some(builtin) = &node.builtin {
            self.tag_builtin(copy, builtin);
        }
        self.rewritten(copy, node.rewrites.iter().cloned());
    }

    /// Records the rules that rewrote a node (each once).
    pub fn rewritten(&mut self, id: NodeId, rules: impl IntoIterator<Item = String>) {
        let known = &mut self.inner[id].rewrites;
        for rule in rules {
            if !known.contains(&rule) {
                known.push(rule);
            }
        }
    }

    /// Replaces every symbolic dimension that `lookup` knows by its number and checks every
    /// shape again. Nodes that binding makes equal (a broadcast to `[B, 2]` and one to `[5, 2]`
    /// with `B = 5`) become one, so the graph is rebuilt in the same order: the result maps every
    /// old node (by index) to its node now.
    pub fn bind(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Vec<NodeId>, ShapeError> {
        let (out, new_id) = self.copy(&self.topo_order(), &|op| bind_op(op, lookup))?;
        *self = out;
        Ok(new_id)
    }

    // ---- Builders. Each inserts the broadcasts its primitive needs. ----

    /// A run-time input.
    pub fn input(&mut self, name: &str, shape: Shape) -> Result<NodeId, ShapeError> {
        self.node(
            Op::Input {
                name: name.into(),
                shape,
            },
            &[],
        )
    }

    /// A trainable parameter.
    pub fn param(&mut self, name: &str, shape: Shape) -> Result<NodeId, ShapeError> {
        self.node(
            Op::Param {
                name: name.into(),
                shape,
            },
            &[],
        )
    }

    /// A scalar constant.
    pub fn constant(&mut self, value: f64) -> NodeId {
        self.node(Op::Const(Scalar::new(value)), &[])
            .expect("a scalar constant is always well-shaped")
    }

    /// A constant filled to `shape`.
    pub fn full(&mut self, value: f64, shape: &Shape) -> Result<NodeId, ShapeError> {
        let c = self.constant(value);
        self.broadcast(c, shape)
    }

    /// Broadcasts `x` to `shape`; no node when it already has that shape, and a broadcast of a
    /// broadcast broadcasts the original once.
    pub fn broadcast(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, ShapeError> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        if let Op::Broadcast(_) = self.op(x) {
            let inner = self.operands(x)[0];
            return self.broadcast(inner, shape);
        }
        self.node(Op::Broadcast(shape.clone()), &[x])
    }

    /// Reshapes `x`; no node when it already has that shape, and a reshape of a reshape
    /// reshapes the original once.
    pub fn reshape(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, ShapeError> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        if let Op::Reshape(_) = self.op(x) {
            let inner = self.operands(x)[0];
            return self.reshape(inner, shape);
        }
        self.node(Op::Reshape(shape.clone()), &[x])
    }

    /// An elementwise unary op.
    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId, ShapeError> {
        self.node(Op::Unary(op), &[x])
    }

    /// An elementwise binary op with NumPy broadcasting of the operands.
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        let shape = Shape::broadcast(self.shape(a), self.shape(b))?;
        let a = self.broadcast(a, &shape)?;
        let b = self.broadcast(b, &shape)?;
        self.node(Op::Binary(op), &[a, b])
    }

    /// `a + b`, broadcasting.
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b`, broadcasting.
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a * b`, broadcasting.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b`, broadcasting.
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `x * c` for a scalar constant `c`.
    pub fn scale(&mut self, x: NodeId, c: f64) -> Result<NodeId, ShapeError> {
        let c = self.constant(c);
        self.mul(x, c)
    }

    /// `cond != 0 ? a : b`, broadcasting all three.
    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        let shape = Shape::broadcast(self.shape(a), self.shape(b))?;
        let shape = Shape::broadcast(&shape, self.shape(cond))?;
        let cond = self.broadcast(cond, &shape)?;
        let a = self.broadcast(a, &shape)?;
        let b = self.broadcast(b, &shape)?;
        self.node(Op::Select, &[cond, a, b])
    }

    /// A reduction keeping the reduced axes with size 1; no node for an empty axis list.
    pub fn reduce(
        &mut self,
        op: ReduceOp,
        x: NodeId,
        axes: &[usize],
    ) -> Result<NodeId, ShapeError> {
        if axes.is_empty() {
            return Ok(x);
        }
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        self.node(Op::Reduce(op, axes), &[x])
    }

    /// Sum over `axes`, keeping them with size 1.
    pub fn sum(&mut self, x: NodeId, axes: &[usize]) -> Result<NodeId, ShapeError> {
        self.reduce(ReduceOp::Sum, x, axes)
    }

    /// Sum of all elements as a scalar.
    pub fn sum_all(&mut self, x: NodeId) -> Result<NodeId, ShapeError> {
        let axes: Vec<usize> = (0..self.shape(x).rank()).collect();
        let s = self.sum(x, &axes)?;
        self.reshape(s, &Shape::scalar())
    }

    /// Permutes axes; no node for the identity permutation, and a transpose of a transpose
    /// is one transpose (or none, when they cancel).
    pub fn transpose(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId, ShapeError> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) && perm.len() == self.shape(x).rank() {
            return Ok(x);
        }
        if let Op::Transpose(first) = self.op(x)
            && first.len() == perm.len()
            && perm.iter().all(|&p| p < first.len())
        {
            // Output axis i is x's axis perm[i], which is the original's axis first[perm[i]].
            let composed: Vec<usize> = perm.iter().map(|&p| first[p]).collect();
            let inner = self.operands(x)[0];
            return self.transpose(inner, &composed);
        }
        self.node(Op::Transpose(perm.to_vec()), &[x])
    }

    /// The windows of `[N, C, H, W]` images as rows: `[N, OH, OW, C, KH, KW]`.
    pub fn windows(&mut self, x: NodeId, window: Window) -> Result<NodeId, ShapeError> {
        self.node(Op::Windows(window), &[x])
    }

    /// Elements `start .. start + len` of `axis`; no node when that is all of it.
    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<NodeId, ShapeError> {
        if start == 0 && self.shape(x).0.get(axis).and_then(|d| d.known()) == Some(len) {
            return Ok(x);
        }
        self.node(Op::Slice { axis, start, len }, &[x])
    }

    /// `parts` joined along `axis`; no node for one part.
    pub fn concat(&mut self, parts: &[NodeId], axis: usize) -> Result<NodeId, ShapeError> {
        match parts {
            [one] => Ok(*one),
            _ => self.node(
                Op::Concat {
                    axis,
                    parts: parts.len(),
                },
                parts,
            ),
        }
    }

    /// The adjoint of [`Graph::windows`]: `[N, OH, OW, C, KH, KW]` summed back into images.
    pub fn unwindows(&mut self, x: NodeId, window: Window) -> Result<NodeId, ShapeError> {
        self.node(Op::Unwindows(window), &[x])
    }
}

#[cfg(test)]
impl Graph {
    /// Appends a node as given, skipping every check [`Graph::node`] makes: how the verifier's
    /// tests build the broken graphs a faulty pass could leave.
    pub(crate) fn push_unchecked(&mut self, op: Op, operands: &[NodeId], shape: Shape) -> NodeId {
        let id = self.inner.add_node(Node {
            op,
            operands: operands.to_vec(),
            shape,
            label: None,
            builtin: None,
            rewrites: Vec::new(),
        });
        for &o in operands {
            let from = if o.index() < self.inner.node_count() {
                o
            } else {
                id
            };
            self.inner.add_edge(from, id, ());
        }
        id
    }
}

/// The op with its symbolic dimensions bound where `lookup` knows them.
fn bind_op(op: &Op, lookup: &dyn Fn(&str) -> Option<usize>) -> Op {
    match op {
        Op::Input { name, shape } => Op::Input {
            name: name.clone(),
            shape: shape.bind(lookup),
        },
        Op::Param { name, shape } => Op::Param {
            name: name.clone(),
            shape: shape.bind(lookup),
        },
        Op::Iota { shape, axis } => Op::Iota {
            shape: shape.bind(lookup),
            axis: *axis,
        },
        Op::Numel(s) => Op::Numel(s.bind(lookup)),
        Op::Broadcast(s) => Op::Broadcast(s.bind(lookup)),
        Op::Reshape(s) => Op::Reshape(s.bind(lookup)),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dim;

    #[test]
    fn equal_nodes_are_shared() {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[3])).unwrap();
        let a = g.unary(UnaryOp::Exp, x).unwrap();
        let b = g.unary(UnaryOp::Exp, x).unwrap();
        assert_eq!(a, b);
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn layout_chains_fold_as_they_are_built() {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[2, 3, 4])).unwrap();
        let t = g.transpose(x, &[2, 0, 1]).unwrap();
        assert_eq!(
            g.transpose(t, &[1, 2, 0]).unwrap(),
            x,
            "inverse permutations cancel"
        );
        let twice = g.transpose(t, &[2, 0, 1]).unwrap();
        assert_eq!(g.op(twice), &Op::Transpose(vec![1, 2, 0]));
        assert_eq!(g.operands(twice), [x]);
        let r = g.reshape(x, &Shape::known(&[6, 4])).unwrap();
        let rr = g.reshape(r, &Shape::known(&[24])).unwrap();
        assert_eq!(g.operands(rr), [x]);
        assert_eq!(g.reshape(rr, &Shape::known(&[2, 3, 4])).unwrap(), x);
        let s = g.input("s", Shape::known(&[4])).unwrap();
        let b = g.broadcast(s, &Shape::known(&[3, 4])).unwrap();
        let bb = g.broadcast(b, &Shape::known(&[2, 3, 4])).unwrap();
        assert_eq!(g.operands(bb), [s]);
    }

    #[test]
    fn binding_fixes_symbols_and_rechecks() {
        let mut g = Graph::new();
        let x = g
            .input("x", Shape(vec![Dim::sym("B"), Dim::Known(2)]))
            .unwrap();
        let s = g.sum_all(x).unwrap();
        let moved = g.bind(&|name| (name == "B").then_some(5)).unwrap();
        let (x, s) = (moved[x.index()], moved[s.index()]);
        assert_eq!(g.shape(x), &Shape::known(&[5, 2]));
        assert_eq!(g.shape(s), &Shape::scalar());
        assert_eq!(g.operands(s).len(), 1);
    }

    #[test]
    fn binding_merges_the_nodes_it_makes_equal() {
        let mut g = Graph::new();
        let one = g.constant(1.0);
        let symbolic = g
            .broadcast(one, &Shape(vec![Dim::sym("B"), Dim::Known(2)]))
            .unwrap();
        let known = g.broadcast(one, &Shape::known(&[5, 2])).unwrap();
        let exp = g.unary(UnaryOp::Exp, symbolic).unwrap();
        assert_eq!(g.len(), 4);
        let moved = g.bind(&|_| Some(5)).unwrap();
        assert_eq!(moved[symbolic.index()], moved[known.index()]);
        assert_eq!(g.len(), 3);
        assert_eq!(g.operands(moved[exp.index()]), [moved[known.index()]]);
    }

    #[test]
    fn operand_order_survives_any_number_of_operands() {
        let mut g = Graph::new();
        let parts: Vec<NodeId> = (0..1000)
            .map(|i| g.input(&format!("x{i}"), Shape::known(&[1])).unwrap())
            .collect();
        let joined = g.concat(&parts, 0).unwrap();
        assert_eq!(g.operands(joined), parts.as_slice());
        assert_eq!(g.shape(joined), &Shape::known(&[1000]));
    }
}
