//! The library generated code calls for what affine loops cannot express (a [`Phase::Call`]):
//! windows of images (im2col and col2im in the `[N, OH, OW, C, KH, KW]` layout of the ops,
//! through [`Window::visit`], the walk the interpreter uses) and the three forms of
//! convolution, each image lowered to its windows in the layout a matrix product wants (in a
//! per-thread scratch buffer that stays in cache and is reused across calls) and one tuned
//! matrix product, images split over threads.
//!
//! [`Phase::Call`]: crate::kernel::Phase::Call

use std::cell::RefCell;
use std::sync::Mutex;

use super::parallel;
use crate::ir::Window;
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

    /// An integer ordered as max pooling compares: by value, `-0` equal to `+0`, and every NaN
    /// above everything (PyTorch propagates it). Comparing integers lets the compiler pick with
    /// conditional moves, where float comparisons become branches that real activations
    /// mispredict half the time.
    fn max_key(self) -> i64;
}

impl Float for f32 {
    fn of(v: f64) -> f32 {
        v as f32
    }

    fn max_key(self) -> i64 {
        let bits = self.to_bits() as i32;
        let sign = bits >> 31;
        // Sign and magnitude to two's complement; negatives move up by one so that -0 is 0.
        let ordered = (bits ^ (sign & i32::MAX)) - sign;
        let nan = bits & i32::MAX > 0x7f80_0000;
        std::hint::select_unpredictable(nan, i64::MAX, ordered.into())
    }
}

impl Float for f64 {
    fn of(v: f64) -> f64 {
        v
    }

    fn max_key(self) -> i64 {
        let bits = self.to_bits() as i64;
        let sign = bits >> 63;
        let ordered = (bits ^ (sign & i64::MAX)) - sign;
        let nan = bits & i64::MAX > 0x7ff0_0000_0000_0000;
        std::hint::select_unpredictable(nan, i64::MAX, ordered)
    }
}

/// How many sizes `call` takes, from its first three.
pub(super) fn arg_count(call: Call, head: &[usize]) -> usize {
    match call {
        Call::Slice => 5,
        Call::Concat => 3 + head[2],
        Call::Gather | Call::ScatterAdd => 3,
        _ => 14,
    }
}

/// How many operands `call` reads.
pub(super) fn operand_count(call: Call, args: &[usize]) -> usize {
    match call {
        Call::Concat => args[2],
        Call::Windows | Call::Unwindows | Call::Slice => 1,
        _ => 2,
    }
}

/// The element count of operand `i` of a call, or of its output for `None`.
pub(super) fn length(call: Call, args: &[usize], operand: Option<usize>) -> usize {
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

/// Runs `call` on whole row-major buffers (operand `i` is `input(i)`), convolutions and
/// pooling on up to `threads` threads.
pub(super) fn run<'a, T: Float>(
    call: Call,
    args: &[usize],
    input: impl Fn(usize) -> &'a [T],
    out: &mut [T],
    threads: usize,
) {
    match call {
        Call::Slice => {
            let [outer, size, inner, start, len] = args[..5] else {
                unreachable!("five sizes")
            };
            let x = input(0);
            for (o, dst) in out.chunks_exact_mut(len * inner).take(outer).enumerate() {
                let from = (o * size + start) * inner;
                dst.copy_from_slice(&x[from..from + len * inner]);
            }
        }
        Call::Concat => {
            let (outer, inner) = (args[0], args[1]);
            let mut at = 0;
            for o in 0..outer {
                for (part, &len) in (0..args[2]).map(&input).zip(&args[3..]) {
                    let n = len * inner;
                    out[at..at + n].copy_from_slice(&part[o * n..(o + 1) * n]);
                    at += n;
                }
            }
        }
        Call::Gather => {
            let width = args[1];
            let (table, index) = (input(0), input(1));
            for (row, &i) in out.chunks_exact_mut(width).zip(index) {
                match table_row(i, args[2]) {
                    Some(r) => row.copy_from_slice(&table[r * width..(r + 1) * width]),
                    None => row.fill(T::zero()),
                }
            }
        }
        Call::ScatterAdd => {
            let width = args[1];
            let (index, g) = (input(0), input(1));
            out.fill(T::zero());
            for (grad, &i) in g.chunks_exact(width).zip(index) {
                if let Some(r) = table_row(i, args[2]) {
                    for (d, &v) in out[r * width..(r + 1) * width].iter_mut().zip(grad) {
                        *d = *d + v;
                    }
                }
            }
        }
        _ => {
            let (w, sizes) = Call::window_of(args);
            let [n, c, _] = sizes;
            let a = input(0);
            let b = if operand_count(call, args) > 1 {
                input(1)
            } else {
                &[]
            };
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
                Call::MaxPoolGather | Call::MaxPoolScatter => {
                    pool(call, &w, [n, c], a, b, out, threads)
                }
                _ => convolve(call, &w, sizes, a, b, out, threads),
            }
        }
    }
}

