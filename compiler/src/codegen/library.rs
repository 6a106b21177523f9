//! The library generated code calls for what affine loops cannot express (a [`Phase::Call`]):
//! windows of images (im2col and col2im, through [`Window::visit`], the walk the interpreter
//! uses) and the three forms of convolution, each image lowered to its windows (in a scratch
//! buffer that stays in cache and is reused across calls) and one tuned matrix product.
//!
//! [`Phase::Call`]: crate::kernel::Phase::Call

use std::cell::RefCell;

use crate::ir::{Fill, Window};
use crate::kernel::Call;

thread_local! {
    /// One image's windows; grown once to the largest size seen, then reused.
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// A float type the library computes in.
pub(super) trait Float:
    'static + Copy + Send + Sync + num_traits::Float + num_traits::Zero + num_traits::One
{
    /// Its value of `v`.
    fn of(v: f64) -> Self;
}

impl Float for f32 {
    fn of(v: f64) -> f32 {
        v as f32
    }
}

impl Float for f64 {
    fn of(v: f64) -> f64 {
        v
    }
}

/// The geometry generated code passes: ten sizes and the fill.
pub(super) fn window(sizes: &[usize; 10], neg_inf: bool) -> Window {
    Window {
        image: [sizes[0], sizes[1]],
        kernel: [sizes[2], sizes[3]],
        stride: [sizes[4], sizes[5]],
        padding: [sizes[6], sizes[7]],
        dilation: [sizes[8], sizes[9]],
        fill: if neg_inf { Fill::NegInf } else { Fill::Zero },
    }
}

/// The element counts of a call's operands and output.
pub(super) fn lengths(call: Call, w: &Window, [n, c, o]: [usize; 3]) -> ([usize; 2], usize) {
    let [oh, ow] = w.output().unwrap_or_default();
    let image = n * c * w.image[0] * w.image[1];
    let rows = n * oh * ow * c * w.kernel[0] * w.kernel[1];
    let weight = o * c * w.kernel[0] * w.kernel[1];
    let outputs = n * o * oh * ow;
    match call {
        Call::Windows => ([image, 0], rows),
        Call::Unwindows => ([rows, 0], image),
        Call::Conv => ([image, weight], outputs),
        Call::ConvInputGrad => ([outputs, weight], image),
        Call::ConvWeightGrad => ([image, outputs], weight),
    }
}

/// Runs `call` on whole row-major buffers.
pub(super) fn run<T: Float>(
    call: Call,
    w: &Window,
    sizes: [usize; 3],
    a: &[T],
    b: &[T],
    out: &mut [T],
) {
    let [n, c, o] = sizes;
    match call {
        Call::Windows => {
            let fill = T::of(w.fill.value());
            w.visit(n, c, |e, pixel| out[e] = pixel.map_or(fill, |p| a[p]));
        }
        Call::Unwindows => {
            out.fill(T::zero());
            w.visit(n, c, |e, pixel| {
                if let Some(p) = pixel {
                    out[p] = out[p] + a[e];
                }
            });
        }
        Call::Conv | Call::ConvInputGrad | Call::ConvWeightGrad => {
            convolve(call, w, sizes, a, b, out)
        }
    }
    let _ = o;
}

/// The three forms of convolution, one image at a time: its windows `cols [P, CKK]` (P output
/// positions, CKK = channels times kernel elements) in scratch memory, and the weight
/// `[O, CKK]`:
/// - `Conv`: `y_n [O, P] = W @ cols^T`;
/// - `ConvInputGrad`: `cols' = dy_n^T @ W`, then summed back into `dx_n` (col2im);
/// - `ConvWeightGrad`: `dW += dy_n @ cols`.
fn convolve<T: Float>(
    call: Call,
    w: &Window,
    [n, c, o]: [usize; 3],
    a: &[T],
    b: &[T],
    out: &mut [T],
) {
    let [oh, ow] = w.output().unwrap_or_default();
    let p = oh * ow;
    let ckk = c * w.kernel[0] * w.kernel[1];
    let image = c * w.image[0] * w.image[1];
    let zero = Window {
        fill: Fill::Zero,
        ..*w
    };
    if call != Call::Conv {
        out.fill(T::zero());
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let words = (p * ckk * std::mem::size_of::<T>()).div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0.0);
        }
        // SAFETY: f64 storage is aligned for any float type and holds `p * ckk` of them.
        let cols: &mut [T] =
            unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<T>(), p * ckk) };
        for i in 0..n {
            match call {
                Call::Conv => {
                    let x = &a[i * image..(i + 1) * image];
                    zero.visit(1, c, |e, pixel| cols[e] = pixel.map_or(T::zero(), |q| x[q]));
                    let y = &mut out[i * o * p..(i + 1) * o * p];
                    // y [O, P] = W [O, CKK] @ cols^T [CKK, P]
                    gemm(
                        o,
                        p,
                        ckk,
                        y,
                        (b, ckk as isize, 1),
                        (cols, 1, ckk as isize),
                        false,
                    );
                }
                Call::ConvInputGrad => {
                    let dy = &a[i * o * p..(i + 1) * o * p];
                    // cols [P, CKK] = dy_n^T [P, O] @ W [O, CKK]
                    gemm(
                        p,
                        ckk,
                        o,
                        cols,
                        (dy, 1, p as isize),
                        (b, ckk as isize, 1),
                        false,
                    );
                    let dx = &mut out[i * image..(i + 1) * image];
                    zero.visit(1, c, |e, pixel| {
                        if let Some(q) = pixel {
                            dx[q] = dx[q] + cols[e];
                        }
                    });
                }
                Call::ConvWeightGrad => {
                    let x = &a[i * image..(i + 1) * image];
                    zero.visit(1, c, |e, pixel| cols[e] = pixel.map_or(T::zero(), |q| x[q]));
                    let dy = &b[i * o * p..(i + 1) * o * p];
                    // dW [O, CKK] += dy_n [O, P] @ cols [P, CKK]
                    gemm(
                        o,
                        ckk,
                        p,
                        out,
                        (dy, p as isize, 1),
                        (cols, ckk as isize, 1),
                        true,
                    );
                }
                Call::Windows | Call::Unwindows => unreachable!("not a convolution"),
            }
        }
    });
}

/// `c [m, n] (+)= A [m, k] @ B [k, n]`, the operands given as `(elements, row stride, column
/// stride)` and `c` row-major; with `accumulate`, added to what `c` holds.
fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    (a, a_row, a_col): (&[T], isize, isize),
    (b, b_row, b_col): (&[T], isize, isize),
    accumulate: bool,
) {
    debug_assert!(c.len() >= m * n);
    // SAFETY: the strides stay inside `a` and `b` (each call above passes the full operand
    // of an image), and `c` is a distinct buffer of `m * n` elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_col,
            a_row,
            b.as_ptr(),
            b_col,
            b_row,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
