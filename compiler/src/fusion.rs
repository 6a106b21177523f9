//! Fusion: which graph nodes are computed together in one kernel, and which values live in
//! memory. Graph in, groups out; no loops and no code (the scheduler lowers groups to the
//! kernel IR, the code generator translates that).
//!
//! Values are either *stored* (a buffer holds them) or *inline* (recomputed, from stored values,
//! inside every kernel that uses them). Stored are: the roots; every matrix product and
//! reduction (the anchors of kernels); every library call (windows of images, convolutions, slices, concatenations, gathers),
//! and its operands, which it reads whole; the operands of matrix products (but a transpose,
//! which the product reads with swapped strides, unless it is the right operand of several);
//! the elementwise
//! operands of broadcasts, transposes and reshapes (so that a value read at many points is
//! computed once); transcendental values (`exp`, `log`, ...) that several kernels would
//! otherwise each recompute; values read at several points whose inline computation would
//! read more than two buffers of their size (a sum of many stored values, such as a
//! transformer's residual stream); and values whose inline computation would reach too far
//! back (an unrolled recurrence). Every other value is inline, so it never touches memory.
//!
//! Stored values are then grouped, in topological order, into kernels:
//! - a **matrix product** with its *epilogue*: the elementwise values of its shape that read it
//!   at the same point (bias, activation, the gradient's activation mask, the optimizer's update
//!   of a weight from its gradient), computed in registers before anything is stored; for a
//!   product the GEMM computes, also values that read it in element order through a reshape
//!   (a transformer's `[B T, C]` projection seen as `[B, T, C]` by GELU or a residual add),
//!   over their own shape;
//! - **reductions** over the same shape and axes (siblings share one pass, a sibling that reads
//!   nothing of the group joining it even after its later phases have formed), followed by
//!   elementwise phases that read them (`log` of a row sum, the mean's division);
//! - **maps**: elementwise values of one shape, siblings sharing one loop;
//! - **calls**: one library call, alone.
//!
//! A value joins an existing group only when everything else it reads is computed by an earlier
//! group, so the groups in creation order are a valid execution order.
//!
//! This file is long because what is stored and how the stored values group are one decision
//! made in two passes over the same walks of the graph (`reads`, `reads_in_order`).
//!
//! **Architecture invariant:** no loops, strides or Cranelift types here.

use std::collections::HashMap;

use crate::ir::{BinaryOp, Graph, NodeId, Op, Shape};
use crate::kernel::Product;

/// Whether to fuse at all (`--no-fuse` makes every op its own kernel, to measure fusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fuse; when false, every node but reshapes and constants is stored by a kernel of its own.
    pub fuse: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { fuse: true }
    }
}

/// What kind of kernel a group becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// Elementwise values of one shape, in one loop.
    Map,
    /// Reductions over the same shape and axes, then elementwise phases.
    Reduce,
    /// A matrix product and its epilogue.
    MatMul,
    /// A library call (windows of images, convolutions), alone.
    Call,
}

/// One kernel-to-be.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Its kind.
    pub kind: GroupKind,
    /// The reductions, or the matrix product; empty for maps.
    pub anchors: Vec<NodeId>,
    /// The elementwise values it computes (a map's values, a product's epilogue, the phases
    /// after reductions), in topological order.
    pub members: Vec<NodeId>,
}

/// The fused graph: groups in execution order and the values held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Fusion {
    /// Groups, in an order where every group runs after the groups whose values it reads.
    pub groups: Vec<Group>,
    /// For every node, whether a buffer holds its value (parameters and inputs always do).
    pub stored: Vec<bool>,
}

/// The labels of a group's anchors and members that name a binding or a gradient (`h1`,
/// `grad h1.w`), in order and without repeats.
pub fn labels(graph: &Graph, group: &Group) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for &n in group.anchors.iter().chain(&group.members) {
        if let Some(label) = &graph.get(n).label
            && !labels.contains(label)
        {
            labels.push(label.clone());
        }
    }
    labels
}

/// What a kernel computes, for dumps and kernel titles: its anchors and the members that name
/// a binding or gradient (`matmul (h1)`, `select (h1)`), and how many other ops it fuses.
pub fn title(graph: &Graph, group: &Group, ops: usize) -> String {
    let name = |n: NodeId| match &graph.get(n).label {
        Some(label) => format!("{} ({label})", graph.describe(n)),
        None => graph.describe(n).to_string(),
    };
    let mut parts: Vec<String> = group.anchors.iter().map(|&a| name(a)).collect();
    parts.extend(
        group
            .members
            .iter()
            .filter(|&&m| graph.get(m).label.is_some() || graph.get(m).builtin.is_some())
            .map(|&m| name(m)),
    );
    if parts.is_empty() {
        parts.push(name(group.members[0]));
    }
    let others = ops.saturating_sub(parts.len());
    match others {
        0 => parts.join(", "),
        1 => format!("{} + 1 op", parts.join(", ")),
        n => format!("{} + {n} ops", parts.join(", ")),
    }
}