/// The three forms of convolution, one image at a time, images split into `threads` bands of
/// consecutive images run on the fork-join pool. Each image's windows go to a scratch buffer `cols
/// [CKK, P]` (CKK = channels times kernel elements, one row per kernel element; P = output
/// positions, contiguous), and with the weight `W [O, CKK]`:
/// - `Conv`: `y_n [O, P] = W @ cols`;
/// - `ConvInputGrad`: `cols = W^T @ dy_n`, then summed back into `dx_n` (col2im);
/// - `ConvWeightGrad`: `dW = sum over n of dy_n @ cols^T`, each band summing its images into
///   its own partial sum, the partial sums then added in band order, so the result depends
///   on the thread count but not on timing.
fn convolve<T: Float>(
    call: Call,
    w: &Window,
    [n, c, o]: [usize; 3],
    a: &[T],
    b: &[T],
    out: &mut [T],
    threads: usize,
) {
    let [oh, ow] = w.output().unwrap_or_default();
    let p = oh * ow;
    let ckk = c * w.kernel[0] * w.kernel[1];
    let image = c * w.image[0] * w.image[1];
    let bands = threads.clamp(1, n.max(1));
    let band = |k: usize| n * k / bands..n * (k + 1) / bands;
    match call {
        Call::Conv => {
            let mut parts: Vec<&mut [T]> = split(out, (0..bands).map(|k| band(k).len() * o * p));
            for_each_band(&mut parts, threads, |k, y| {
                with_scratch(ckk * p, |cols| {
                    for (j, i) in band(k).enumerate() {
                        im2col(w, c, &a[i * image..(i + 1) * image], cols);
                        let y = &mut y[j * o * p..(j + 1) * o * p];
                        gemm(
                            o,
                            p,
                            ckk,
                            y,
                            (b, ckk as isize, 1),
                            (cols, p as isize, 1),
                            false,
                        );
                    }
                });
            });
        }
        Call::ConvInputGrad => {
            let mut parts: Vec<&mut [T]> = split(out, (0..bands).map(|k| band(k).len() * image));
            for_each_band(&mut parts, threads, |k, dx| {
                with_scratch(ckk * p, |cols| {
                    for (j, i) in band(k).enumerate() {
                        let dy = &a[i * o * p..(i + 1) * o * p];
                        gemm(
                            ckk,
                            p,
                            o,
                            cols,
                            (b, 1, ckk as isize),
                            (dy, p as isize, 1),
                            false,
                        );
                        let dx = &mut dx[j * image..(j + 1) * image];
                        dx.fill(T::zero());
                        col2im(w, c, cols, dx);
                    }
                });
            });
        }
        Call::ConvWeightGrad => {
            let mut partial = vec![T::zero(); (bands - 1) * o * ckk];
            let mut parts: Vec<&mut [T]> = vec![&mut *out];
            parts.extend(partial.chunks_mut(o * ckk));
            for_each_band(&mut parts, threads, |k, dw| {
                dw.fill(T::zero());
                with_scratch(ckk * p, |cols| {
                    for i in band(k) {
                        im2col(w, c, &a[i * image..(i + 1) * image], cols);
                        let dy = &b[i * o * p..(i + 1) * o * p];
                        gemm(
                            o,
                            ckk,
                            p,
                            dw,
                            (dy, p as isize, 1),
                            (cols, 1, p as isize),
                            true,
                        );
                    }
                });
            });
            for part in partial.chunks(o * ckk) {
                for (d, &v) in out.iter_mut().zip(part) {
                    *d = *d + v;
                }
            }
        }
        _ => unreachable!("not a convolution"),
    }
}

