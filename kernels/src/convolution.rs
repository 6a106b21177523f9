//! Windows of images and the three forms of convolution: each image lowered to its windows in
//! the layout a matrix product wants (im2col, in a per-thread scratch buffer that stays in cache
//! and is reused across calls), one tuned matrix product, and col2im back; images split over
//! threads. Where output rows follow each other in the image (a stride-1 "same" convolution),
//! each kernel element's row is one copy or one add loop.

use std::cell::RefCell;
use std::sync::Mutex;

use crate::float::Float;
use crate::gemm::gemm;
use crate::parallel;
use crate::{Call, Window};

thread_local! {
    /// One image's windows; grown once to the largest size seen, then reused.
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// The three forms of convolution, one image at a time, images split into `threads` bands of
/// consecutive images run on the fork-join pool. Each image's windows go to a scratch buffer `cols
/// [CKK, P]` (CKK = channels times kernel elements, one row per kernel element; P = output
/// positions, contiguous), and with the weight `W [O, CKK]`:
/// - `Conv`: `y_n [O, P] = W @ cols`;
/// - `ConvInputGrad`: `cols = W^T @ dy_n`, then summed back into `dx_n` (col2im);
/// - `ConvWeightGrad`: `dW = sum over n of dy_n @ cols^T`, the images cut into
///   [`weight_grad_parts`] groups (a number fixed by the shapes, never by the thread count),
///   each group summing its images into its own partial sum on some thread, the partial sums
///   then added in group order: the same bits on any number of threads.
pub(super) fn convolve<T: Float>(
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
            let groups = weight_grad_parts(n, o * ckk);
            let group = |k: usize| n * k / groups..n * (k + 1) / groups;
            let mut partial = vec![T::zero(); (groups - 1) * o * ckk];
            let mut parts: Vec<&mut [T]> = vec![&mut *out];
            parts.extend(partial.chunks_mut(o * ckk));
            for_each_band(&mut parts, threads, |k, dw| {
                with_scratch(ckk * p + ckk * o, |scratch| {
                    // The transpose `dw^T [C KH KW, O] = sum cols dy^T`, then copied into
                    // `dw`: the `gemm` crate runs this orientation 20-25% faster for both of
                    // the MNIST CNN's layers (AMD Zen 4; `nabla bench --profile`).
                    let (cols, dw_t) = scratch.split_at_mut(ckk * p);
                    dw_t.fill(T::zero());
                    for i in group(k) {
                        im2col(w, c, &a[i * image..(i + 1) * image], cols);
                        let dy = &b[i * o * p..(i + 1) * o * p];
                        gemm(
                            ckk,
                            o,
                            p,
                            dw_t,
                            (cols, p as isize, 1),
                            (dy, 1, p as isize),
                            true,
                        );
                    }
                    for (r, row) in dw_t.chunks_exact(o).enumerate() {
                        for (q, &v) in row.iter().enumerate() {
                            dw[q * ckk + r] = v;
                        }
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

/// The most groups a weight gradient's images are cut into, and the most bytes their partial
/// sums may take: enough groups for 16 threads, at most 64 MiB beside the gradient.
const WEIGHT_GRAD_GROUPS: usize = 16;
const WEIGHT_GRAD_PARTIAL_BYTES: usize = 64 << 20;

/// How many groups of images a weight gradient of `len` elements over `n` images is summed in:
/// a function of the shapes alone, so that the sum's order, and its bits, do not depend on the
/// thread count.
fn weight_grad_parts(n: usize, len: usize) -> usize {
    let affordable = 1 + WEIGHT_GRAD_PARTIAL_BYTES / (len.max(1) * std::mem::size_of::<f64>());
    WEIGHT_GRAD_GROUPS.min(affordable).clamp(1, n.max(1))
}

/// `buffer` cut into consecutive parts of the given lengths.
pub(super) fn split<T>(
    mut buffer: &mut [T],
    lengths: impl Iterator<Item = usize>,
) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for len in lengths {
        let (part, rest) = std::mem::take(&mut buffer).split_at_mut(len);
        parts.push(part);
        buffer = rest;
    }
    parts
}

/// Runs `f(k, part)` for every part, on up to `threads` threads.
pub(super) fn for_each_band<T: Send>(
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
pub(super) fn with_scratch<T: Float>(len: usize, f: impl FnOnce(&mut [T])) {
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
pub(super) fn im2col<T: Float>(w: &Window, channels: usize, x: &[T], cols: &mut [T]) {
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
pub(super) fn col2im<T: Float>(w: &Window, channels: usize, cols: &mut [T], x: &mut [T]) {
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
pub(super) struct Run {
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
pub(super) struct Row {
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
pub(super) fn for_each_row(w: &Window, channels: usize, mut f: impl FnMut(usize, &Row)) {
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
