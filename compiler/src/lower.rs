//! Lowering: fused groups ([`crate::fusion`]) to kernels in the kernel IR ([`crate::kernel`])
//! and the buffers they use.
//!
//! Inputs and parameters live in *external* buffers, bound by name at run time; every stored
//! value gets a temporary, except a reshape, which aliases its operand's buffer. Each group of
//! [`crate::fusion`] becomes one kernel; inline values are lowered into the expressions of every
//! kernel that reads them, with every access an affine function of the loop variables
//! (broadcasts, transposes and reshapes are read in place).
//!
//! An assignment (`new value -> external buffer`, for parameter and optimizer-state updates) is
//! written *in place* by the kernel computing it when that is safe: every other kernel reading
//! the buffer's old value runs earlier, and the kernel itself reads it only at the element it
//! writes. Otherwise the value goes to a temporary and a final kernel copies it over, after
//! every other kernel, so no kernel ever reads a value already overwritten.
//!
//! Every stored value gets a temporary of its own here; [`crate::memory`] then lets temporaries
//! whose lifetimes do not overlap share buffers.
//!
//! **Architecture invariant:** no Cranelift types here; the plan is plain data that the code
//! generator turns into machine code.
//!
//! This file is long because lowering a group (index maps, inline expressions, collapsed loops)
//! and assembling the program (slots, in-place assignments, how each phase runs) share the slot
//! table and the group order.

use std::collections::HashMap;

use nabla_runtime::BufferSpec;

use crate::fusion::{self, Fusion, GroupKind};
use crate::ir::{Dim, Graph, NodeId, Op};
use crate::kernel::{
    Call, Expr, Kernel, Loop, Operand, Phase, Plan, Product, Reduction, Store, row_major,
};

/// Why a graph cannot be lowered.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("cannot compile: {0}")]
pub struct LowerError(pub String);