/// Max pooling's gather and scatter, images split into `threads` bands (each image's planes
/// are independent).
fn pool<T: Float>(
    call: Call,
    w: &Window,
    [n, c]: [usize; 2],
    x: &[T],
    b: &[T],
    out: &mut [T],
    threads: usize,
) {
    let [oh, ow] = w.output().unwrap_or_default();
    let (image, pooled) = (c * w.image[0] * w.image[1], c * oh * ow);
    let bands = threads.clamp(1, n.max(1));
    let band = |k: usize| n * k / bands..n * (k + 1) / bands;
    let per_image = if call == Call::MaxPoolGather {
        pooled
    } else {
        image
    };
    let mut parts = split(out, (0..bands).map(|k| band(k).len() * per_image));
    for_each_band(&mut parts, threads, |k, out| {
        let images = band(k);
        let x = &x[images.start * image..images.end * image];
        if call == Call::MaxPoolGather {
            let v = &b[images.start * image..images.end * image];
            let empty = T::of(f64::NEG_INFINITY);
            first_maxima(w, images.len() * c, x, |o, p| {
                out[o] = p.map_or(empty, |p| v[p])
            });
        } else {
            let g = &b[images.start * pooled..images.end * pooled];
            out.fill(T::zero());
            first_maxima(w, images.len() * c, x, |o, p| {
                if let Some(p) = p {
                    out[p] = out[p] + g[o];
                }
            });
        }
    });
}

/// For every output `(plane, y, x)` of max pooling `planes` image planes, in row-major order,
/// calls `f(output, pixel)` with the flat index of the first pixel of the window (row-major)
/// holding its maximum, or `None` when the whole window lies in the padding. The interpreter
/// finds the same pixels by a plain walk over [`Window::visit`].
fn first_maxima<T: Float>(
    w: &Window,
    planes: usize,
    x: &[T],
    mut f: impl FnMut(usize, Option<usize>),
) {
    let Ok([oh, ow]) = w.output() else {
        return;
    };
    if (w.kernel, w.stride, w.padding, w.dilation) == ([2, 2], [2, 2], [0, 0], [1, 1]) {
        return first_maxima_2x2(w.image, planes, x, f);
    }
    let [h, width] = w.image;
    let [kh, kw] = w.kernel;
    let [dr, dc] = w.dilation;
    // Per output row (column): the kernel rows (columns) inside the image, and the image row
    // (column) of kernel row (column) 0, which may be negative.
    let ranges = |out: usize, a: usize, size: usize| -> Vec<(usize, usize, isize)> {
        let (s, d, p) = (
            w.stride[a] as isize,
            w.dilation[a] as isize,
            w.padding[a] as isize,
        );
        let k = w.kernel[a] as isize;
        (0..out as isize)
            .map(|o| {
                let start = o * s - p;
                let lo = if start < 0 { (-start + d - 1) / d } else { 0 }.min(k);
                let hi = (size as isize - start + d - 1).div_euclid(d).clamp(lo, k);
                (lo as usize, hi as usize, start)
            })
            .collect()
    };
    let (rows, cols) = (ranges(oh, 0, h), ranges(ow, 1, width));
    // Where a window wholly inside the image reads, from its first pixel.
    let inside: Vec<usize> = (0..kh)
        .flat_map(|i| (0..kw).map(move |j| i * dr * width + j * dc))
        .collect();
    let mut output = 0;
    for plane in 0..planes {
        let image = &x[plane * h * width..(plane + 1) * h * width];
        for &(i0, i1, r0) in &rows {
            for &(j0, j1, c0) in &cols {
                let best = if (i0, i1, j0, j1) == (0, kh, 0, kw) {
                    let first = r0 as usize * width + c0 as usize;
                    first_maximum(image, inside.iter().map(|&o| first + o))
                } else {
                    let pixels = (i0..i1).flat_map(|i| {
                        let line = (r0 + (i * dr) as isize) as usize * width;
                        (j0..j1).map(move |j| line + (c0 + (j * dc) as isize) as usize)
                    });
                    first_maximum(image, pixels)
                };
                f(output, best.map(|p| plane * h * width + p));
                output += 1;
            }
        }
    }
}