impl Fusion {
    /// Every op a group computes: its anchors, its members, and the inline values they
    /// recompute (constants and reshapes aside), in topological order.
    pub fn ops(&self, graph: &Graph, group: &Group) -> Vec<NodeId> {
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<NodeId> = group
            .anchors
            .iter()
            .chain(&group.members)
            .copied()
            .collect();
        let mut out = Vec::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            out.push(x);
            for &o in graph.operands(x) {
                let op = graph.op(o);
                if !self.stored[o.index()] && !is_leaf(op) && !is_free(op) {
                    stack.push(o);
                }
            }
        }
        out.sort_unstable();
        out
    }
}

/// Groups the nodes that `roots` need into kernels.
pub fn fuse(graph: &Graph, roots: &[NodeId], options: Options) -> Fusion {
    let nodes = graph.ancestors(roots);
    let users = users(graph, &nodes);
    let mut stored = vec![false; graph.len()];
    let mut cone = Cone::new(graph.len());
    for &id in &nodes {
        stored[id.index()] = must_store(graph, id, roots, &users, options)
            || (is_elementwise(graph.op(id)) && {
                let shared = users.get(&id).is_some_and(|us| us.len() > 1);
                cone.too_costly(graph, id, &stored, shared)
            });
    }
    let computed = |id: &NodeId, stored: &[bool]| {
        let op = graph.op(*id);
        stored[id.index()] && !is_leaf(op) && !matches!(op, Op::Reshape(_))
    };
    loop {
        let groups = if options.fuse {
            group(graph, &nodes, &stored, &|id| computed(&id, &stored))
        } else {
            nodes
                .iter()
                .filter(|id| computed(id, &stored))
                .map(|&id| single(graph, id))
                .collect()
        };
        // A transcendental value inlined into several kernels is computed once instead.
        let shared = shared_expensive_values(graph, &groups, &stored);
        if shared.is_empty() {
            return Fusion { groups, stored };
        }
        for id in shared {
            stored[id.index()] = true;
        }
    }
}

/// The most nodes one value may recompute inline. An unrolled recurrence chains elementwise
/// steps (an LSTM's cell-state gradient: a few ops per time step, each step reading the one
/// after it); left inline, every kernel reading step `t` would recompute the chain back to the
/// last stored value, so kernels, code and compile time would grow with the square of the
/// steps. A value whose inline operands reach further is stored, which caps every kernel's
/// inline expressions.
const MAX_INLINE: usize = 64;

/// The most buffers of its own size a value read at several points may read inline. A sum
/// of many stored values (a transformer's residual stream: the input plus every block's
/// outputs) left inline would make every kernel reading it read all of them, the backward's
/// layer norms most of all; stored, each reads one buffer. Two is an elementwise binary
/// op's own operands, which every kernel pays anyway.
const MAX_SHARED_READS: usize = 2;

/// The walk over the nodes a value would recompute inline, reused from node to node: a node is
/// seen in the current walk when its stamp is the walk's number, so no set is made per node.
struct Cone {
    stamps: Vec<u32>,
    walk: u32,
    stack: Vec<NodeId>,
}

impl Cone {
    fn new(nodes: usize) -> Cone {
        Cone {
            stamps: vec![0; nodes],
            walk: 0,
            stack: Vec::new(),
        }
    }

    /// Whether computing `id` inline would recompute more than [`MAX_INLINE`] nodes, or, for
    /// a value read at several points (`shared`), read more than [`MAX_SHARED_READS`] buffers
    /// of its own size, given which of the nodes before it are stored (every operand of `id`
    /// is already decided: ids ascend).
    fn too_costly(&mut self, graph: &Graph, id: NodeId, stored: &[bool], shared: bool) -> bool {
        self.walk += 1;
        self.stack.clear();
        self.stack.push(id);
        let size = graph.shape(id).numel();
        let (mut seen, mut reads) = (0, 0);
        while let Some(x) = self.stack.pop() {
            if std::mem::replace(&mut self.stamps[x.index()], self.walk) == self.walk {
                continue;
            }
            if x != id && (stored[x.index()] || is_leaf(graph.op(x))) {
                reads += usize::from(graph.shape(x).numel() == size);
                if shared && reads > MAX_SHARED_READS {
                    return true;
                }
                continue;
            }
            // A reshape costs nothing, but reads its operand's buffer.
            if !matches!(graph.op(x), Op::Reshape(_)) {
                seen += 1;
                if seen > MAX_INLINE {
                    return true;
                }
            }
            for &o in graph.operands(x) {
                if !matches!(graph.op(o), Op::Const(_) | Op::Numel(_)) {
                    self.stack.push(o);
                }
            }
        }
        false
    }
}