/// The kernels computing `outputs` and the `assignments` (each writes a node's value into the
/// external buffer of the given name at the end of the run), one per group of `fused`, and the
/// buffers they use, each temporary of its own (sharing them is [`crate::memory::plan`]'s).
/// How each product is computed and which loops split their rows over `threads` is decided
/// here too ([`decide`]), so that code generation only translates.
pub fn lower(
    graph: &Graph,
    fused: &Fusion,
    outputs: &[(String, NodeId)],
    assignments: &[(NodeId, String)],
    threads: usize,
) -> Result<Plan, LowerError> {
    let roots = roots(outputs, assignments);
    let nodes = graph.ancestors(&roots);
    for &id in &nodes {
        if graph.shape(id).concrete().is_none() {
            return Err(LowerError(format!(
                "shape {} is not bound",
                graph.shape(id)
            )));
        }
    }
    let mut plan = Plan {
        buffers: Vec::new(),
        kernels: Vec::new(),
        outputs: Vec::new(),
    };
    let mut slots = Slots::default();
    for &id in &nodes {
        let len = numel(graph, id);
        match graph.op(id) {
            Op::Input { name, .. } | Op::Param { name, .. } => {
                slots.external(&mut plan, name, len);
                slots.of.insert(id, slots.named[name]);
            }
            Op::Reshape(_) => {
                if let Some(&slot) = slots.of.get(&graph.operands(id)[0]) {
                    slots.of.insert(id, slot);
                }
            }
            _ if fused.stored[id.index()] => {
                slots.of.insert(id, temp(&mut plan, len));
            }
            _ => {}
        }
    }
    for (&(node, ref name), _) in assignments.iter().zip(0..) {
        slots.external(&mut plan, name, numel(graph, node));
    }
    let lower = Lowering {
        graph,
        fused,
        slots: &slots,
    };
    let mut kernels: Vec<Kernel> = fused
        .groups
        .iter()
        .map(|group| lower.group(group))
        .collect();
    let mut finale = Vec::new();
    for (name, node) in outputs {
        let slot = readable_temp(&mut plan, &mut finale, slots.of[node]);
        plan.outputs.push((name.clone(), slot));
    }
    let output_slots: Vec<usize> = plan.outputs.iter().map(|(_, s)| *s).collect();
    let group_of: HashMap<NodeId, usize> = fused
        .groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| {
            group
                .anchors
                .iter()
                .chain(&group.members)
                .map(move |&n| (n, g))
        })
        .collect();
    let mut last_read: HashMap<usize, usize> = HashMap::new();
    for (k, kernel) in kernels.iter().enumerate() {
        for phase in &kernel.phases {
            for (slot, _) in phase.loads() {
                last_read.insert(slot, k);
            }
        }
    }
    // In-place writes rename the written temporary to the external buffer everywhere at once:
    // only its own kernel and later ones use it.
    let mut renamed: HashMap<usize, usize> = HashMap::new();
    for (node, name) in assignments {
        let (src, dst) = (slots.of[node], slots.named[name]);
        if plan.buffers[dst].len != plan.buffers[src].len {
            return Err(LowerError(format!(
                "`{name}` holds {} elements but is assigned {}",
                plan.buffers[dst].len, plan.buffers[src].len
            )));
        }
        let writer = group_of.get(node).copied();
        let read_at_the_end = finale
            .iter()
            .any(|p| p.loads().iter().any(|(s, _)| *s == dst));
        let in_place = writer.is_some_and(|g| {
            !output_slots.contains(&src)
                && !read_at_the_end
                && last_read.get(&dst).is_none_or(|&k| k <= g)
                && in_place_is_safe(&kernels[g], src, dst)
        });
        if in_place {
            renamed.insert(src, dst);
        } else {
            finale.push(copy(src, dst, plan.buffers[src].len));
        }
    }
    for kernel in &mut kernels {
        kernel.remap_slots(&|s| renamed.get(&s).copied().unwrap_or(s));
    }
    if !finale.is_empty() {
        kernels.push(Kernel {
            title: "copy results and updates".into(),
            labels: Vec::new(),
            phases: finale,
        });
    }
    for phase in kernels.iter_mut().flat_map(|k| &mut k.phases) {
        decide(phase, threads);
    }
    plan.kernels = kernels;
    Ok(plan)
}

/// The values a program computes: its outputs, then its assigned values, in order.
pub fn roots(outputs: &[(String, NodeId)], assignments: &[(NodeId, String)]) -> Vec<NodeId> {
    outputs
        .iter()
        .map(|(_, n)| *n)
        .chain(assignments.iter().map(|(n, _)| *n))
        .collect()
}

/// Loops of at least this many elements split their rows over the threads: a few tens of
/// microseconds of memory traffic, against about a microsecond to fork and join.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Decides how `phase` runs on `threads` threads: a product by the GEMM or by register tiles,
/// and whether bands of rows split over the threads (a large map, the epilogue of a product
/// the GEMM computes, or a large reduction whose outputs all move with its outermost variable,
/// so that each output is accumulated by one band, in the order one thread would).
fn decide(phase: &mut Phase, threads: usize) {
    let big = |l: &Loop| {
        threads > 1
            && l.dims.len() >= 2
            && l.dims[0] >= 2
            && l.dims.iter().product::<usize>() >= PARALLEL_MIN_ELEMENTS
    };
    let splits = |l: &Loop, gemm: bool| {
        gemm && big(l)
            && !l.stores.is_empty()
            && l.stores
                .iter()
                .all(|s| s.coeffs.first().is_some_and(|&c| c != 0))
    };
    match phase {
        Phase::Map(l) => {
            if threads > 1 {
                fold_rows(l);
            }
            l.split_rows = splits(l, true);
            short_rows_outward(l, &mut []);
        }
        Phase::MatMul {
            m,
            k,
            n,
            method,
            epilogue,
            ..
        } => {
            *method = Product::for_macs(*m * *k * *n);
            epilogue.split_rows = splits(epilogue, *method == Product::Gemm);
        }
        Phase::Reduce { body, reductions } => {
            outermost_kept(body, reductions);
            body.split_rows = big(body) && reductions.iter().all(|r| r.coeffs[0] != 0);
            short_rows_outward(body, reductions);
        }
        Phase::Call { .. } => {}
    }
}