/// [`first_maxima`] for the most common pooling, 2x2 windows side by side: a tournament per
/// window (the first maximum of each row pair, then the lower pair's only if strictly larger),
/// picking with arithmetic rather than selects, which the compiler may turn into branches.
/// About twice as fast as the general walk.
fn first_maxima_2x2<T: Float>(
    [h, width]: [usize; 2],
    planes: usize,
    x: &[T],
    mut f: impl FnMut(usize, Option<usize>),
) {
    let (oh, ow) = (h / 2, width / 2);
    let mut output = 0;
    for plane in 0..planes {
        for y in 0..oh {
            let upper = (plane * h + 2 * y) * width;
            let pairs = x[upper..upper + 2 * ow]
                .chunks_exact(2)
                .zip(x[upper + width..upper + width + 2 * ow].chunks_exact(2));
            for (k, (a, b)) in pairs.enumerate() {
                let (ka, kb) = (a[0].max_key(), a[1].max_key());
                let (kc, kd) = (b[0].max_key(), b[1].max_key());
                let (first, top) = ((kb > ka) as usize, ka.max(kb));
                let (second, bottom) = (width + (kd > kc) as usize, kc.max(kd));
                let offset = first + (bottom > top) as usize * (second - first);
                f(output, Some(upper + 2 * k + offset));
                output += 1;
            }
        }
    }
}

/// The first of `pixels` holding the maximum of `values` (see [`Float::max_key`]), if any.
fn first_maximum<T: Float>(values: &[T], pixels: impl Iterator<Item = usize>) -> Option<usize> {
    let (mut best, mut top) = (usize::MAX, i64::MIN);
    for p in pixels {
        let key = values[p].max_key();
        let wins = key > top;
        best = std::hint::select_unpredictable(wins, p, best);
        top = std::hint::select_unpredictable(wins, key, top);
    }
    (best != usize::MAX).then_some(best)
}

/// `buffer` cut into consecutive parts of the given lengths.
fn split<T>(mut buffer: &mut [T], lengths: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for len in lengths {
        let (part, rest) = std::mem::take(&mut buffer).split_at_mut(len);
        parts.push(part);
        buffer = rest;
    }
    parts
}

/// Runs `f(k, part)` for every part, on up to `threads` threads.
fn for_each_band<T: Send>(
    parts: &mut [&mut [T]],
    threads: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let parts: Vec<Mutex<&mut [T]>> = parts.iter_mut().map(|p| Mutex::new(&mut **p)).collect();
    parallel::for_each_part(parts.len(), threads, &|k| {
        let mut part = parts[k].lock().unwrap_or_else(|e| e.into_inner());
        f(k, &mut part)
    });
}

/// Runs `f` on this thread's scratch buffer of `len` elements.
fn with_scratch<T: Float>(len: usize, f: impl FnOnce(&mut [T])) {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let words = (len * std::mem::size_of::<T>()).div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0.0);
        }
        // SAFETY: f64 storage is aligned for any float type and holds `len` of them.
        let cols = unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<T>(), len) };
        f(cols);
    });
}