/// Inputs and parameters: external buffers, never computed.
fn is_leaf(op: &Op) -> bool {
    matches!(op, Op::Input { .. } | Op::Param { .. })
}

/// Constants, counts and reshapes cost nothing to recompute or alias.
fn is_free(op: &Op) -> bool {
    matches!(op, Op::Const(_) | Op::Numel(_) | Op::Reshape(_))
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Select)
}

/// Whether recomputing the op costs a function call.
fn is_expensive(op: &Op) -> bool {
    match op {
        Op::Unary(u) => u.is_transcendental(),
        Op::Binary(b) => *b == BinaryOp::Pow,
        _ => false,
    }
}

fn users(graph: &Graph, nodes: &[NodeId]) -> HashMap<NodeId, Vec<NodeId>> {
    let mut users: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in nodes {
        for &o in graph.operands(id) {
            users.entry(o).or_default().push(id);
        }
    }
    users
}

/// The storage rules of the module docs, before grouping.
fn must_store(
    graph: &Graph,
    id: NodeId,
    roots: &[NodeId],
    users: &HashMap<NodeId, Vec<NodeId>>,
    options: Options,
) -> bool {
    let op = graph.op(id);
    if is_leaf(op) || roots.contains(&id) {
        return true;
    }
    let used_by = |wanted: &dyn Fn(&Op) -> bool| {
        users
            .get(&id)
            .is_some_and(|us| us.iter().any(|&u| wanted(graph.op(u))))
    };
    // A reshape aliases its operand's buffer (through a chain of reshapes), which must exist.
    let reshaped = !matches!(op, Op::Reshape(_)) && used_by(&|u| matches!(u, Op::Reshape(_)));
    // Library calls read whole row-major buffers (a reshape reads its operand's buffer, which
    // the reshape rule stores).
    let read_by_call = !matches!(op, Op::Reshape(_)) && used_by(&Op::is_library_call);
    if !options.fuse {
        return !is_free(op) || reshaped || read_by_call;
    }
    if matches!(op, Op::MatMul | Op::Reduce(..)) || op.is_library_call() || read_by_call {
        return true;
    }
    // Matrix products read buffers (a transposed operand is read in place, with its strides
    // swapped, unless it is the right operand of several products: the GEMM packs a right
    // operand with strided columns on every call, so one transposed copy serves them all, as
    // an RNN's recurrent weight for every time step); values read at many points through a
    // broadcast or a transpose are computed once.
    let right_of_products = users.get(&id).map_or(0, |us| {
        us.iter()
            .filter(|&&u| matches!(graph.op(u), Op::MatMul) && graph.operands(u)[1] == id)
            .count()
    });
    let in_place = transposed_in_place(graph, id) && right_of_products < 2;
    let read_by_matmul = users.get(&id).is_some_and(|us| {
        us.iter()
            .any(|&u| matches!(graph.op(u), Op::MatMul) && !in_place)
    });
    reshaped
        || (!matches!(op, Op::Reshape(_)) && read_by_matmul)
        || (is_elementwise(op) && used_by(&|u| matches!(u, Op::Broadcast(_) | Op::Transpose(_))))
}

/// Whether `id` is a transpose a matrix product can read as an operand without a copy:
/// of a value that is in memory anyway (an input, a parameter, a product, a reduction, a
/// library call's result, or an elementwise value, which the transpose makes stored), or of a
/// reshape of one (a reshape is a view of its operand's buffer).
pub fn transposed_in_place(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.op(id), Op::Transpose(_))
        && graph.operands(id).first().is_some_and(|&x| {
            let base = reshape_base(graph, x);
            let op = graph.op(base);
            is_leaf(op)
                || is_elementwise(op)
                || op.is_library_call()
                || matches!(op, Op::MatMul | Op::Reduce(..))
        })
}

/// The first node under a chain of reshapes.
pub fn reshape_base(graph: &Graph, mut node: NodeId) -> NodeId {
    while matches!(graph.op(node), Op::Reshape(_)) {
        node = graph.operands(node)[0];
    }
    node
}