/// A large one-variable loop (an elementwise map whose accesses were all contiguous, merged
/// into one run) as rows of a power-of-two width from 64 to 4096 that divides it, so that bands
/// of rows can run on the threads: every offset `c i` becomes `c w r + c j`. Only the order of
/// independent elements changes.
fn fold_rows(l: &mut Loop) {
    let [n] = l.dims[..] else {
        return;
    };
    let Some(width) = (6..=12)
        .rev()
        .map(|p| 1usize << p)
        .find(|w| n % w == 0 && n / w >= 2)
    else {
        return;
    };
    if n < PARALLEL_MIN_ELEMENTS {
        return;
    }
    l.dims = vec![n / width, width];
    let fold = |coeffs: &mut Vec<i64>| *coeffs = vec![coeffs[0] * width as i64, coeffs[0]];
    for e in &mut l.exprs {
        if let Expr::Load { coeffs, .. } | Expr::Index { coeffs } = e {
            fold(coeffs);
        }
    }
    l.stores.iter_mut().for_each(|s| fold(&mut s.coeffs));
}

/// Makes the first loop variable that every reduction keeps (batch normalisation's channel in
/// `[batch, channel, pixels]`) the outermost, unless it is the innermost: each output's
/// contributions are then accumulated in the same order as before, and bands of that variable
/// can run on several threads. Done on any thread count, so that the bits do not depend on it.
fn outermost_kept(body: &mut Loop, reductions: &mut [Reduction]) {
    let last = body.dims.len().saturating_sub(1);
    let Some(j) = (1..last).find(|&j| reductions.iter().all(|r| r.coeffs[j] != 0)) else {
        return;
    };
    reorder(body, reductions, |items| to_front(items, j));
}

/// Rows shorter than a vector: fewer elements than an f32 vector's lanes.
const SHORT_ROW: usize = 4;

/// Swaps the two innermost loop variables of a loop over rows shorter than a vector (a softmax
/// over two classes, the bias gradient of a layer of two units) when there are at least a
/// vector's worth of rows: generated code vectorises the innermost variable, so its vectors
/// then run across rows instead of none running at all, and a reduction along the rows keeps
/// each row's partial result in its own lane. Each row's elements are still combined in
/// order; a loop whose rows split over threads keeps its order.
fn short_rows_outward(body: &mut Loop, reductions: &mut [Reduction]) {
    let n = body.dims.len();
    if n < 2 || body.split_rows || body.dims[n - 1] >= SHORT_ROW || body.dims[n - 2] < SHORT_ROW {
        return;
    }
    reorder(body, reductions, |items| items.swap(n - 2, n - 1));
}

/// Reorders the loop variables of `body` by `order`, applied alike to its extents and to every
/// access's coefficients.
fn reorder(body: &mut Loop, reductions: &mut [Reduction], order: impl Fn(&mut Vec<i64>)) {
    let mut dims: Vec<i64> = body.dims.iter().map(|&d| d as i64).collect();
    order(&mut dims);
    body.dims = dims.into_iter().map(|d| d as usize).collect();
    for e in &mut body.exprs {
        if let Expr::Load { coeffs, .. } | Expr::Index { coeffs } = e {
            order(coeffs);
        }
    }
    body.stores.iter_mut().for_each(|s| order(&mut s.coeffs));
    reductions.iter_mut().for_each(|r| order(&mut r.coeffs));
}

/// Moves element `j` to the front.
fn to_front<T>(items: &mut Vec<T>, j: usize) {
    let item = items.remove(j);
    items.insert(0, item);
}