/// One image's windows, `cols [C KH KW, OH OW]`: row `(c, i, j)` holds, for every output
/// position, the pixel that kernel element reads (0 in the padding).
fn im2col<T: Float>(w: &Window, channels: usize, x: &[T], cols: &mut [T]) {
    let [oh, ow] = w.output().unwrap_or_default();
    let stride = w.stride[1];
    for_each_row(w, channels, |row, g| {
        let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
        if let Some(run) = g.run(oh, ow) {
            // One copy, then zeros where rows wrapped around the image's edge.
            dst[..run.to].fill(T::zero());
            dst[run.to..run.to + run.len].copy_from_slice(&x[run.from..run.from + run.len]);
            dst[run.to + run.len..].fill(T::zero());
            run.zero_gaps(dst);
            return;
        }
        for y in 0..oh {
            let line = &mut dst[y * ow..(y + 1) * ow];
            let Some(start) = g.line(y) else {
                line.fill(T::zero());
                continue;
            };
            line[..g.x0].fill(T::zero());
            line[g.x1..].fill(T::zero());
            let src = &x[start..];
            let inside = &mut line[g.x0..g.x1];
            if stride == 1 {
                inside.copy_from_slice(&src[..inside.len()]);
            } else {
                for (k, d) in inside.iter_mut().enumerate() {
                    *d = src[k * stride];
                }
            }
        }
    });
}

/// The adjoint of [`im2col`]: adds every element of `cols` to the pixel it was read from
/// (clobbering the elements that read padding).
fn col2im<T: Float>(w: &Window, channels: usize, cols: &mut [T], x: &mut [T]) {
    let [oh, ow] = w.output().unwrap_or_default();
    let stride = w.stride[1];
    for_each_row(w, channels, |row, g| {
        let from = &mut cols[row * oh * ow..(row + 1) * oh * ow];
        if let Some(run) = g.run(oh, ow) {
            // What read padding inside the run must not land on the next row's pixels.
            run.zero_gaps(from);
            let src = &from[run.to..run.to + run.len];
            for (d, &v) in x[run.from..run.from + run.len].iter_mut().zip(src) {
                *d = *d + v;
            }
            return;
        }
        for y in 0..oh {
            let Some(start) = g.line(y) else { continue };
            let line = &from[y * ow + g.x0..y * ow + g.x1];
            let dst = &mut x[start..];
            for (k, &v) in line.iter().enumerate() {
                dst[k * stride] = dst[k * stride] + v;
            }
        }
    });
}

/// Where a row of the windows whose output rows read consecutive image rows end to end reads:
/// `len` elements of the image from `from`, into the row from `to`. Between output rows, the
/// run also spans the padding at the row ends (its gaps), which it reads from the image's
/// next row.
struct Run {
    from: usize,
    to: usize,
    len: usize,
    /// Output width and kernel columns `x0..x1` inside the image.
    width: usize,
    inside: std::ops::Range<usize>,
    /// Output rows inside the image.
    rows: std::ops::Range<usize>,
}

impl Run {
    /// Zeroes the spans of `row`, between two output rows inside the image, that read padding.
    /// A column of the gaps at a time: gaps are a few elements, and a call to `memset` each
    /// cost more than the copy.
    fn zero_gaps<T: Float>(&self, row: &mut [T]) {
        let gap = self.width - self.inside.len();
        for k in 0..gap {
            for y in self.rows.start + 1..self.rows.end {
                row[(y - 1) * self.width + self.inside.end + k] = T::zero();
            }
        }
    }
}

/// Where one row of the windows (one kernel element `(c, i, j)`) reads.
struct Row {
    /// Flat index of pixel `(0, 0)` of its channel.
    plane: usize,
    /// Its offset from a window's corner: `(i d - p, j d - p)`.
    offset: [isize; 2],
    /// `[row stride, image width, image height]`.
    geometry: [usize; 3],
    /// Column stride.
    stride: usize,
    /// Output columns `x0..x1` read inside the image.
    x0: usize,
    x1: usize,
}

