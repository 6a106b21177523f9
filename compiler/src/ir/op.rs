//! The closed set of primitive tensor operations and their shape rules.
//!
//! Every model, every gradient and every kernel is built from these primitives only. Elementwise
//! operations take operands of *equal* shapes: broadcasting is always an explicit
//! [`Op::Broadcast`] node, inserted by the builder, so that autodiff has exactly one place that
//! reduces a gradient back over broadcast axes. Reductions keep the reduced axes with size 1.
//!
//! A new primitive is a new variant with a shape rule here, an evaluation in the interpreter
//! and a rule in the VJP table.
//!
//! This file is long because the closed `Op` enum, its shape rules, names and printing belong
//! together: adding a primitive touches this one file (and the matches the compiler then names).

use std::fmt;

use super::shape::{Dim, Shape, ShapeError};
pub use nabla_kernels::{Fill, Window};

/// A scalar constant stored by its bits, so that ops compare and hash structurally.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scalar(u64);

impl Scalar {
    /// Wraps a value.
    pub fn new(value: f64) -> Scalar {
        // One representation of zero and of NaN, so that equal constants hash equal.
        let value = if value == 0.0 { 0.0 } else { value };
        let value = if value.is_nan() { f64::NAN } else { value };
        Scalar(value.to_bits())
    }

    /// The value.
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `1 / x`
    Recip,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// square root
    Sqrt,
    /// `|x|`
    Abs,
    /// -1, 0 or 1 by the sign of `x` (0 at 0)
    Sign,
    /// hyperbolic tangent
    Tanh,
    /// logistic function `1 / (1 + e^-x)`
    Sigmoid,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// tangent
    Tan,
    /// hyperbolic sine
    Sinh,
    /// hyperbolic cosine
    Cosh,
    /// arc tangent
    Atan,
    /// the error function `2/sqrt(pi) ∫_0^x e^(-t^2) dt`
    Erf,
    /// the Gaussian error linear unit `x Φ(x) = (x / 2) (1 + erf(x / sqrt 2))` (PyTorch's exact
    /// `gelu`): one op rather than its five, so that a transformer's widest activation and
    /// its gradient are each one call of the kernel library's widest registers, and the
    /// backward keeps only `x`
    Gelu,
    /// `gelu`'s derivative `Φ(x) + x φ(x)`, `φ` the standard normal density (its gradient rule)
    GeluDerivative,
    /// `x`, through which no gradient flows (JAX's `stop_gradient`, PyTorch's `detach`): how a
    /// built-in states a gradient other than its value's derivative.
    StopGradient,
}

impl UnaryOp {
    /// Whether computing it calls a transcendental function (rather than a few instructions).
    pub fn is_transcendental(self) -> bool {
        !matches!(
            self,
            UnaryOp::Neg
                | UnaryOp::Recip
                | UnaryOp::Sqrt
                | UnaryOp::Abs
                | UnaryOp::Sign
                | UnaryOp::StopGradient
        )
    }
}

/// Elementwise functions of two operands of equal shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b`
    Pow,
    /// larger of the two
    Max,
    /// smaller of the two
    Min,
    /// 1 where `a < b`, else 0
    Lt,
    /// 1 where `a > b`, else 0
    Gt,
    /// 1 where `a <= b`, else 0 (0 where either is NaN, unlike `1 - (a > b)`)
    Le,
    /// 1 where `a == b`, else 0
    Eq,
}

/// How a reduction combines elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    /// sum of the elements
    Sum,
    /// largest element
    Max,
}

/// Shape rules of the window ops, beside the geometry the kernel library owns.
trait Geometry {
    fn conv_shapes(&self, x: &Shape, w: &Shape) -> Result<[Shape; 3], ShapeError>;
    fn conv_shapes_from_output(&self, dy: &Shape, w: &Shape) -> Result<[Shape; 3], ShapeError>;
    fn windows_shape(&self, input: &Shape) -> Result<Shape, ShapeError>;
    fn unwindows_shape(&self, input: &Shape) -> Result<Shape, ShapeError>;
}