/// The stored values (and the leaves) that computing `id` from its operands reads, each with
/// whether it is read at the same point (through elementwise ops only) or elsewhere (through a
/// broadcast, transpose or reshape). A reduction's points are its operand's.
pub fn reads(graph: &Graph, id: NodeId, stored: &[bool]) -> Vec<(NodeId, bool)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let same_point = is_elementwise(graph.op(id)) || matches!(graph.op(id), Op::Reduce(..));
    let mut stack: Vec<(NodeId, bool)> = graph
        .operands(id)
        .iter()
        .map(|&o| (o, same_point))
        .collect();
    while let Some((x, same_point)) = stack.pop() {
        if !seen.insert((x, same_point)) {
            continue;
        }
        let op = graph.op(x);
        if matches!(op, Op::Reshape(_)) {
            // A reshape reads its operand's buffer elsewhere (it is never computed itself).
            stack.extend(graph.operands(x).iter().map(|&o| (o, false)));
            continue;
        }
        if stored[x.index()] || is_leaf(op) {
            out.push((x, same_point));
            continue;
        }
        let keeps = same_point && is_elementwise(op);
        stack.extend(graph.operands(x).iter().map(|&o| (o, keeps)));
    }
    out
}

/// Whether `id` reads the stored value `x` only at its own flat index: through elementwise ops
/// and reshapes (which keep the row-major order of the elements), never a broadcast or a
/// transpose. A large product's epilogue can then compute `id` over `id`'s own shape, reading
/// the product from memory where the GEMM left it (a transformer's `[B T, C]` projection read
/// as `[B, T, C]` by its residual add or GELU).
fn reads_in_order(graph: &Graph, id: NodeId, x: NodeId, stored: &[bool]) -> bool {
    if !is_elementwise(graph.op(id)) {
        return false;
    }
    let mut found = false;
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<(NodeId, bool)> = graph.operands(id).iter().map(|&o| (o, true)).collect();
    while let Some((y, in_order)) = stack.pop() {
        if !seen.insert((y, in_order)) {
            continue;
        }
        if y == x {
            if !in_order {
                return false;
            }
            found = true;
            continue;
        }
        let op = graph.op(y);
        if stored[y.index()] && !matches!(op, Op::Reshape(_)) || is_leaf(op) {
            continue;
        }
        let keeps = in_order && (is_elementwise(op) || matches!(op, Op::Reshape(_)));
        stack.extend(graph.operands(y).iter().map(|&o| (o, keeps)));
    }
    found
}

/// Whether the product `id` is large enough for the GEMM, whose epilogue is a loop over the
/// product in memory (the register tiles of a small one apply theirs in registers, at the
/// product's own points), as lowering decides it.
fn computed_by_gemm(graph: &Graph, id: NodeId) -> bool {
    let [a, b] = [0, 1].map(|i| graph.shape(graph.operands(id)[i]).concrete());
    match (a, b) {
        (Some(a), Some(b)) => Product::for_macs(a[0] * a[1] * b[1]) == Product::Gemm,
        _ => false,
    }
}

/// A group of one stored node (no fusion).
fn single(graph: &Graph, id: NodeId) -> Group {
    match graph.op(id) {
        Op::MatMul => Group {
            kind: GroupKind::MatMul,
            anchors: vec![id],
            members: vec![],
        },
        Op::Reduce(..) => Group {
            kind: GroupKind::Reduce,
            anchors: vec![id],
            members: vec![],
        },
        op if op.is_library_call() => Group {
            kind: GroupKind::Call,
            anchors: vec![id],
            members: vec![],
        },
        _ => Group {
            kind: GroupKind::Map,
            anchors: vec![],
            members: vec![id],
        },
    }
}

/// The shape a reduction iterates over: its operand's.
fn iteration_shape(graph: &Graph, id: NodeId) -> &Shape {
    match graph.op(id) {
        Op::Reduce(..) => graph.shape(graph.operands(id)[0]),
        _ => graph.shape(id),
    }
}

