//! The reference interpreter: naive, obviously correct evaluation of a graph in f32 or f64.
//!
//! It is the oracle every faster path is tested against (autodiff against finite differences,
//! simplified graphs against the originals, compiled kernels against it), so it favours plain
//! loops over cleverness and is never used on a fast path.

use std::collections::HashMap;

use num_traits::Float;

use super::attention;
use super::graph::{Graph, NodeId};
use super::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use super::shape::{around, broadcast_strides, strides};

/// A dense row-major tensor of concrete shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements, row-major.
    pub data: Vec<T>,
}

impl<T: Float> Tensor<T> {
    /// A tensor from parts; `data.len()` must equal the element count of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Tensor<T> {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    /// A scalar.
    pub fn scalar(v: T) -> Tensor<T> {
        Tensor {
            shape: Vec::new(),
            data: vec![v],
        }
    }
}

/// Why a graph could not be evaluated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// An input or parameter was not fed.
    #[error("no value was given for `{0}`")]
    Missing(String),
    /// A fed value has the wrong shape.
    #[error("`{name}` needs shape {expected:?}, got {got:?}")]
    WrongShape {
        /// The leaf's name.
        name: String,
        /// The graph's shape for it.
        expected: Vec<usize>,
        /// The shape that was fed.
        got: Vec<usize>,
    },
    /// Compiled code could not be built or run.
    #[error("{0}")]
    Backend(String),
    /// A shape still has a symbolic dimension.
    #[error("shape {0} has unbound symbolic dimensions; bind them before running")]
    Unbound(String),
}

/// Evaluates `outputs`, reading inputs and parameters from `feeds` by name.
pub fn eval<T: Float>(
    graph: &Graph,
    feeds: &HashMap<String, Tensor<T>>,
    outputs: &[NodeId],
) -> Result<Vec<Tensor<T>>, EvalError> {
    let mut values: HashMap<NodeId, Tensor<T>> = HashMap::new();
    for id in graph.ancestors(outputs) {
        let shape = graph
            .shape(id)
            .concrete()
            .ok_or_else(|| EvalError::Unbound(graph.shape(id).to_string()))?;
        let args: Vec<&Tensor<T>> = graph.operands(id).iter().map(|o| &values[o]).collect();
        let value = eval_op(graph.op(id), &shape, &args, feeds)?;
        values.insert(id, value);
    }
    Ok(outputs.iter().map(|o| values[o].clone()).collect())
}

