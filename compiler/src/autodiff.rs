//! Symbolic reverse-mode differentiation as a graph-to-graph transform.
//!
//! [`differentiate`] walks the graph backwards from a scalar loss and adds, *to the same graph*,
//! nodes that compute the gradient of the loss with respect to each requested node. Each
//! primitive has exactly one rule in [`vjp`] (its vector-Jacobian product); fan-out is summed in
//! exactly one place ([`accumulate`]), and gradients are reduced back over broadcast axes in
//! exactly one place ([`unbroadcast`], the rule of [`Op::Broadcast`]).
//!
//! Slices are the one exception to "one rule per primitive": the gradients of all the slices
//! of one operand along one axis are gathered and joined by a single concatenation, zeros in
//! the gaps ([`join_slices`]). Summing one zero-padded gradient per slice would cost time
//! quadratic in the number of slices, and an unrolled recurrence slices every time step.
//!
//! **Architecture invariant:** autodiff emits primitives only and never simplifies; making the
//! result small is the e-graph's job.
//!
//! Choices at non-differentiable points, matching PyTorch:
//! - `relu` lowers to `select(x > 0, x, 0)`, so its derivative at 0 is 0;
//! - `abs` has derivative `sign(x)`, 0 at 0;
//! - binary `max`/`min` split the gradient evenly between equal operands;
//! - `reduce_max` splits the gradient evenly between all maximal elements;
//! - comparisons, `sign`, `iota` and `numel` have zero derivative everywhere, and
//!   `stop_gradient` passes none by definition;
//! - masks select rather than multiply (`select(a > b, g, 0)`, not `g * (a > b)`), so a branch
//!   that is not taken gets an exact zero even where the incoming gradient is infinite.

use std::collections::HashMap;

use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp, Shape, ShapeError, UnaryOp};

/// Why differentiation failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AutodiffError {
    /// Reverse mode needs a scalar to start from.
    #[error("the loss must be a scalar, but it has shape {0}")]
    NonScalarLoss(Shape),
    /// A rule built an ill-shaped node; a bug in a rule, reported rather than hidden.
    #[error("internal error in a gradient rule: {0}")]
    Shape(#[from] ShapeError),
}

/// The signature of a gradient rule table; [`vjp`] is nabla's.
pub type VjpRule =
    fn(&mut Graph, NodeId, NodeId, &[bool]) -> Result<Vec<Option<NodeId>>, ShapeError>;

/// Adds the gradient of `loss` with respect to each node of `wrt` to the graph and returns the
/// gradient nodes in the same order. A node the loss does not depend on gets zeros.
pub fn differentiate(
    graph: &mut Graph,
    loss: NodeId,
    wrt: &[NodeId],
) -> Result<Vec<NodeId>, AutodiffError> {
    differentiate_with(graph, loss, wrt, vjp)
}

/// [`differentiate`] with another rule table, for custom gradients (and for showing that the
/// gradient checker catches a wrong rule).
pub fn differentiate_with(
    graph: &mut Graph,
    loss: NodeId,
    wrt: &[NodeId],
    rules: VjpRule,
) -> Result<Vec<NodeId>, AutodiffError> {
    let grads = backward(graph, loss, wrt, rules)?;
    in_order(graph, &grads, wrt)
}

/// [`differentiate`], also labelling the gradient of each named node that the loss depends on
/// through `wrt` (`grad h1` for the binding `h1`), in the order given: the first name of a node
/// sticks. Dumps, kernel titles, the profiler and the inspector say with it what a gradient is
/// the gradient of. A gradient that is a shared constant (the loss's own, 1) keeps no name.
pub fn differentiate_named(
    graph: &mut Graph,
    loss: NodeId,
    wrt: &[NodeId],
    names: &[(&str, NodeId)],
) -> Result<Vec<NodeId>, AutodiffError> {
    let grads = backward(graph, loss, wrt, vjp)?;
    for (name, node) in names {
        if let Some(&grad) = grads.get(node)
            && !matches!(graph.op(grad), Op::Const(_))
        {
            graph.label(grad, &format!("grad {name}"));
        }
    }
    in_order(graph, &grads, wrt)
}

