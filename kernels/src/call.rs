//! The library's routines, numbered for generated code, and how each one's sizes are laid out:
//! how many words it takes, how many operands it reads, and every buffer's length, from which
//! the shim makes slices of the addresses generated code passes.

use crate::{Fill, Window};

/// A library routine, one per op of the compiler's graph of the same name (its kernel IR calls
/// it from a `Phase::Call`); the reference interpreter's definitions are the reference. Each says how its sizes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `Op::Windows` (im2col); window routines take [`Call::window_args`].
    Windows,
    /// `Op::Unwindows` (col2im).
    Unwindows,
    /// `Op::Conv`.
    Conv,
    /// `Op::ConvInputGrad`.
    ConvInputGrad,
    /// `Op::ConvWeightGrad`.
    ConvWeightGrad,
    /// `Op::MaxPoolGather`.
    MaxPoolGather,
    /// `Op::MaxPoolScatter`.
    MaxPoolScatter,
    /// `Op::Slice`: `[outer, axis size, inner, start, len]`, the operand seen as
    /// `[outer, axis size, inner]`.
    Slice,
    /// `Op::Concat`: `[outer, inner, parts, len_0, len_1, ...]`, part `p` seen as
    /// `[outer, len_p, inner]`.
    Concat,
    /// `Op::Gather`: `[indices, row width, table rows]`.
    Gather,
    /// `Op::ScatterAdd`: `[indices, row width, table rows]`.
    ScatterAdd,
    /// `Op::BatchMatMul`: `[products, m, k, n]`, operands `[products, m, k]` and
    /// `[products, k, n]`.
    BatchMatMul,
    /// `Op::Attention`: `[products, Tq, Tk, D, Dv, causal, the scale's f64 bits, heads]`,
    /// operands `q`, `k`, `v` when `heads` is 0; otherwise `products` examples of one packed
    /// `qkv [T, 3 heads D]` each.
    Attention,
    /// `Op::AttentionGrad`: sizes as [`Call::Attention`], operands its operands and the
    /// gradient of its output.
    AttentionGrad,
}

impl Call {
    /// Every routine, indexed by the number generated code passes.
    pub const ALL: [Call; 14] = [
        Call::Windows,
        Call::Unwindows,
        Call::Conv,
        Call::ConvInputGrad,
        Call::ConvWeightGrad,
        Call::MaxPoolGather,
        Call::MaxPoolScatter,
        Call::Slice,
        Call::Concat,
        Call::Gather,
        Call::ScatterAdd,
        Call::BatchMatMul,
        Call::Attention,
        Call::AttentionGrad,
    ];

    /// Its number in [`Call::ALL`].
    pub fn number(self) -> usize {
        Call::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// Whether it works on windows of images.
    pub fn is_window(self) -> bool {
        !matches!(
            self,
            Call::Slice
                | Call::Concat
                | Call::Gather
                | Call::ScatterAdd
                | Call::BatchMatMul
                | Call::Attention
                | Call::AttentionGrad
        )
    }

    /// A window routine's sizes: `[images, channels, output channels]` (the last 0 but for
    /// convolutions), then the geometry's ten numbers and whether padding reads -inf.
    pub fn window_args(window: &Window, sizes: [usize; 3]) -> Vec<usize> {
        let geometry = [
            window.image,
            window.kernel,
            window.stride,
            window.padding,
            window.dilation,
        ];
        let fill = usize::from(window.fill == Fill::NegInf);
        sizes
            .into_iter()
            .chain(geometry.concat())
            .chain([fill])
            .collect()
    }

    /// The geometry and sizes [`Call::window_args`] laid out.
    pub fn window_of(args: &[usize]) -> (Window, [usize; 3]) {
        let pair = |i: usize| [args[i], args[i + 1]];
        let window = Window {
            image: pair(3),
            kernel: pair(5),
            stride: pair(7),
            padding: pair(9),
            dilation: pair(11),
            fill: if args[13] != 0 {
                Fill::NegInf
            } else {
                Fill::Zero
            },
        };
        (window, [args[0], args[1], args[2]])
    }
}

/// How many sizes `call` takes, from its first three.
pub fn arg_count(call: Call, head: &[usize]) -> usize {
    match call {
        Call::Slice => 5,
        Call::Concat => 3 + head[2],
        Call::Gather | Call::ScatterAdd => 3,
        Call::BatchMatMul => 4,
        Call::Attention | Call::AttentionGrad => 8,
        _ => 14,
    }
}

/// How many operands `call` reads.
pub fn operand_count(call: Call, args: &[usize]) -> usize {
    match call {
        Call::Concat => args[2],
        Call::Windows | Call::Unwindows | Call::Slice => 1,
        Call::Attention | Call::AttentionGrad => {
            let operands = if args[7] == 0 { 3 } else { 1 };
            operands + usize::from(call == Call::AttentionGrad)
        }
        _ => 2,
    }
}

/// The element count of operand `i` of a call, or of its output for `None`.
pub fn length(call: Call, args: &[usize], operand: Option<usize>) -> usize {
    if matches!(call, Call::Attention | Call::AttentionGrad) {
        let [s, tq, tk, d, dv] = [args[0], args[1], args[2], args[3], args[4]];
        let grad = call == Call::AttentionGrad;
        let heads = args[7];
        if heads > 0 {
            let (packed, merged) = (s * tq * 3 * heads * d, s * tq * heads * d);
            return match operand {
                Some(0) => packed,
                Some(_) => merged,
                None if grad => packed,
                None => merged,
            };
        }
        return match operand {
            Some(0) => s * tq * d,
            Some(1) => s * tk * d,
            Some(2) => s * tk * dv,
            Some(_) => s * tq * dv,
            None if grad => s * (tq * d + tk * d + tk * dv),
            None => s * tq * dv,
        };
    }
    if call == Call::Concat {
        let (outer, inner) = (args[0], args[1]);
        let axis: usize = match operand {
            Some(i) => args[3 + i],
            None => args[3..].iter().sum(),
        };
        return outer * axis * inner;
    }
    let (operands, out): ([usize; 2], usize) = match call {
        Call::Slice => {
            let [outer, size, inner, _, len] = args[..5] else {
                unreachable!("five sizes")
            };
            ([outer * size * inner, 0], outer * len * inner)
        }
        Call::BatchMatMul => {
            let [s, m, k, n] = args[..4] else {
                unreachable!("four sizes")
            };
            ([s * m * k, s * k * n], s * m * n)
        }
        Call::Gather | Call::ScatterAdd => {
            let [indices, width, rows] = args[..3] else {
                unreachable!("three sizes")
            };
            if call == Call::Gather {
                ([rows * width, indices], indices * width)
            } else {
                ([indices, indices * width], rows * width)
            }
        }
        _ => {
            let (w, [n, c, o]) = Call::window_of(args);
            let [oh, ow] = w.output().unwrap_or_default();
            let image = n * c * w.image[0] * w.image[1];
            let rows = n * oh * ow * c * w.kernel[0] * w.kernel[1];
            let weight = o * c * w.kernel[0] * w.kernel[1];
            let outputs = n * o * oh * ow;
            let pooled = n * c * oh * ow;
            match call {
                Call::Windows => ([image, 0], rows),
                Call::Unwindows => ([rows, 0], image),
                Call::Conv => ([image, weight], outputs),
                Call::ConvInputGrad => ([outputs, weight], image),
                Call::ConvWeightGrad => ([image, outputs], weight),
                Call::MaxPoolGather => ([image, image], pooled),
                _ => ([image, pooled], image),
            }
        }
    };
    operand.map_or(out, |i| operands[i])
}