impl Geometry for Window {
    /// The shapes of a convolution's image, weight and output, checked: `x [N, C, H, W]`,
    /// `w [O, C, KH, KW]`, output `[N, O, OH, OW]`.
    fn conv_shapes(&self, x: &Shape, w: &Shape) -> Result<[Shape; 3], ShapeError> {
        let (xd, wd) = (x.dims(), w.dims());
        let image = [Dim::Known(self.image[0]), Dim::Known(self.image[1])];
        if xd.len() != 4 || xd[2..] != image {
            return Err(ShapeError(format!(
                "a convolution over {}x{} images needs an input of shape [N, C, {}, {}], got {x}",
                self.image[0], self.image[1], self.image[0], self.image[1]
            )));
        }
        let kernel = [Dim::Known(self.kernel[0]), Dim::Known(self.kernel[1])];
        if wd.len() != 4 || wd[2..] != kernel || wd[1] != xd[1] {
            return Err(ShapeError(format!(
                "a convolution of {x} with a {}x{} kernel needs a weight of shape [O, {}, {}, {}], got {w}",
                self.kernel[0], self.kernel[1], xd[1], self.kernel[0], self.kernel[1]
            )));
        }
        let [oh, ow] = self.output()?;
        let y = Shape(vec![
            xd[0].clone(),
            wd[0].clone(),
            Dim::Known(oh),
            Dim::Known(ow),
        ]);
        Ok([x.clone(), w.clone(), y])
    }

    /// [`Geometry::conv_shapes`] from the output gradient and the weight.
    fn conv_shapes_from_output(&self, dy: &Shape, w: &Shape) -> Result<[Shape; 3], ShapeError> {
        let (n, c) = match (dy.dims().first(), w.dims().get(1)) {
            (Some(n), Some(c)) => (n.clone(), c.clone()),
            _ => {
                return Err(ShapeError(format!(
                    "the input gradient of a convolution needs [N, O, OH, OW] and [O, C, KH, KW], got {dy} and {w}"
                )));
            }
        };
        let x = Shape(vec![
            n,
            c,
            Dim::Known(self.image[0]),
            Dim::Known(self.image[1]),
        ]);
        self.conv_shapes(&x, w)
    }

    /// `[N, C, H, W] -> [N, OH, OW, C, KH, KW]`.
    fn windows_shape(&self, input: &Shape) -> Result<Shape, ShapeError> {
        let d = input.dims();
        let image = [Dim::Known(self.image[0]), Dim::Known(self.image[1])];
        if d.len() != 4 || d[2..] != image {
            return Err(ShapeError(format!(
                "windows of a {}x{} image need an operand of shape [N, C, {}, {}], got {input}",
                self.image[0], self.image[1], self.image[0], self.image[1]
            )));
        }
        let [oh, ow] = self.output()?;
        let k = |v| Dim::Known(v);
        Ok(Shape(vec![
            d[0].clone(),
            k(oh),
            k(ow),
            d[1].clone(),
            k(self.kernel[0]),
            k(self.kernel[1]),
        ]))
    }

    /// `[N, OH, OW, C, KH, KW] -> [N, C, H, W]`.
    fn unwindows_shape(&self, input: &Shape) -> Result<Shape, ShapeError> {
        let d = input.dims();
        let [oh, ow] = self.output()?;
        let k = |v| Dim::Known(v);
        let expected = [k(oh), k(ow)];
        let kernel = [k(self.kernel[0]), k(self.kernel[1])];
        if d.len() != 6 || d[1..3] != expected || d[4..] != kernel {
            return Err(ShapeError(format!(
                "the adjoint of windows needs an operand of shape [N, {oh}, {ow}, C, {}, {}], got {input}",
                self.kernel[0], self.kernel[1]
            )));
        }
        Ok(Shape(vec![
            d[0].clone(),
            d[3].clone(),
            k(self.image[0]),
            k(self.image[1]),
        ]))
    }
}

