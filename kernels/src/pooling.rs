//! Max pooling: each window's first maximum, found by comparing integers ordered like the floats
//! (`-0` = `+0`, NaN above all) with conditional moves instead of branches that real activations
//! mispredict; 2x2 windows side by side by a tournament of their own.

use crate::convolution::{for_each_band, split};
use crate::float::Float;
use crate::{Call, Window};

/// Max pooling's gather and scatter, images split into `threads` bands (each image's planes
/// are independent).
pub(super) fn pool<T: Float>(
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
pub(super) fn first_maxima<T: Float>(
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
pub(super) fn first_maxima_2x2<T: Float>(
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
pub(super) fn first_maximum<T: Float>(
    values: &[T],
    pixels: impl Iterator<Item = usize>,
) -> Option<usize> {
    let (mut best, mut top) = (usize::MAX, i64::MIN);
    for p in pixels {
        let key = values[p].max_key();
        let wins = key > top;
        best = std::hint::select_unpredictable(wins, p, best);
        top = std::hint::select_unpredictable(wins, key, top);
    }
    (best != usize::MAX).then_some(best)
}