fn numel(graph: &Graph, id: NodeId) -> usize {
    graph.shape(id).numel().expect("checked to be bound")
}

fn dims(graph: &Graph, id: NodeId) -> Vec<usize> {
    graph.shape(id).concrete().expect("checked to be bound")
}

/// Buffer slots: of every stored node, and of every external buffer by name.
#[derive(Default)]
struct Slots {
    of: HashMap<NodeId, usize>,
    named: HashMap<String, usize>,
}

impl Slots {
    fn external(&mut self, plan: &mut Plan, name: &str, len: usize) -> usize {
        *self.named.entry(name.to_string()).or_insert_with(|| {
            plan.buffers.push(BufferSpec {
                len,
                external: Some(name.to_string()),
                offset: None,
            });
            plan.buffers.len() - 1
        })
    }
}

fn temp(plan: &mut Plan, len: usize) -> usize {
    plan.buffers.push(BufferSpec {
        len,
        external: None,
        offset: None,
    });
    plan.buffers.len() - 1
}

/// A phase copying `len` elements from `src` to `dst`.
fn copy(src: usize, dst: usize, len: usize) -> Phase {
    Phase::Map(Loop {
        dims: vec![len],
        exprs: vec![Expr::Load {
            slot: src,
            coeffs: vec![1],
        }],
        split_rows: false,
        stores: vec![Store {
            value: 0,
            slot: dst,
            coeffs: vec![1],
        }],
    })
}

/// A temporary holding the value of `slot` (a copy when `slot` is external), so that results
/// survive later writes to external buffers and can be read after the run.
fn readable_temp(plan: &mut Plan, finale: &mut Vec<Phase>, slot: usize) -> usize {
    if plan.buffers[slot].external.is_none() {
        return slot;
    }
    let len = plan.buffers[slot].len;
    let copy_slot = temp(plan, len);
    finale.push(copy(slot, copy_slot, len));
    copy_slot
}

/// Whether `kernel`, which stores a value in `src`, may store it directly into `dst` (that no
/// later kernel reads `dst`'s old value is the caller's check): it reads `dst` only at the
/// element being written, in the phase that writes it or earlier.
fn in_place_is_safe(kernel: &Kernel, src: usize, dst: usize) -> bool {
    let phases = &kernel.phases;
    let Some(write_phase) = phases
        .iter()
        .position(|p| p.body().stores.iter().any(|s| s.slot == src))
    else {
        return false;
    };
    let store = phases[write_phase]
        .body()
        .stores
        .iter()
        .find(|s| s.slot == src)
        .expect("found above");
    phases.iter().enumerate().all(|(i, p)| {
        p.loads().iter().all(|(s, coeffs)| {
            *s != dst || i < write_phase || (i == write_phase && *coeffs == store.coeffs)
        })
    })
}

/// How a node's index relates to the loop variables: one row of coefficients per dimension of
/// the node (`index[d] = Σ rows[d][k] * i_k`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct IndexMap(Vec<Vec<i64>>);

impl IndexMap {
    fn identity(rank: usize) -> IndexMap {
        IndexMap(
            (0..rank)
                .map(|d| (0..rank).map(|k| i64::from(d == k)).collect())
                .collect(),
        )
    }

    /// Offset coefficients of a row-major buffer of `shape` read at this index.
    fn offset(&self, shape: &[usize], loop_vars: usize) -> Vec<i64> {
        let strides = row_major(shape);
        (0..loop_vars)
            .map(|k| self.0.iter().zip(&strides).map(|(row, s)| row[k] * s).sum())
            .collect()
    }
}

/// Lowers groups to kernels.
struct Lowering<'a> {
    graph: &'a Graph,
    fused: &'a Fusion,
    slots: &'a Slots,
}

/// Expressions of one phase under construction.
struct PhaseBuilder<'a> {
    exprs: Vec<Expr>,
    memo: HashMap<(NodeId, IndexMap), usize>,
    /// Values computed in this phase (read at the same point, they are expressions, not loads).
    here: &'a [NodeId],
    /// The matrix product whose value is [`Expr::Product`], if any.
    product: Option<NodeId>,
    loop_vars: usize,
}