/// A primitive operation: the weight of a graph node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Data fed in at run time (model inputs and targets).
    Input {
        /// The name the data is fed under.
        name: String,
        /// Its shape.
        shape: Shape,
    },
    /// A trainable parameter.
    Param {
        /// The name it is stored and saved under.
        name: String,
        /// Its shape.
        shape: Shape,
    },
    /// A scalar constant.
    Const(Scalar),
    /// Indices `0, 1, 2, ...` along `axis`, repeated over the other axes of `shape`.
    Iota {
        /// The output shape.
        shape: Shape,
        /// The counting axis.
        axis: usize,
    },
    /// The scalar element count of a shape (known once its symbols are bound).
    Numel(Shape),
    /// An elementwise function of one operand.
    Unary(UnaryOp),
    /// An elementwise function of two operands of equal shape.
    Binary(BinaryOp),
    /// `cond != 0 ? a : b`, elementwise over three operands of equal shape.
    Select,
    /// A reduction over the listed axes, which stay in the output with size 1.
    Reduce(ReduceOp, Vec<usize>),
    /// Broadcast (NumPy rules) to the given shape.
    Broadcast(Shape),
    /// The same elements, row-major, in the given shape.
    Reshape(Shape),
    /// Permutes the axes: output axis `i` is input axis `perm[i]`.
    Transpose(Vec<usize>),
    /// Matrix product `[M, K] @ [K, N] -> [M, N]`.
    MatMul,
    /// A batch of independent matrix products `[S, M, K] @ [S, K, N] -> [S, M, N]` (leading
    /// axes of any rank are reshaped into the one `S` by the builder): attention's products.
    BatchMatMul,
    /// Attention in one pass, never storing the scores. With `heads` 0: `q [S, Tq, D]`,
    /// `k [S, Tk, D]`, `v [S, Tk, Dv]` -> `[S, Tq, Dv]`, row `i` of product `s` being
    /// `softmax(scale q_i k^T) v`. With `heads` `H`, self-attention over one projection
    /// `qkv [B, T, 3C]` read in place (head `h`'s queries, keys and values are its columns
    /// `h D ..`, `C + h D ..`, `2C + h D ..`, `D = C / H`) -> `[B, T, C]`, the heads side by
    /// side. With `causal`, query `i` sees keys up to `i + Tk - Tq`; a query that sees none
    /// gets zeros.
    Attention {
        /// Query `i` sees keys up to `i + Tk - Tq` only.
        causal: bool,
        /// The scores' factor.
        scale: Scalar,
        /// 0 for separate operands, else the heads of one packed projection.
        heads: usize,
    },
    /// [`Op::Attention`]'s gradient, its weights recomputed: its operands and the gradient of
    /// its output -> with `heads` 0, `[S, Tq D + Tk D + Tk Dv]`, each row the gradients of `q`,
    /// `k` and `v`, row-major; otherwise the gradient of `qkv`, `[B, T, 3C]`.
    AttentionGrad {
        /// As the attention's.
        causal: bool,
        /// As the attention's.
        scale: Scalar,
        /// As the attention's.
        heads: usize,
    },
    /// The windows of `[N, C, H, W]` images as rows (im2col): `[N, OH, OW, C, KH, KW]`,
    /// element `(n, y, x, c, i, j)` being pixel `(y s + i d - p, x s + j d - p)` of channel `c`,
    /// or the fill outside the image.
    Windows(Window),
    /// The adjoint (transpose) of [`Op::Windows`] (col2im): `[N, OH, OW, C, KH, KW]` summed
    /// back into `[N, C, H, W]`, every window element added to the pixel it was read from
    /// (padding's elements dropped).
    Unwindows(Window),
    /// Convolution (PyTorch's `conv2d` without bias, one group; zero padding):
    /// `x [N, C, H, W]`, `w [O, C, KH, KW]` -> `[N, O, OH, OW]`, each output the sum over
    /// `c, i, j` of `w[o, c, i, j]` times window element `(i, j)` of channel `c`.
    Conv(Window),
    /// The gradient of [`Op::Conv`] for its input: `dy [N, O, OH, OW]`, `w` -> `[N, C, H, W]`.
    ConvInputGrad(Window),
    /// The gradient of [`Op::Conv`] for its weight: `x [N, C, H, W]`, `dy` -> `[O, C, KH, KW]`.
    ConvWeightGrad(Window),
    /// Max pooling's routing, read: `x`, `v [N, C, H, W]` -> `[N, C, OH, OW]`, each output
    /// the element of `v` at the first position (row-major within the window) where `x` has
    /// its window's maximum. Max pooling is `MaxPoolGather(x, x)`.
    MaxPoolGather(Window),
    /// Its adjoint: `x [N, C, H, W]`, `g [N, C, OH, OW]` -> `[N, C, H, W]`, each element of `g`
    /// added at the position [`Op::MaxPoolGather`] reads.
    MaxPoolScatter(Window),
    /// Elements `start .. start + len` of axis `axis`.
    Slice {
        /// The sliced axis.
        axis: usize,
        /// The first element kept.
        start: usize,
        /// How many are kept.
        len: usize,
    },
    /// Its `parts` operands joined along `axis`, in order; every other axis is equal.
    Concat {
        /// The joined axis.
        axis: usize,
        /// How many operands.
        parts: usize,
    },
    /// Rows of a table by index (an embedding): `table [V, D]`, `index [..S]` (integers stored
    /// as floats) -> `[..S, D]`. An index outside `0..V` reads a row of zeros; the runtime
    /// refuses such data before any program runs, so this only keeps memory safe.
    Gather,
    /// Its adjoint: `index [..S]`, `g [..S, D]` -> `[rows, D]`, every row of `g` added to the
    /// row its index names (indices outside `0..rows` dropped).
    ScatterAdd {
        /// Rows of the table.
        rows: usize,
    },
}