/// The gradients of `wrt` from the map [`backward`] makes; zeros where the loss does not
/// depend on a node.
fn in_order(
    graph: &mut Graph,
    grads: &HashMap<NodeId, NodeId>,
    wrt: &[NodeId],
) -> Result<Vec<NodeId>, AutodiffError> {
    wrt.iter()
        .map(|&w| {
            let grad = match grads.get(&w) {
                Some(&g) => g,
                None => graph.full(0.0, &graph.shape(w).clone())?,
            };
            Ok(grad)
        })
        .collect()
}

/// Adds the gradient nodes and returns, for every node on a path from `wrt` to the loss, its
/// gradient.
fn backward(
    graph: &mut Graph,
    loss: NodeId,
    wrt: &[NodeId],
    rules: VjpRule,
) -> Result<HashMap<NodeId, NodeId>, AutodiffError> {
    if graph.shape(loss).rank() != 0 {
        return Err(AutodiffError::NonScalarLoss(graph.shape(loss).clone()));
    }
    let forward = graph.ancestors(&[loss]);
    let mut needs_grad: HashMap<NodeId, bool> = HashMap::new();
    for &id in &forward {
        let needed = wrt.contains(&id) || graph.operands(id).iter().any(|o| needs_grad[o]);
        needs_grad.insert(id, needed);
    }

    let mut grads: HashMap<NodeId, NodeId> = HashMap::new();
    let mut slices: HashMap<NodeId, Vec<SliceGrad>> = HashMap::new();
    grads.insert(loss, graph.constant(1.0));
    for &id in forward.iter().rev() {
        // Every reader of `id` comes later in the forward order, so its slices are all known.
        if let Some(parts) = slices.remove(&id) {
            for joined in join_slices(graph, id, parts)? {
                accumulate(graph, &mut grads, id, joined)?;
            }
        }
        let Some(&grad) = grads.get(&id) else {
            continue;
        };
        let operands = graph.operands(id).to_vec();
        let wants: Vec<bool> = operands.iter().map(|o| needs_grad[o]).collect();
        if !wants.iter().any(|&w| w) {
            continue;
        }
        if let &Op::Slice { axis, start, len } = graph.op(id) {
            slices.entry(operands[0]).or_default().push(SliceGrad {
                axis,
                start,
                len,
                grad,
            });
            continue;
        }
        let contributions = rules(graph, id, grad, &wants)?;
        for ((operand, contribution), wanted) in operands.into_iter().zip(contributions).zip(wants)
        {
            if let (Some(c), true) = (contribution, wanted) {
                accumulate(graph, &mut grads, operand, c)?;
            }
        }
    }

    Ok(grads)
}

/// The gradient of one slice of a node.
struct SliceGrad {
    axis: usize,
    start: usize,
    len: usize,
    grad: NodeId,
}

/// The gradients of slices of `node`, as few full-size contributions as possible: slices
/// along one axis that do not overlap form one concatenation, zeros filling the gaps.
fn join_slices(
    graph: &mut Graph,
    node: NodeId,
    mut parts: Vec<SliceGrad>,
) -> Result<Vec<NodeId>, ShapeError> {
    parts.sort_by_key(|p| (p.axis, p.start));
    // Families of disjoint slices along one axis, each sorted by start.
    let mut families: Vec<Vec<SliceGrad>> = Vec::new();
    for part in parts {
        let fits = |f: &Vec<SliceGrad>| {
            f.last()
                .is_some_and(|l| l.axis == part.axis && l.start + l.len <= part.start)
        };
        match families.iter_mut().find(|f| fits(f)) {
            Some(family) => family.push(part),
            None => families.push(vec![part]),
        }
    }
    let shape = graph.shape(node).clone();
    let mut joined = Vec::new();
    for family in families {
        let axis = family[0].axis;
        let size = shape.0[axis].known().unwrap_or(0);
        let zeros = |graph: &mut Graph, len: usize| {
            let mut dims = shape.0.clone();
            dims[axis] = crate::ir::Dim::Known(len);
            graph.full(0.0, &Shape(dims))
        };
        let mut pieces = Vec::new();
        let mut at = 0;
        for part in &family {
            if part.start > at {
                pieces.push(zeros(graph, part.start - at)?);
            }
            pieces.push(part.grad);
            at = part.start + part.len;
        }
        if at < size {
            pieces.push(zeros(graph, size - at)?);
        }
        joined.push(graph.concat(&pieces, axis)?);
    }
    Ok(joined)
}