impl Lowering<'_> {
    fn group(&self, group: &fusion::Group) -> Kernel {
        let g = self.graph;
        let mut phases = Vec::new();
        match group.kind {
            GroupKind::Map => phases.push(self.map_phase(&group.members, None)),
            GroupKind::MatMul => {
                let product = group.anchors[0];
                let [a, b] = [0, 1].map(|i| g.operands(product)[i]);
                let (a_dims, b_dims) = (dims(g, a), dims(g, b));
                // A row-major operand, or the transpose of one read with swapped strides.
                let operand = |node: NodeId, cols: usize| match self.slots.of.get(&node) {
                    Some(&slot) => Operand {
                        slot,
                        row: cols as i64,
                        col: 1,
                    },
                    None => {
                        let inner = g.operands(node)[0];
                        Operand {
                            slot: self.slots.of[&inner],
                            row: 1,
                            col: dims(g, inner)[1] as i64,
                        }
                    }
                };
                let mut epilogue = match self.map_phase(&group.members, Some(product)) {
                    Phase::Map(l) => l,
                    _ => unreachable!("map_phase builds maps"),
                };
                // Over the members' shape: the product's, or a reshape of it that keeps the
                // elements' order (fusion's `reads_in_order`).
                if group.members.is_empty() {
                    epilogue.dims = dims(g, product);
                }
                phases.push(Phase::MatMul {
                    m: a_dims[0],
                    k: a_dims[1],
                    n: b_dims[1],
                    a: operand(a, a_dims[1]),
                    b: operand(b, b_dims[1]),
                    out: self.slots.of[&product],
                    method: Product::Tiles,
                    epilogue,
                });
            }
            GroupKind::Call => {
                let node = group.anchors[0];
                let operands = g.operands(node);
                let (call, args) = call_of(g, node);
                phases.push(Phase::Call {
                    call,
                    args,
                    inputs: operands.iter().map(|o| self.slots.of[o]).collect(),
                    output: self.slots.of[&node],
                });
            }
            GroupKind::Reduce => {
                phases.push(self.reduce_phase(&group.anchors));
                // Later phases: members of one shape reading each other at the same point share
                // a loop.
                let mut start = 0;
                for end in 1..=group.members.len() {
                    let split = end == group.members.len() || {
                        let next = group.members[end];
                        let current = &group.members[start..end];
                        g.shape(next) != g.shape(current[0])
                            || fusion::reads(g, next, &self.fused.stored)
                                .iter()
                                .any(|(x, same)| current.contains(x) && !same)
                    };
                    if split {
                        phases.push(self.map_phase(&group.members[start..end], None));
                        start = end;
                    }
                }
            }
        }
        Kernel {
            title: fusion::title(g, group, self.fused.ops(g, group).len()),
            labels: fusion::labels(g, group),
            phases: phases.into_iter().map(collapse).collect(),
        }
    }

    /// A loop over the members' shape storing each of them.
    fn map_phase(&self, members: &[NodeId], product: Option<NodeId>) -> Phase {
        let shape = match (members.first(), product) {
            (Some(&m), _) => dims(self.graph, m),
            (None, Some(p)) => dims(self.graph, p),
            (None, None) => unreachable!("a map has members"),
        };
        let mut b = PhaseBuilder {
            exprs: Vec::new(),
            memo: HashMap::new(),
            here: members,
            product,
            loop_vars: shape.len(),
        };
        let identity = IndexMap::identity(shape.len());
        let mut stores = Vec::new();
        for &m in members {
            let value = self.define(&mut b, m, &identity);
            if self.fused.stored[m.index()] {
                stores.push(Store {
                    value,
                    slot: self.slots.of[&m],
                    coeffs: row_major(&shape),
                });
            }
        }
        Phase::Map(Loop {
            dims: shape,
            exprs: b.exprs,
            stores,
            split_rows: false,
        })
    }

    /// Sibling reductions over their common operand shape.
    fn reduce_phase(&self, anchors: &[NodeId]) -> Phase {
        let g = self.graph;
        let shape = dims(g, g.operands(anchors[0])[0]);
        let mut b = PhaseBuilder {
            exprs: Vec::new(),
            memo: HashMap::new(),
            here: &[],
            product: None,
            loop_vars: shape.len(),
        };
        let identity = IndexMap::identity(shape.len());
        let reductions = anchors
            .iter()
            .map(|&r| {
                let Op::Reduce(op, axes) = g.op(r) else {
                    unreachable!("anchors of a reduce group are reductions")
                };
                let value = self.value(&mut b, g.operands(r)[0], &identity);
                let out = row_major(&dims(g, r));
                let coeffs = out
                    .iter()
                    .enumerate()
                    .map(|(d, &s)| if axes.contains(&d) { 0 } else { s })
                    .collect();
                Reduction {
                    op: *op,
                    value,
                    slot: self.slots.of[&r],
                    coeffs,
                    len: numel(g, r),
                }
            })
            .collect();
        Phase::Reduce {
            body: Loop {
                dims: shape,
                exprs: b.exprs,
                stores: Vec::new(),
                split_rows: false,
            },
            reductions,
        }
    }

    /// The expression of `node` at `index`: a load when it is in memory (and not computed in
    /// this phase), else its definition.
    fn value(&self, b: &mut PhaseBuilder, node: NodeId, index: &IndexMap) -> usize {
        let same_point = *index == IndexMap::identity(b.loop_vars)
            && self.graph.shape(node).rank() == b.loop_vars;
        if b.product == Some(node) && same_point {
            return push(b, node, index, Expr::Product);
        }
        if b.here.contains(&node) && same_point {
            return self.define(b, node, index);
        }
        if let Some(&slot) = self.slots.of.get(&node) {
            let shape = dims(self.graph, node);
            let coeffs = index.offset(&shape, b.loop_vars);
            return push(b, node, index, Expr::Load { slot, coeffs });
        }
        self.define(b, node, index)
    }

    /// The expression computing `node` at `index` from its operands.
    fn define(&self, b: &mut PhaseBuilder, node: NodeId, index: &IndexMap) -> usize {
        if let Some(&e) = b.memo.get(&(node, index.clone())) {
            return e;
        }
        let g = self.graph;
        let operands = g.operands(node);
        let expr = match g.op(node) {
            Op::Const(c) => Expr::Const(c.get()),
            Op::Numel(s) => Expr::Const(s.numel().expect("bound") as f64),
            Op::Iota { axis, .. } => Expr::Index {
                coeffs: index.0[*axis].clone(),
            },
            Op::Unary(u) => Expr::Unary(*u, self.value(b, operands[0], index)),
            Op::Binary(op) => {
                let x = self.value(b, operands[0], index);
                let y = self.value(b, operands[1], index);
                Expr::Binary(*op, x, y)
            }
            Op::Select => {
                let c = self.value(b, operands[0], index);
                let x = self.value(b, operands[1], index);
                let y = self.value(b, operands[2], index);
                Expr::Select(c, x, y)
            }
            Op::Broadcast(target) => {
                let from = g.shape(operands[0]);
                let lead = target.rank() - from.rank();
                let zero = vec![0; b.loop_vars];
                let rows = (0..from.rank())
                    .map(|d| match (&from.0[d], &target.0[d + lead]) {
                        (Dim::Known(1), t) if t != &Dim::Known(1) => zero.clone(),
                        _ => index.0[d + lead].clone(),
                    })
                    .collect();
                return self.value(b, operands[0], &IndexMap(rows));
            }
            Op::Transpose(perm) => {
                let mut rows = vec![Vec::new(); perm.len()];
                for (d, &p) in perm.iter().enumerate() {
                    rows[p] = index.0[d].clone();
                }
                return self.value(b, operands[0], &IndexMap(rows));
            }
            Op::Reshape(_) => {
                // A reshape of something in memory reads its buffer in the new shape; of a
                // scalar constant, the constant.
                let base = fusion::reshape_base(g, node);
                return match self.slots.of.get(&base) {
                    Some(&slot) => {
                        let coeffs = index.offset(&dims(g, node), b.loop_vars);
                        push(b, node, index, Expr::Load { slot, coeffs })
                    }
                    None => self.value(
                        b,
                        base,
                        &IndexMap(vec![vec![0; b.loop_vars]; g.shape(base).rank()]),
                    ),
                };
            }
            // Fed values, products, reductions and library calls are stored by fusion.
            op => unreachable!("{} is in memory before it is read", op.name()),
        };
        push(b, node, index, expr)
    }
}