impl Row {
    /// The whole row as one run, when output rows follow each other in the image as they do in
    /// the row (a column stride of 1 and `ow` equal to a row stride of image rows, as in a
    /// "same" convolution) and some output row reads inside the image.
    fn run(&self, oh: usize, ow: usize) -> Option<Run> {
        let [stride, width, height] = self.geometry;
        if self.stride != 1 || ow != stride * width || self.x0 >= self.x1 {
            return None;
        }
        let (s, dy) = (stride as isize, self.offset[0]);
        let first = if dy < 0 { (-dy + s - 1) / s } else { 0 };
        let end = (height as isize - dy + s - 1)
            .div_euclid(s)
            .min(oh as isize);
        if first >= end {
            return None;
        }
        let rows = first as usize..end as usize;
        Some(Run {
            from: self.line(rows.start)?,
            to: rows.start * ow + self.x0,
            len: (rows.len() - 1) * ow + self.x1 - self.x0,
            width: ow,
            inside: self.x0..self.x1,
            rows,
        })
    }

    /// The flat index output `(y, x0)` reads (output `(y, x)` reads it plus `(x - x0) s`):
    /// `None` when row `y` reads padding.
    fn line(&self, y: usize) -> Option<usize> {
        let [stride, width, height] = self.geometry;
        let r = (y * stride) as isize + self.offset[0];
        if r < 0 || r >= height as isize || self.x0 >= self.x1 {
            return None;
        }
        let column = (self.x0 * self.stride) as isize + self.offset[1];
        Some((self.plane as isize + r * width as isize + column) as usize)
    }
}

/// Calls `f(row, geometry)` for the rows of the windows, in order `(c, i, j)` (plain loops:
/// an iterator chain here did not inline and cost more than the copies).
fn for_each_row(w: &Window, channels: usize, mut f: impl FnMut(usize, &Row)) {
    let [_, ow] = w.output().unwrap_or_default();
    let [h, wd] = w.image;
    let s = w.stride[1] as isize;
    let mut row = 0;
    for c in 0..channels {
        for i in 0..w.kernel[0] {
            let dy = (i * w.dilation[0]) as isize - w.padding[0] as isize;
            for j in 0..w.kernel[1] {
                let dx = (j * w.dilation[1]) as isize - w.padding[1] as isize;
                // Columns whose input `x s + dx` lies in `0..wd`.
                let x0 = if dx < 0 { (-dx + s - 1) / s } else { 0 };
                let x1 = ((wd as isize - dx + s - 1).div_euclid(s)).clamp(0, ow as isize);
                let g = Row {
                    plane: c * h * wd,
                    offset: [dy, dx],
                    geometry: [w.stride[0], wd, h],
                    stride: w.stride[1],
                    x0: (x0 as usize).min(ow),
                    x1: (x1 as usize).max((x0 as usize).min(ow)),
                };
                f(row, &g);
                row += 1;
            }
        }
    }
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
        strided_gemm(
            [m, n, k],
            (c.as_mut_ptr(), n as isize),
            (a.as_ptr(), a_row, a_col),
            (b.as_ptr(), b_row, b_col),
            accumulate,
        )
    }
}

/// The table row an index stored as a float names: a whole number in `0..rows`, else none (the
/// gather reads zeros, the scatter adds nothing). The interpreter decides the same on its own.
fn table_row<T: Float>(index: T, rows: usize) -> Option<usize> {
    let i = index.to_f64()?;
    (i >= 0.0 && i < rows as f64 && i.fract() == 0.0).then_some(i as usize)
}

/// The one call into the `gemm` crate, on this thread: `c [m, n] (+)= A [m, k] @ B [k, n]`,
/// every operand given by its start and strides (`c` by its row stride, columns contiguous),
/// so transposed operands cost nothing.
///
/// # Safety
/// The strides stay inside each operand, and `c` overlaps neither `a` nor `b`.
pub(super) unsafe fn strided_gemm<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    [m, n, k]: [usize; 3],
    (c, c_row): (*mut T, isize),
    (a, a_row, a_col): (*const T, isize, isize),
    (b, b_row, b_col): (*const T, isize, isize),
    accumulate: bool,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_row,
            accumulate,
            a,
            a_col,
            a_row,
            b,
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