fn eval_op<T: Float>(
    op: &Op,
    shape: &[usize],
    args: &[&Tensor<T>],
    feeds: &HashMap<String, Tensor<T>>,
) -> Result<Tensor<T>, EvalError> {
    let cast = |v: f64| T::from(v).expect("every f64 converts to a float type");
    let data = match op {
        Op::Input { name, .. } | Op::Param { name, .. } => {
            let fed = feeds
                .get(name)
                .ok_or_else(|| EvalError::Missing(name.clone()))?;
            if fed.shape != shape {
                return Err(EvalError::WrongShape {
                    name: name.clone(),
                    expected: shape.to_vec(),
                    got: fed.shape.clone(),
                });
            }
            fed.data.clone()
        }
        Op::Const(c) => vec![cast(c.get())],
        Op::Numel(s) => {
            let n = s.numel().ok_or_else(|| EvalError::Unbound(s.to_string()))?;
            vec![cast(n as f64)]
        }
        Op::Iota { axis, .. } => {
            let strides = strides(shape);
            (0..numel(shape))
                .map(|i| cast(((i / strides[*axis]) % shape[*axis]) as f64))
                .collect()
        }
        Op::Unary(u) => args[0].data.iter().map(|&x| unary(*u, x)).collect(),
        Op::Binary(b) => args[0]
            .data
            .iter()
            .zip(&args[1].data)
            .map(|(&x, &y)| binary(*b, x, y))
            .collect(),
        Op::Select => (0..numel(shape))
            .map(|i| {
                if args[0].data[i] != T::zero() {
                    args[1].data[i]
                } else {
                    args[2].data[i]
                }
            })
            .collect(),
        Op::Reduce(r, _) => reduce(*r, args[0], shape),
        Op::Broadcast(_) => broadcast(args[0], shape),
        Op::Reshape(_) => args[0].data.clone(),
        Op::Transpose(perm) => transpose(args[0], perm, shape),
        Op::MatMul => {
            let [m, k, n] = [args[0].shape[0], args[0].shape[1], args[1].shape[1]];
            matmul([m, k, n], &args[0].data, &args[1].data)
        }
        Op::Attention { .. } | Op::AttentionGrad { .. } => attention::evaluate(op, args),
        Op::BatchMatMul => {
            let [s, m, k] = [args[0].shape[0], args[0].shape[1], args[0].shape[2]];
            let n = args[1].shape[2];
            (0..s)
                .flat_map(|i| {
                    let a = &args[0].data[i * m * k..(i + 1) * m * k];
                    let b = &args[1].data[i * k * n..(i + 1) * k * n];
                    matmul([m, k, n], a, b)
                })
                .collect()
        }
        Op::Windows(w) => {
            let mut out = vec![T::zero(); numel(shape)];
            let fill = cast(w.fill.value());
            let (n, c) = (shape[0], shape[3]);
            w.visit(n, c, |e, pixel| {
                out[e] = pixel.map_or(fill, |p| args[0].data[p])
            });
            out
        }
        Op::Conv(w) | Op::ConvInputGrad(w) | Op::ConvWeightGrad(w) => {
            let mut out = vec![T::zero(); numel(shape)];
            conv(op, w, args, &mut out);
            out
        }
        Op::MaxPoolGather(w) => {
            let mut out = vec![T::zero(); numel(shape)];
            let (n, c) = (shape[0], shape[1]);
            let empty = cast(f64::NEG_INFINITY);
            for (o, p) in first_maxima(w, n, c, &args[0].data).into_iter().enumerate() {
                out[o] = p.map_or(empty, |p| args[1].data[p]);
            }
            out
        }
        Op::MaxPoolScatter(w) => {
            let mut out = vec![T::zero(); numel(shape)];
            let (n, c) = (shape[0], shape[1]);
            for (o, p) in first_maxima(w, n, c, &args[0].data).into_iter().enumerate() {
                if let Some(p) = p {
                    out[p] = out[p] + args[1].data[o];
                }
            }
            out
        }
        Op::Slice { axis, start, len } => {
            let x = args[0];
            let [outer, size, inner] = around(&x.shape, *axis);
            (0..outer)
                .flat_map(|o| {
                    let from = (o * size + start) * inner;
                    x.data[from..from + len * inner].iter().copied()
                })
                .collect()
        }
        Op::Concat { axis, .. } => {
            let [outer, _, _] = around(shape, *axis);
            (0..outer)
                .flat_map(|o| {
                    args.iter().flat_map(move |part| {
                        let [_, size, inner] = around(&part.shape, *axis);
                        part.data[o * size * inner..(o + 1) * size * inner]
                            .iter()
                            .copied()
                    })
                })
                .collect()
        }
        Op::Gather => {
            let (table, index) = (args[0], args[1]);
            let (rows, width) = (table.shape[0], table.shape[1]);
            index
                .data
                .iter()
                .flat_map(|&i| {
                    let row = row_of(i, rows);
                    (0..width).map(move |k| row.map_or(T::zero(), |r| table.data[r * width + k]))
                })
                .collect()
        }
        Op::ScatterAdd { rows } => {
            let (index, g) = (args[0], args[1]);
            let width = shape[1];
            let mut out = vec![T::zero(); numel(shape)];
            for (n, &i) in index.data.iter().enumerate() {
                if let Some(r) = row_of(i, *rows) {
                    for k in 0..width {
                        out[r * width + k] = out[r * width + k] + g.data[n * width + k];
                    }
                }
            }
            out
        }
        Op::Unwindows(w) => {
            let mut out = vec![T::zero(); numel(shape)];
            let (n, c) = (shape[0], shape[1]);
            w.visit(n, c, |e, pixel| {
                if let Some(p) = pixel {
                    out[p] = out[p] + args[0].data[e];
                }
            });
            out
        }
    };
    Ok(Tensor::new(shape.to_vec(), data))
}

/// The table row an index stored as a float names, if it is a whole number in `0..rows`.
pub fn row_of<T: Float>(index: T, rows: usize) -> Option<usize> {
    let i = index.to_f64()?;
    (i >= 0.0 && i < rows as f64 && i.fract() == 0.0).then_some(i as usize)
}