/// The library routine computing `node` and its sizes (see [`Call`]).
fn call_of(g: &Graph, node: NodeId) -> (Call, Vec<usize>) {
    let operands = g.operands(node);
    let of = |i: usize| dims(g, operands[i]);
    // Window routines: `[images, channels, output channels]`, from the images and the weight.
    let windowed =
        |call: Call, w: &crate::ir::Window, sizes: [usize; 3]| (call, Call::window_args(w, sizes));
    match g.op(node) {
        Op::Windows(w) => windowed(Call::Windows, w, [of(0)[0], of(0)[1], 0]),
        Op::MaxPoolGather(w) => windowed(Call::MaxPoolGather, w, [of(0)[0], of(0)[1], 0]),
        Op::MaxPoolScatter(w) => windowed(Call::MaxPoolScatter, w, [of(0)[0], of(0)[1], 0]),
        Op::Unwindows(w) => {
            let y = dims(g, node);
            windowed(Call::Unwindows, w, [y[0], y[1], 0])
        }
        Op::Conv(w) => windowed(Call::Conv, w, [of(0)[0], of(0)[1], of(1)[0]]),
        Op::ConvInputGrad(w) => {
            let x = dims(g, node);
            windowed(Call::ConvInputGrad, w, [x[0], x[1], of(1)[0]])
        }
        Op::ConvWeightGrad(w) => {
            let k = dims(g, node);
            windowed(Call::ConvWeightGrad, w, [of(0)[0], of(0)[1], k[0]])
        }
        &Op::Slice { axis, start, len } => {
            let [outer, size, inner] = crate::ir::around(&of(0), axis);
            (Call::Slice, vec![outer, size, inner, start, len])
        }
        &Op::Concat { axis, .. } => {
            let [outer, _, inner] = crate::ir::around(&dims(g, node), axis);
            let lens = (0..operands.len()).map(|i| of(i)[axis]);
            let head = [outer, inner, operands.len()];
            (Call::Concat, head.into_iter().chain(lens).collect())
        }
        Op::Gather => {
            let table = of(0);
            (
                Call::Gather,
                vec![numel(g, operands[1]), table[1], table[0]],
            )
        }
        Op::BatchMatMul => {
            let (a, b) = (of(0), of(1));
            (Call::BatchMatMul, vec![a[0], a[1], a[2], b[2]])
        }
        op @ (Op::Attention { .. } | Op::AttentionGrad { .. }) => {
            let (causal, scale, heads) = op.attention().expect("an attention op");
            let call = if matches!(g.op(node), Op::Attention { .. }) {
                Call::Attention
            } else {
                Call::AttentionGrad
            };
            let (q, k, v) = if heads == 0 {
                (of(0), of(1), of(2))
            } else {
                // One example of `qkv [T, 3 heads D]` is a product per head of `T x D` each.
                let packed = of(0);
                let head = vec![packed[0], packed[1], packed[2] / (3 * heads)];
                (head.clone(), head.clone(), head)
            };
            let bits = scale.get().to_bits() as usize;
            let causal = usize::from(causal);
            (
                call,
                vec![q[0], q[1], k[1], q[2], v[2], causal, bits, heads],
            )
        }
        &Op::ScatterAdd { rows } => {
            let width = dims(g, node)[1];
            (Call::ScatterAdd, vec![numel(g, operands[0]), width, rows])
        }
        other => unreachable!("a call group anchors {}", other.name()),
    }
}