impl Op {
    /// Whether the op runs as a call into the kernel library rather than as generated loops:
    /// it reads whole row-major buffers and is computed alone (windows of images,
    /// convolutions, max pooling, slices, concatenations, gathers and scatters, batches of
    /// matrix products).
    pub fn is_library_call(&self) -> bool {
        matches!(
            self,
            Op::Windows(_)
                | Op::Unwindows(_)
                | Op::Conv(_)
                | Op::ConvInputGrad(_)
                | Op::ConvWeightGrad(_)
                | Op::MaxPoolGather(_)
                | Op::MaxPoolScatter(_)
                | Op::Slice { .. }
                | Op::Concat { .. }
                | Op::Gather
                | Op::ScatterAdd { .. }
                | Op::BatchMatMul
                | Op::Attention { .. }
                | Op::AttentionGrad { .. }
        )
    }

    /// An attention op's `(causal, scale, heads)`, for either direction.
    pub fn attention(&self) -> Option<(bool, Scalar, usize)> {
        match *self {
            Op::Attention {
                causal,
                scale,
                heads,
            }
            | Op::AttentionGrad {
                causal,
                scale,
                heads,
            } => Some((causal, scale, heads)),
            _ => None,
        }
    }

    /// How many operands the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Iota { .. } | Op::Numel(_) => {
                0
            }
            Op::Unary(_)
            | Op::Reduce(..)
            | Op::Broadcast(_)
            | Op::Reshape(_)
            | Op::Transpose(_)
            | Op::Windows(_)
            | Op::Unwindows(_)
            | Op::Slice { .. } => 1,
            Op::Binary(_)
            | Op::MatMul
            | Op::BatchMatMul
            | Op::Conv(_)
            | Op::ConvInputGrad(_)
            | Op::ConvWeightGrad(_)
            | Op::MaxPoolGather(_)
            | Op::MaxPoolScatter(_)
            | Op::Gather
            | Op::ScatterAdd { .. } => 2,
            Op::Select => 3,
            Op::Attention { heads, .. } => 1 + 2 * usize::from(*heads == 0),
            Op::AttentionGrad { heads, .. } => 2 + 2 * usize::from(*heads == 0),
            Op::Concat { parts, .. } => *parts,
        }
    }

    /// The output shape for operands of the given shapes, or why they do not fit.
    pub fn infer_shape(&self, operands: &[&Shape]) -> Result<Shape, ShapeError> {
        if operands.len() != self.arity() {
            return Err(ShapeError(format!(
                "{self} takes {} operands, got {}",
                self.arity(),
                operands.len()
            )));
        }
        let shape = match self {
            Op::Input { shape, .. } | Op::Param { shape, .. } => shape.clone(),
            Op::Const(_) | Op::Numel(_) => Shape::scalar(),
            Op::Iota { shape, axis } => {
                if *axis >= shape.rank() {
                    return Err(ShapeError(format!(
                        "iota axis {axis} is out of range for {shape}"
                    )));
                }
                shape.clone()
            }
            Op::Unary(_) => operands[0].clone(),
            Op::Binary(_) | Op::Select => {
                let first = operands[0];
                if let Some(other) = operands.iter().find(|s| *s != &first) {
                    return Err(ShapeError(format!(
                        "{self} needs operands of equal shape, got {first} and {other}"
                    )));
                }
                first.clone()
            }
            Op::Reduce(_, axes) => reduce_shape(operands[0], axes)?,
            Op::Broadcast(target) => {
                if !operands[0].broadcasts_to(target) {
                    return Err(ShapeError(format!(
                        "cannot broadcast {} to {target}",
                        operands[0]
                    )));
                }
                target.clone()
            }
            Op::Reshape(target) => {
                if !operands[0].same_size(target) {
                    return Err(ShapeError(format!(
                        "cannot reshape {} to {target}: the element counts differ",
                        operands[0]
                    )));
                }
                target.clone()
            }
            Op::Transpose(perm) => transpose_shape(operands[0], perm)?,
            Op::MatMul => matmul_shape(operands[0], operands[1])?,
            Op::BatchMatMul => batch_matmul_shape(operands[0], operands[1])?,
            Op::Attention { heads, .. } => attention_shape(*heads, operands)?.0,
            Op::AttentionGrad { heads, .. } => {
                let (inputs, gradient) = operands.split_at(operands.len() - 1);
                let (out, grad) = attention_shape(*heads, inputs)?;
                if gradient[0] != &out {
                    return Err(ShapeError(format!(
                        "attention's gradient needs the gradient of its output as {out}, got {}",
                        gradient[0]
                    )));
                }
                grad
            }
            Op::Windows(w) => w.windows_shape(operands[0])?,
            Op::Unwindows(w) => w.unwindows_shape(operands[0])?,
            Op::Conv(w) => w.conv_shapes(operands[0], operands[1])?[2].clone(),
            Op::ConvInputGrad(w) => {
                let [x, _, y] = w.conv_shapes_from_output(operands[0], operands[1])?;
                if &y != operands[0] {
                    return Err(ShapeError(format!(
                        "the input gradient of a convolution needs an output gradient of shape {y}, got {}",
                        operands[0]
                    )));
                }
                x
            }
            Op::ConvWeightGrad(w) => {
                let (x, dy) = (operands[0], operands[1]);
                let channels = dy.dims().get(1).cloned().unwrap_or(Dim::Known(0));
                let k = |v| Dim::Known(v);
                let c = x.dims().get(1).cloned().unwrap_or(Dim::Known(0));
                let weight = Shape(vec![channels, c, k(w.kernel[0]), k(w.kernel[1])]);
                let [_, _, y] = w.conv_shapes(x, &weight)?;
                if &y != dy {
                    return Err(ShapeError(format!(
                        "the weight gradient of a convolution needs an output gradient of shape {y}, got {dy}"
                    )));
                }
                weight
            }
            Op::MaxPoolGather(w) => {
                let rows = w.windows_shape(operands[0])?;
                if operands[1] != operands[0] {
                    return Err(ShapeError(format!(
                        "max pooling reads values of its input's shape {}, got {}",
                        operands[0], operands[1]
                    )));
                }
                let d = rows.dims();
                Shape(vec![d[0].clone(), d[3].clone(), d[1].clone(), d[2].clone()])
            }
            Op::MaxPoolScatter(w) => {
                let rows = w.windows_shape(operands[0])?;
                let d = rows.dims();
                let pooled = Shape(vec![d[0].clone(), d[3].clone(), d[1].clone(), d[2].clone()]);
                if operands[1] != &pooled {
                    return Err(ShapeError(format!(
                        "the gradient of max pooling {} needs an output gradient of shape {pooled}, got {}",
                        operands[0], operands[1]
                    )));
                }
                operands[0].clone()
            }
            Op::Slice { axis, start, len } => {
                let x = operands[0];
                match x.dims().get(*axis) {
                    Some(Dim::Known(size)) if start + len <= *size && *len > 0 => {
                        let mut dims = x.0.clone();
                        dims[*axis] = Dim::Known(*len);
                        Shape(dims)
                    }
                    _ => {
                        return Err(ShapeError(format!(
                            "cannot take elements {start}..{} of axis {axis} of {x}",
                            start + len
                        )));
                    }
                }
            }
            Op::Concat { axis, .. } => concat_shape(operands, *axis)?,
            Op::Gather => {
                let (table, index) = (operands[0], operands[1]);
                match table.dims() {
                    [_, d] => {
                        let mut dims = index.0.clone();
                        dims.push(d.clone());
                        Shape(dims)
                    }
                    _ => {
                        return Err(ShapeError(format!(
                            "a gather reads rows of a table [V, D], got {table}"
                        )));
                    }
                }
            }
            Op::ScatterAdd { rows } => {
                let (index, g) = (operands[0], operands[1]);
                match g.dims().split_last() {
                    Some((d, lead)) if lead == index.dims() => {
                        Shape(vec![Dim::Known(*rows), d.clone()])
                    }
                    _ => {
                        return Err(ShapeError(format!(
                            "a scatter-add of rows by index {index} needs rows of shape [{}, D], got {g}",
                            index
                                .0
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        };
        shape.check_size()?;
        Ok(shape)
    }

    /// Short lower-case name of the op kind, as shown in graph dumps.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Const(_) => "const",
            Op::Iota { .. } => "iota",
            Op::Numel(_) => "numel",
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Recip => "recip",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Abs => "abs",
                UnaryOp::Sign => "sign",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
                UnaryOp::Tan => "tan",
                UnaryOp::Sinh => "sinh",
                UnaryOp::Cosh => "cosh",
                UnaryOp::Atan => "atan",
                UnaryOp::Erf => "erf",
                UnaryOp::Gelu => "gelu",
                UnaryOp::GeluDerivative => "gelu_derivative",
                UnaryOp::StopGradient => "stop_gradient",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Pow => "pow",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
                BinaryOp::Lt => "lt",
                BinaryOp::Gt => "gt",
                BinaryOp::Le => "le",
                BinaryOp::Eq => "eq",
            },
            Op::Select => "select",
            Op::Reduce(ReduceOp::Sum, _) => "reduce_sum",
            Op::Reduce(ReduceOp::Max, _) => "reduce_max",
            Op::Broadcast(_) => "broadcast",
            Op::Reshape(_) => "reshape",
            Op::Transpose(_) => "transpose",
            Op::MatMul => "matmul",
            Op::BatchMatMul => "batch_matmul",
            Op::Attention { .. } => "attention",
            Op::AttentionGrad { .. } => "attention_grad",
            Op::Windows(_) => "windows",
            Op::Unwindows(_) => "unwindows",
            Op::Conv(_) => "conv",
            Op::ConvInputGrad(_) => "conv_input_grad",
            Op::ConvWeightGrad(_) => "conv_weight_grad",
            Op::MaxPoolGather(_) => "max_pool_gather",
            Op::MaxPoolScatter(_) => "max_pool_scatter",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Op::Input { name: n, .. } | Op::Param { name: n, .. } => write!(f, "{name} {n}"),
            Op::Const(c) => write!(f, "{name} {c}"),
            Op::Iota { shape, axis } => write!(f, "{name} {shape} axis={axis}"),
            Op::Numel(s) | Op::Broadcast(s) | Op::Reshape(s) => write!(f, "{name} {s}"),
            Op::Reduce(_, axes) | Op::Transpose(axes) => write!(f, "{name} {axes:?}"),
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Select
            | Op::MatMul
            | Op::BatchMatMul
            | Op::Gather => {
                write!(f, "{name}")
            }
            Op::Slice { axis, start, len } => {
                write!(f, "{name} axis={axis} {start}..{}", start + len)
            }
            Op::Concat { axis, parts } => write!(f, "{name} axis={axis} parts={parts}"),
            Op::ScatterAdd { rows } => write!(f, "{name} rows={rows}"),
            Op::Attention { .. } | Op::AttentionGrad { .. } => {
                let (causal, scale, heads) = self.attention().expect("an attention op");
                write!(f, "{name} causal={causal} scale={scale} heads={heads}")
            }
            Op::Windows(w)
            | Op::Unwindows(w)
            | Op::Conv(w)
            | Op::ConvInputGrad(w)
            | Op::ConvWeightGrad(w)
            | Op::MaxPoolGather(w)
            | Op::MaxPoolScatter(w) => write!(f, "{name} {w}"),
        }
    }
}

fn reduce_shape(input: &Shape, axes: &[usize]) -> Result<Shape, ShapeError> {
    let mut dims = input.0.clone();
    for (i, &axis) in axes.iter().enumerate() {
        if axis >= input.rank() || axes[..i].contains(&axis) {
            return Err(ShapeError(format!(
                "bad reduction axes {axes:?} for shape {input}"
            )));
        }
        dims[axis] = Dim::Known(1);
    }
    Ok(Shape(dims))
}

fn concat_shape(parts: &[&Shape], axis: usize) -> Result<Shape, ShapeError> {
    let first = parts
        .first()
        .ok_or_else(|| ShapeError("a concatenation needs at least one operand".into()))?;
    let mut total = 0;
    for part in parts {
        let same_elsewhere = part.rank() == first.rank()
            && (0..first.rank()).all(|a| a == axis || part.0[a] == first.0[a]);
        match part.dims().get(axis) {
            Some(Dim::Known(n)) if same_elsewhere => total += n,
            _ => {
                return Err(ShapeError(format!(
                    "cannot join {first} and {part} along axis {axis}: the other axes must be equal and axis {axis} known"
                )));
            }
        }
    }
    let mut dims = first.0.clone();
    dims[axis] = Dim::Known(total);
    Ok(Shape(dims))
}

fn transpose_shape(input: &Shape, perm: &[usize]) -> Result<Shape, ShapeError> {
    let mut seen = vec![false; input.rank()];
    let valid = perm.len() == input.rank()
        && perm
            .iter()
            .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
    if !valid {
        return Err(ShapeError(format!(
            "{perm:?} is not a permutation of the {} axes of {input}",
            input.rank()
        )));
    }
    Ok(Shape(perm.iter().map(|&p| input.0[p].clone()).collect()))
}

fn matmul_shape(a: &Shape, b: &Shape) -> Result<Shape, ShapeError> {
    match (a.dims(), b.dims()) {
        ([m, k1], [k2, n]) if k1 == k2 => Ok(Shape(vec![m.clone(), n.clone()])),
        ([_, k1], [k2, _]) => Err(ShapeError(format!(
            "matmul {a} @ {b}: inner dimensions {k1} and {k2} differ"
        ))),
        _ => Err(ShapeError(format!(
            "matmul {a} @ {b}: both operands must be matrices (rank 2)"
        ))),
    }
}

fn batch_matmul_shape(a: &Shape, b: &Shape) -> Result<Shape, ShapeError> {
    match (a.dims(), b.dims()) {
        ([s1, m, k1], [s2, k2, n]) if s1 == s2 && k1 == k2 => {
            Ok(Shape(vec![s1.clone(), m.clone(), n.clone()]))
        }
        ([s1, _, k1], [s2, k2, _]) if s1 == s2 => Err(ShapeError(format!(
            "matmul {a} @ {b}: inner dimensions {k1} and {k2} differ"
        ))),
        ([s1, ..], [s2, ..]) if a.rank() == 3 && b.rank() == 3 => Err(ShapeError(format!(
            "matmul {a} @ {b}: batch dimensions {s1} and {s2} differ"
        ))),
        _ => Err(ShapeError(format!(
            "batched matmul {a} @ {b}: both operands must have rank 3"
        ))),
    }
}

/// The shapes of attention's output and of its gradient (see [`Op::Attention`]).
fn attention_shape(heads: usize, operands: &[&Shape]) -> Result<(Shape, Shape), ShapeError> {
    let known = |s: &Shape| match s.dims() {
        [b, x, y] => Some((b.clone(), x.known()?, y.known()?)),
        _ => None,
    };
    if heads > 0 {
        return match operands {
            [qkv] => match known(qkv) {
                Some((b, t, width)) if width % (3 * heads) == 0 => Ok((
                    Shape(vec![b, Dim::Known(t), Dim::Known(width / 3)]),
                    (*qkv).clone(),
                )),
                _ => Err(ShapeError(format!(
                    "self-attention of {heads} heads needs queries, keys and values side by side, [B, T, 3 {heads} D] of known sizes, got {qkv}"
                ))),
            },
            _ => unreachable!("one operand"),
        };
    }
    let [q, k, v] = operands else {
        unreachable!("three operands")
    };
    match (known(q), known(k), known(v)) {
        (Some((s, tq, d)), Some((s2, tk, d2)), Some((s3, tk2, dv)))
            if s == s2 && s == s3 && d == d2 && tk == tk2 =>
        {
            let out = Shape(vec![s.clone(), Dim::Known(tq), Dim::Known(dv)]);
            let grad = Shape(vec![s, Dim::Known(tq * d + tk * d + tk * dv)]);
            Ok((out, grad))
        }
        _ => Err(ShapeError(format!(
            "attention needs queries [S, Tq, D], keys [S, Tk, D] and values [S, Tk, Dv] of known sizes, got {q}, {k} and {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_errors_name_both_shapes() {
        let a = Shape(vec![Dim::sym("B"), Dim::Known(3)]);
        let b = Shape::known(&[4, 2]);
        let err = Op::MatMul.infer_shape(&[&a, &b]).unwrap_err();
        assert_eq!(
            err.0,
            "matmul [B, 3] @ [4, 2]: inner dimensions 3 and 4 differ"
        );
        let ok = Op::MatMul
            .infer_shape(&[&a, &Shape::known(&[3, 2])])
            .unwrap();
        assert_eq!(ok.to_string(), "[B, 2]");
    }

    #[test]
    fn reductions_keep_axes_and_transposes_permute() {
        let x = Shape::known(&[2, 3, 4]);
        let r = Op::Reduce(ReduceOp::Sum, vec![0, 2])
            .infer_shape(&[&x])
            .unwrap();
        assert_eq!(r, Shape::known(&[1, 3, 1]));
        assert!(
            Op::Reduce(ReduceOp::Sum, vec![3])
                .infer_shape(&[&x])
                .is_err()
        );
        let t = Op::Transpose(vec![2, 0, 1]).infer_shape(&[&x]).unwrap();
        assert_eq!(t, Shape::known(&[4, 2, 3]));
        assert!(Op::Transpose(vec![0, 0, 1]).infer_shape(&[&x]).is_err());
    }

    #[test]
    fn scalars_have_one_zero() {
        assert_eq!(Scalar::new(0.0), Scalar::new(-0.0));
        assert_eq!(Scalar::new(2.5).get(), 2.5);
    }
}