/// For every output of max pooling `[n, c, H, W]` images (row-major `[N, C, OH, OW]`), the
/// flat index of the first pixel of its window, in the window's row-major order, holding the
/// window's maximum: replaced only by a larger value or by the first NaN, as PyTorch
/// propagates it. `None` where the whole window is padding.
fn first_maxima<T: Float>(
    w: &crate::ir::Window,
    n: usize,
    c: usize,
    x: &[T],
) -> Vec<Option<usize>> {
    let [oh, ow] = w.output().unwrap_or_default();
    let window = w.kernel[0] * w.kernel[1];
    let mut best: Vec<Option<usize>> = vec![None; n * c * oh * ow];
    w.visit(n, c, |element, pixel| {
        // `visit` walks `[N, OH, OW, C, KH, KW]`; the output is `[N, C, OH, OW]`.
        let q = element / window;
        let (channel, position) = (q % c, q / c);
        let (image, y, col) = (position / (oh * ow), position / ow % oh, position % ow);
        let slot = &mut best[((image * c + channel) * oh + y) * ow + col];
        if let Some(p) = pixel {
            let wins = slot.is_none_or(|b| x[p] > x[b] || (x[p].is_nan() && !x[b].is_nan()));
            if wins {
                *slot = Some(p);
            }
        }
    });
    best
}

/// The three forms of convolution, directly from their definition: every window element
/// `(n, y, x, c, i, j)` that reads pixel `p` of image `n` contributes, for every output channel
/// `o`, `w[o, c, i, j] * x[p]` to `y[n, o, y, x]` (and the gradients accordingly).
fn conv<T: Float>(op: &Op, w: &crate::ir::Window, args: &[&Tensor<T>], out: &mut [T]) {
    let (images, channels, outs) = match op {
        Op::Conv(_) => (args[0].shape[0], args[0].shape[1], args[1].shape[0]),
        Op::ConvInputGrad(_) => (args[0].shape[0], args[1].shape[1], args[1].shape[0]),
        _ => (args[0].shape[0], args[0].shape[1], args[1].shape[1]),
    };
    let [oh, ow] = w.output().unwrap_or_default();
    let (positions, row) = (oh * ow, channels * w.kernel[0] * w.kernel[1]);
    w.visit(images, channels, |e, pixel| {
        let Some(p) = pixel else { return };
        let (r, col) = (e / row, e % row);
        let (n, at) = (r / positions, r % positions);
        for o in 0..outs {
            let y = (n * outs + o) * positions + at;
            let k = o * row + col;
            match op {
                Op::Conv(_) => out[y] = out[y] + args[1].data[k] * args[0].data[p],
                Op::ConvInputGrad(_) => out[p] = out[p] + args[0].data[y] * args[1].data[k],
                _ => out[k] = out[k] + args[0].data[p] * args[1].data[y],
            }
        }
    });
}

/// The scalar meaning of each unary op.
pub fn unary<T: Float>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Recip => x.recip(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > T::zero() {
                T::one()
            } else if x < T::zero() {
                -T::one()
            } else {
                x
            }
        }
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => T::one() / (T::one() + (-x).exp()),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tan => x.tan(),
        UnaryOp::Sinh => x.sinh(),
        UnaryOp::Cosh => x.cosh(),
        UnaryOp::Atan => x.atan(),
        UnaryOp::Erf => T::from(libm::erf(x.to_f64().unwrap_or(f64::NAN))).unwrap_or(x),
        UnaryOp::Gelu | UnaryOp::GeluDerivative => {
            let x = x.to_f64().unwrap_or(f64::NAN);
            let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
            let value = if op == UnaryOp::Gelu {
                x * cdf
            } else {
                cdf + x * normal_density(x)
            };
            T::from(value).unwrap_or(T::nan())
        }
        UnaryOp::StopGradient => x,
    }
}

/// The standard normal density `e^(-x^2 / 2) / sqrt(2 pi)`.
fn normal_density(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The scalar meaning of each binary op.
pub fn binary<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    let mask = |c: bool| if c { T::one() } else { T::zero() };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max => propagate_nan(a, b, a.max(b)),
        BinaryOp::Min => propagate_nan(a, b, a.min(b)),
        BinaryOp::Lt => mask(a < b),
        BinaryOp::Gt => mask(a > b),
        BinaryOp::Le => mask(a <= b),
        BinaryOp::Eq => mask(a == b),
    }
}