/// Sums a gradient contribution into a node's running gradient (fan-out).
fn accumulate(
    graph: &mut Graph,
    grads: &mut HashMap<NodeId, NodeId>,
    node: NodeId,
    contribution: NodeId,
) -> Result<(), ShapeError> {
    let total = match grads.get(&node) {
        Some(&previous) => graph.add(previous, contribution)?,
        None => contribution,
    };
    grads.insert(node, total);
    Ok(())
}

/// The vector-Jacobian product of one node: given the gradient `g` of the loss with respect to
/// the node's output, the gradient with respect to each operand (`None` where it is zero or not
/// wanted).
pub fn vjp(
    graph: &mut Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, ShapeError> {
    let x = graph.operands(node).to_vec();
    let out = node;
    let op = graph.op(node).clone();
    let one = graph.constant(1.0);
    let grads = match op {
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Iota { .. } | Op::Numel(_) => {
            vec![]
        }
        Op::Unary(u) => vec![match u {
            // d(-x) = -1
            UnaryOp::Neg => Some(graph.unary(UnaryOp::Neg, g)?),
            // d(1/x) = -1/x^2 = -out^2
            UnaryOp::Recip => {
                let out_sq = graph.mul(out, out)?;
                let t = graph.mul(g, out_sq)?;
                Some(graph.unary(UnaryOp::Neg, t)?)
            }
            // d(e^x) = e^x = out
            UnaryOp::Exp => Some(graph.mul(g, out)?),
            // d(ln x) = 1/x
            UnaryOp::Log => Some(graph.div(g, x[0])?),
            // d(sqrt x) = 1 / (2 sqrt x) = 1 / (2 out)
            UnaryOp::Sqrt => {
                let two_out = graph.scale(out, 2.0)?;
                Some(graph.div(g, two_out)?)
            }
            // d|x| = sign(x), 0 at 0
            UnaryOp::Abs => {
                let sign = graph.unary(UnaryOp::Sign, x[0])?;
                Some(graph.mul(g, sign)?)
            }
            // d sign(x) = 0
            UnaryOp::Sign => None,
            // no gradient flows through, by definition
            UnaryOp::StopGradient => None,
            // d sin x = cos x
            UnaryOp::Sin => {
                let cos = graph.unary(UnaryOp::Cos, x[0])?;
                Some(graph.mul(g, cos)?)
            }
            // d cos x = -sin x
            UnaryOp::Cos => {
                let sin = graph.unary(UnaryOp::Sin, x[0])?;
                let t = graph.mul(g, sin)?;
                Some(graph.unary(UnaryOp::Neg, t)?)
            }
            // d tan x = 1 + tan(x)^2 = 1 + out^2
            UnaryOp::Tan => {
                let out_sq = graph.mul(out, out)?;
                let d = graph.add(one, out_sq)?;
                Some(graph.mul(g, d)?)
            }
            // d sinh x = cosh x
            UnaryOp::Sinh => {
                let cosh = graph.unary(UnaryOp::Cosh, x[0])?;
                Some(graph.mul(g, cosh)?)
            }
            // d cosh x = sinh x
            UnaryOp::Cosh => {
                let sinh = graph.unary(UnaryOp::Sinh, x[0])?;
                Some(graph.mul(g, sinh)?)
            }
            // d atan x = 1 / (1 + x^2)
            UnaryOp::Atan => {
                let sq = graph.mul(x[0], x[0])?;
                let d = graph.add(one, sq)?;
                Some(graph.div(g, d)?)
            }
            // d erf x = 2/sqrt(pi) e^(-x^2)
            UnaryOp::Erf => {
                let sq = graph.mul(x[0], x[0])?;
                let neg = graph.unary(UnaryOp::Neg, sq)?;
                let e = graph.unary(UnaryOp::Exp, neg)?;
                let d = graph.scale(e, std::f64::consts::FRAC_2_SQRT_PI)?;
                Some(graph.mul(g, d)?)
            }
            // d gelu x = Φ(x) + x φ(x), one op the kernel library computes in its widest
            // registers (PyTorch's `GeluBackward`)
            UnaryOp::Gelu => {
                let d = graph.unary(UnaryOp::GeluDerivative, x[0])?;
                Some(graph.mul(g, d)?)
            }
            // d (Φ(x) + x φ(x)) = 2 φ(x) + x φ'(x) = φ(x) (2 - x^2)
            UnaryOp::GeluDerivative => {
                let sq = graph.mul(x[0], x[0])?;
                let exponent = graph.scale(sq, -0.5)?;
                let e = graph.unary(UnaryOp::Exp, exponent)?;
                let density = graph.scale(e, 1.0 / (2.0 * std::f64::consts::PI).sqrt())?;
                let two = graph.constant(2.0);
                let factor = graph.sub(two, sq)?;
                let d = graph.mul(density, factor)?;
                Some(graph.mul(g, d)?)
            }
            // d tanh(x) = 1 - tanh(x)^2 = 1 - out^2
            UnaryOp::Tanh => {
                let out_sq = graph.mul(out, out)?;
                let d = graph.sub(one, out_sq)?;
                Some(graph.mul(g, d)?)
            }
            // d sigmoid(x) = sigmoid(x) (1 - sigmoid(x)) = out (1 - out)
            UnaryOp::Sigmoid => {
                let rest = graph.sub(one, out)?;
                let d = graph.mul(out, rest)?;
                Some(graph.mul(g, d)?)
            }
        }],
        Op::Binary(b) => {
            let (a, bb) = (x[0], x[1]);
            match b {
                // d(a + b) = (1, 1)
                BinaryOp::Add => vec![Some(g), Some(g)],
                // d(a - b) = (1, -1)
                BinaryOp::Sub => vec![Some(g), Some(graph.unary(UnaryOp::Neg, g)?)],
                // d(a b) = (b, a)
                BinaryOp::Mul => vec![Some(graph.mul(g, bb)?), Some(graph.mul(g, a)?)],
                // d(a / b) = (1 / b, -a / b^2 = -out / b)
                BinaryOp::Div => {
                    let ga = graph.div(g, bb)?;
                    let gb = if wants[1] {
                        let t = graph.mul(ga, out)?;
                        Some(graph.unary(UnaryOp::Neg, t)?)
                    } else {
                        None
                    };
                    vec![Some(ga), gb]
                }
                // d(a^b) = (b a^(b-1), a^b ln a = out ln a)
                BinaryOp::Pow => {
                    let ga = if wants[0] {
                        let b_minus_1 = graph.sub(bb, one)?;
                        let p = graph.binary(BinaryOp::Pow, a, b_minus_1)?;
                        let d = graph.mul(bb, p)?;
                        Some(graph.mul(g, d)?)
                    } else {
                        None
                    };
                    let gb = if wants[1] {
                        let ln_a = graph.unary(UnaryOp::Log, a)?;
                        let d = graph.mul(out, ln_a)?;
                        Some(graph.mul(g, d)?)
                    } else {
                        None
                    };
                    vec![ga, gb]
                }
                // d max(a, b) = (a > b, a < b), halves where a == b; min mirrors it.
                BinaryOp::Max | BinaryOp::Min => {
                    let (win_a, win_b) = match b {
                        BinaryOp::Max => (BinaryOp::Gt, BinaryOp::Lt),
                        _ => (BinaryOp::Lt, BinaryOp::Gt),
                    };
                    let zero = graph.constant(0.0);
                    let tie = graph.binary(BinaryOp::Eq, a, bb)?;
                    let half_g = graph.scale(g, 0.5)?;
                    let on_tie = graph.select(tie, half_g, zero)?;
                    let mut share = |wins: BinaryOp| -> Result<NodeId, ShapeError> {
                        let w = graph.binary(wins, a, bb)?;
                        graph.select(w, g, on_tie)
                    };
                    vec![Some(share(win_a)?), Some(share(win_b)?)]
                }
                // comparisons are piecewise constant
                BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Eq => vec![None, None],
            }
        }
        // d select(c, a, b) = (0, c, not c)
        Op::Select => {
            let zero = graph.constant(0.0);
            vec![
                None,
                Some(graph.select(x[0], g, zero)?),
                Some(graph.select(x[0], zero, g)?),
            ]
        }
        // d sum = 1 for every summed element
        Op::Reduce(ReduceOp::Sum, _) => {
            let shape = graph.shape(x[0]).clone();
            vec![Some(graph.broadcast(g, &shape)?)]
        }
        // d max = 1 / (number of maxima) at each maximum, 0 elsewhere
        Op::Reduce(ReduceOp::Max, axes) => {
            let is_max = graph.binary(BinaryOp::Eq, x[0], out)?;
            let count = graph.sum(is_max, &axes)?;
            let share = graph.div(g, count)?;
            let zero = graph.constant(0.0);
            vec![Some(graph.select(is_max, share, zero)?)]
        }
        Op::Broadcast(_) => {
            let shape = graph.shape(x[0]).clone();
            vec![Some(unbroadcast(graph, g, &shape)?)]
        }
        Op::Reshape(_) => {
            let shape = graph.shape(x[0]).clone();
            vec![Some(graph.reshape(g, &shape)?)]
        }
        // the inverse permutation
        Op::Transpose(perm) => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(graph.transpose(g, &inverse)?)]
        }
        // d(A B) = (G B^T, A^T G), per product of a batch
        op @ (Op::MatMul | Op::BatchMatMul) => {
            let swap: &[usize] = if op == Op::MatMul {
                &[1, 0]
            } else {
                &[0, 2, 1]
            };
            let ga = if wants[0] {
                let bt = graph.transpose(x[1], swap)?;
                Some(graph.node(op.clone(), &[g, bt])?)
            } else {
                None
            };
            let gb = if wants[1] {
                let at = graph.transpose(x[0], swap)?;
                Some(graph.node(op.clone(), &[at, g])?)
            } else {
                None
            };
            vec![ga, gb]
        }
        // Linear maps whose adjoints are each other: a window element's gradient goes back to
        // the pixel it read (padding has none), and back again.
        Op::Windows(w) => vec![Some(graph.unwindows(g, w)?)],
        Op::Unwindows(w) => vec![Some(graph.windows(
            g,
            crate::ir::Window {
                fill: crate::ir::Fill::Zero,
                ..w
            },
        )?)],
        // Convolution is bilinear; its three forms are each other's adjoints.
        Op::Conv(w) => vec![
            want(wants[0], || graph.node(Op::ConvInputGrad(w), &[g, x[1]]))?,
            want(wants[1], || graph.node(Op::ConvWeightGrad(w), &[x[0], g]))?,
        ],
        Op::ConvInputGrad(w) => vec![
            want(wants[0], || graph.node(Op::Conv(w), &[g, x[1]]))?,
            want(wants[1], || graph.node(Op::ConvWeightGrad(w), &[g, x[0]]))?,
        ],
        Op::ConvWeightGrad(w) => vec![
            want(wants[0], || graph.node(Op::ConvInputGrad(w), &[x[1], g]))?,
            want(wants[1], || graph.node(Op::Conv(w), &[x[0], g]))?,
        ],
        // Where max pooling reads is piecewise constant in `x` (no gradient); in the values it
        // is linear, with gather and scatter each other's adjoints.
        Op::MaxPoolGather(w) => vec![
            None,
            want(wants[1], || graph.node(Op::MaxPoolScatter(w), &[x[0], g]))?,
        ],
        Op::MaxPoolScatter(w) => vec![
            None,
            want(wants[1], || graph.node(Op::MaxPoolGather(w), &[x[0], g]))?,
        ],
        // Taken alone (the differentiation walk joins a node's slices itself): the gradient in
        // place, zeros around it.
        Op::Slice { axis, start, len } => {
            let parts = vec![SliceGrad {
                axis,
                start,
                len,
                grad: g,
            }];
            join_slices(graph, x[0], parts)?
                .into_iter()
                .map(Some)
                .collect()
        }
        // Each part's gradient is its slice of the gradient.
        Op::Concat { axis, .. } => {
            let mut start = 0;
            let mut grads = Vec::new();
            for (&part, &wanted) in x.iter().zip(wants) {
                let len = graph.shape(part).0[axis].known().unwrap_or(0);
                grads.push(want(wanted, || graph.slice(g, axis, start, len))?);
                start += len;
            }
            grads
        }
        // Indices are piecewise constant; the table's gradient adds each row's gradient back
        // where it was read, and the adjoint of that reads them again.
        Op::Gather => {
            let rows = graph.shape(x[0]).0[0].known().unwrap_or(0);
            vec![
                want(wants[0], || graph.node(Op::ScatterAdd { rows }, &[x[1], g]))?,
                None,
            ]
        }
        Op::ScatterAdd { .. } => vec![None, want(wants[1], || graph.node(Op::Gather, &[g, x[0]]))?],
        // One op computes the gradients from the recomputed weights: of the packed projection
        // as it is, or of separate operands as slices of its rows.
        Op::Attention {
            causal,
            scale,
            heads,
        } => {
            let grad = Op::AttentionGrad {
                causal,
                scale,
                heads,
            };
            let all = graph.node(grad, &[&x[..], &[g]].concat())?;
            if heads > 0 {
                // Packed: the gradient of the one projection, in its layout.
                return Ok(vec![Some(all)]);
            }
            let mut start = 0;
            let mut grads = Vec::new();
            for (&operand, &wanted) in x.iter().zip(wants) {
                let shape = graph.shape(operand).clone();
                let len: usize = shape.dims()[1..].iter().filter_map(|d| d.known()).product();
                grads.push(want(wanted, || {
                    let part = graph.slice(all, 1, start, len)?;
                    graph.reshape(part, &shape)
                })?);
                start += len;
            }
            grads
        }
        Op::AttentionGrad { .. } => {
            return Err(ShapeError(
                "attention's gradient is not differentiated again".into(),
            ));
        }
    };
    Ok(grads)
}

/// `make()` when the gradient is wanted.
fn want(
    wanted: bool,
    make: impl FnOnce() -> Result<NodeId, ShapeError>,
) -> Result<Option<NodeId>, ShapeError> {
    wanted.then(make).transpose()
}

/// Sums `g` over the axes that broadcasting to its shape added or stretched, giving a gradient
/// of shape `to`. The only place broadcast axes are reduced.
pub fn unbroadcast(graph: &mut Graph, g: NodeId, to: &Shape) -> Result<NodeId, ShapeError> {
    let from = graph.shape(g).clone();
    let lead = from.rank() - to.rank();
    let axes: Vec<usize> = (0..from.rank())
        .filter(|&i| i < lead || (to.0[i - lead] != from.0[i] && to.0[i - lead].known() == Some(1)))
        .collect();
    let summed = graph.sum(g, &axes)?;
    graph.reshape(summed, to)
}