fn push(b: &mut PhaseBuilder, node: NodeId, index: &IndexMap, expr: Expr) -> usize {
    if let Some(&e) = b.memo.get(&(node, index.clone())) {
        return e;
    }
    b.exprs.push(expr);
    let e = b.exprs.len() - 1;
    b.memo.insert((node, index.clone()), e);
    e
}

/// Merges adjacent loop dimensions that every access walks contiguously (`c[d] = c[d+1] *
/// dims[d+1]` for every load, store, index and reduction), so an elementwise kernel over
/// `[128, 512]` is one loop of 65,536 that vectorises, and size-1 dimensions disappear.
fn collapse(mut phase: Phase) -> Phase {
    match &mut phase {
        Phase::Map(l) => merge_contiguous(l, 0),
        // An epilogue over a reshape of its product (`[B, T, C]` for `[B T, C]`) merges its
        // leading variables back where every access allows, keeping the columns innermost.
        Phase::MatMul { epilogue, .. } => merge_contiguous(epilogue, 1),
        Phase::Reduce { body, reductions } => {
            let mut d = 0;
            while d + 1 < body.dims.len() {
                let all = access_coeffs(body).all(|c| mergeable(c, &body.dims, d))
                    && reductions
                        .iter()
                        .all(|r| mergeable(&r.coeffs, &body.dims, d));
                if all {
                    let mut extra: Vec<&mut Vec<i64>> =
                        reductions.iter_mut().map(|r| &mut r.coeffs).collect();
                    merge_at(body, &mut extra, d);
                } else {
                    d += 1;
                }
            }
        }
        Phase::Call { .. } => {}
    }
    phase
}