/// `value`, or NaN when `a` or `b` is NaN: the maximum and minimum of PyTorch (and of
/// Cranelift's `fmax`/`fmin`) propagate NaN, where Rust's `max` and `min` drop it.
fn propagate_nan<T: Float>(a: T, b: T, value: T) -> T {
    match a.is_nan() || b.is_nan() {
        true => T::nan(),
        false => value,
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Calls `f(flat_index, multi_index)` for every element of `shape`, row-major.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let total = numel(shape);
    let mut index = vec![0; shape.len()];
    for flat in 0..total {
        f(flat, &index);
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

fn offset(strides: &[usize], index: &[usize]) -> usize {
    strides.iter().zip(index).map(|(s, i)| s * i).sum()
}

fn reduce<T: Float>(op: ReduceOp, x: &Tensor<T>, out_shape: &[usize]) -> Vec<T> {
    let init = match op {
        ReduceOp::Sum => T::zero(),
        ReduceOp::Max => T::neg_infinity(),
    };
    let mut out = vec![init; numel(out_shape)];
    let out_strides = broadcast_strides(out_shape, x.shape.len());
    for_each_index(&x.shape, |flat, index| {
        let slot = &mut out[offset(&out_strides, index)];
        *slot = match op {
            ReduceOp::Sum => *slot + x.data[flat],
            ReduceOp::Max => propagate_nan(*slot, x.data[flat], slot.max(x.data[flat])),
        };
    });
    out
}

fn broadcast<T: Float>(x: &Tensor<T>, out_shape: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(numel(out_shape));
    let in_strides = broadcast_strides(&x.shape, out_shape.len());
    for_each_index(out_shape, |_, index| {
        out.push(x.data[offset(&in_strides, index)])
    });
    out
}

fn transpose<T: Float>(x: &Tensor<T>, perm: &[usize], out_shape: &[usize]) -> Vec<T> {
    let in_strides = strides(&x.shape);
    let mut out = Vec::with_capacity(numel(out_shape));
    for_each_index(out_shape, |_, index| {
        let offset: usize = perm
            .iter()
            .enumerate()
            .map(|(i, &p)| index[i] * in_strides[p])
            .sum();
        out.push(x.data[offset]);
    });
    out
}

/// `[m, k] @ [k, n]`, row-major.
fn matmul<T: Float>([m, k, n]: [usize; 3], a: &[T], b: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                out[i * n + j] = out[i * n + j] + aip * b[p * n + j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Shape;

    fn run(g: &Graph, feeds: &[(&str, Tensor<f64>)], out: NodeId) -> Tensor<f64> {
        let feeds = feeds
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        eval(g, &feeds, &[out]).unwrap().remove(0)
    }

    #[test]
    fn matmul_broadcast_and_reduce_match_hand_results() {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[2, 3])).unwrap();
        let w = g.input("w", Shape::known(&[3, 2])).unwrap();
        let b = g.input("b", Shape::known(&[2])).unwrap();
        let xw = g.matmul(x, w).unwrap();
        let y = g.add(xw, b).unwrap();
        let s = g.sum(y, &[0]).unwrap();
        let x_t = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let w_t = Tensor::new(vec![3, 2], vec![1., 0., 0., 1., 1., 1.]);
        let b_t = Tensor::new(vec![2], vec![10., 20.]);
        let feeds = [("x", x_t), ("w", w_t), ("b", b_t)];
        assert_eq!(run(&g, &feeds, y).data, vec![14., 25., 20., 31.]);
        assert_eq!(run(&g, &feeds, s), Tensor::new(vec![1, 2], vec![34., 56.]));
    }

    #[test]
    fn transpose_iota_and_reduce_max() {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[2, 3])).unwrap();
        let t = g.transpose(x, &[1, 0]).unwrap();
        let m = g.reduce(ReduceOp::Max, x, &[1]).unwrap();
        let i = g
            .node(
                Op::Iota {
                    shape: Shape::known(&[2, 3]),
                    axis: 1,
                },
                &[],
            )
            .unwrap();
        let feeds = [(
            "x",
            Tensor::new(vec![2, 3], vec![1., 5., 3., -4., -2., -6.]),
        )];
        assert_eq!(run(&g, &feeds, t).data, vec![1., -4., 5., -2., 3., -6.]);
        assert_eq!(run(&g, &feeds, m).data, vec![5., -2.]);
        assert_eq!(run(&g, &feeds, i).data, vec![0., 1., 2., 0., 1., 2.]);
    }

    #[test]
    fn missing_and_misshapen_feeds_are_errors() {
        let mut g = Graph::new();
        let x = g.input("x", Shape::known(&[2])).unwrap();
        assert_eq!(
            eval::<f64>(&g, &HashMap::new(), &[x]),
            Err(EvalError::Missing("x".into()))
        );
        let feeds = [("x".to_string(), Tensor::new(vec![3], vec![0.0f64; 3]))].into();
        assert!(matches!(
            eval(&g, &feeds, &[x]),
            Err(EvalError::WrongShape { .. })
        ));
    }
}