/// Greedy grouping in topological order (see the module docs).
fn group(
    graph: &Graph,
    nodes: &[NodeId],
    stored: &[bool],
    computed: &dyn Fn(NodeId) -> bool,
) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<NodeId, usize> = HashMap::new();
    // Sibling candidates by iteration shape, newest last; only the newest few are tried, so
    // grouping stays linear in the graph's size.
    let mut maps: HashMap<&Shape, Vec<usize>> = HashMap::new();
    let mut reductions: HashMap<(&Shape, &[usize]), Vec<usize>> = HashMap::new();
    for &id in nodes {
        let op = graph.op(id);
        if !computed(id) {
            continue;
        }
        let read = reads(graph, id, stored);
        // Whether `id` may join group `g`: everything it reads from other groups is computed
        // earlier, and what it reads from `g` itself is read at the same point (or, for a
        // reduction's later phases, already complete in memory).
        // A product's epilogue also takes values that read the product in element order
        // through a reshape, over their own shape, when the GEMM computes the product.
        let epilogue_in_order = |g: usize, groups: &[Group]| {
            let group = &groups[g];
            group.kind == GroupKind::MatMul
                && computed_by_gemm(graph, group.anchors[0])
                && reads_in_order(graph, id, group.anchors[0], stored)
        };
        // Members of a product's epilogue share one shape (they are one loop).
        let one_shape = |g: usize, groups: &[Group]| {
            groups[g].kind != GroupKind::MatMul
                || groups[g]
                    .members
                    .first()
                    .is_none_or(|&m| graph.shape(m) == graph.shape(id))
        };
        let fits = |g: usize, groups: &[Group]| {
            let same_phase = groups[g].kind != GroupKind::Reduce;
            one_shape(g, groups)
                && read.iter().all(|(x, same_point)| match group_of.get(x) {
                    Some(&h) if h == g => {
                        *same_point
                            || !same_phase
                            || (groups[g].anchors.first() == Some(x)
                                && epilogue_in_order(g, groups))
                    }
                    Some(&h) => h < g,
                    None => true,
                })
        };
        let target = match op {
            op if matches!(op, Op::MatMul) || op.is_library_call() => None,
            Op::Reduce(_, axes) => reductions
                .get(&(iteration_shape(graph, id), axes.as_slice()))
                .into_iter()
                .flat_map(|gs| gs.iter().rev().take(SIBLINGS_TRIED))
                .copied()
                // A sibling joins the first pass even after later phases have formed: it reads
                // nothing of the group, so no phase of it needs to come first.
                .find(|&g| {
                    fits(g, &groups) && read.iter().all(|(x, _)| group_of.get(x) != Some(&g))
                }),
            _ => {
                // An epilogue of an anchor it reads, else a sibling map of the same shape.
                let anchors = read.iter().filter_map(|(x, same_point)| {
                    let g = *group_of.get(x)?;
                    let group = &groups[g];
                    let ok = match group.kind {
                        GroupKind::MatMul => {
                            (*same_point && graph.shape(*x) == graph.shape(id))
                                || epilogue_in_order(g, &groups)
                        }
                        GroupKind::Reduce => true,
                        GroupKind::Map | GroupKind::Call => false,
                    };
                    ok.then_some(g)
                });
                let siblings = maps
                    .get(graph.shape(id))
                    .into_iter()
                    .flat_map(|gs| gs.iter().rev().take(SIBLINGS_TRIED))
                    .copied();
                anchors
                    .collect::<Vec<_>>()
                    .into_iter()
                    .chain(siblings)
                    .find(|&g| fits(g, &groups))
            }
        };
        let g = match target {
            Some(g) => {
                match op {
                    Op::Reduce(..) => groups[g].anchors.push(id),
                    _ => groups[g].members.push(id),
                }
                g
            }
            None => {
                groups.push(single(graph, id));
                let g = groups.len() - 1;
                match op {
                    Op::Reduce(_, axes) => reductions
                        .entry((iteration_shape(graph, id), axes.as_slice()))
                        .or_default()
                        .push(g),
                    op if matches!(op, Op::MatMul) || op.is_library_call() => {}
                    _ => maps.entry(graph.shape(id)).or_default().push(g),
                }
                g
            }
        };
        group_of.insert(id, g);
    }
    groups
}

/// How many of the newest sibling groups of the same shape a value may join.
const SIBLINGS_TRIED: usize = 4;

/// Inline transcendental values that more than one group would compute.
fn shared_expensive_values(graph: &Graph, groups: &[Group], stored: &[bool]) -> Vec<NodeId> {
    let mut computed_by: HashMap<NodeId, usize> = HashMap::new();
    let mut shared = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let mut stack: Vec<NodeId> = group
            .anchors
            .iter()
            .chain(&group.members)
            .flat_map(|&n| graph.operands(n).iter().copied())
            .collect();
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            if stored[x.index()] || !seen.insert(x) {
                continue;
            }
            if is_expensive(graph.op(x)) {
                match computed_by.insert(x, g) {
                    Some(other) if other != g && !shared.contains(&x) => shared.push(x),
                    _ => {}
                }
            }
            stack.extend(graph.operands(x));
        }
    }
    shared
}