/// Merges the adjacent variables of `l` that every access walks contiguously, leaving its
/// last `kept` variables as they are.
fn merge_contiguous(l: &mut Loop, kept: usize) {
    let mut d = 0;
    while d + 1 + kept < l.dims.len() {
        if access_coeffs(l).all(|c| mergeable(c, &l.dims, d)) {
            merge_at(l, &mut [], d);
        } else {
            d += 1;
        }
    }
}

/// Whether variables `d` and `d + 1` are walked as one by an access of coefficients `coeffs`.
fn mergeable(coeffs: &[i64], dims: &[usize], d: usize) -> bool {
    coeffs[d] == coeffs[d + 1] * dims[d + 1] as i64
}

/// Merges variable `d + 1` into `d` in `l` and in the `extra` coefficients (reductions').
fn merge_at(l: &mut Loop, extra: &mut [&mut Vec<i64>], d: usize) {
    let inner = l.dims.remove(d + 1);
    l.dims[d] *= inner;
    let fix = |c: &mut Vec<i64>| {
        c.remove(d);
    };
    for e in &mut l.exprs {
        if let Expr::Load { coeffs, .. } | Expr::Index { coeffs } = e {
            fix(coeffs);
        }
    }
    l.stores.iter_mut().for_each(|s| fix(&mut s.coeffs));
    extra.iter_mut().for_each(|c| fix(c));
}

/// Every coefficient vector of a loop's loads, indices and stores.
fn access_coeffs(l: &Loop) -> impl Iterator<Item = &[i64]> {
    l.exprs
        .iter()
        .filter_map(|e| match e {
            Expr::Load { coeffs, .. } | Expr::Index { coeffs } => Some(coeffs.as_slice()),
            _ => None,
        })
        .chain(l.stores.iter().map(|s| s.coeffs.as_slice()))
}
