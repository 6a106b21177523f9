//! The geometry of sliding windows over `[N, C, H, W]` images, PyTorch's: how many windows fit,
//! and the walk over their elements that the reference interpreter and the library share, so
//! that both read the same pixels in the same order.

use std::fmt;

/// Why windows do not fit an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowError(pub String);

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WindowError {}

/// What a window reads outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fill {
    /// Zero padding (convolution, average pooling).
    Zero,
    /// Negative infinity (max pooling: padding never wins).
    NegInf,
}

impl Fill {
    /// The value read.
    pub fn value(self) -> f64 {
        match self {
            Fill::Zero => 0.0,
            Fill::NegInf => f64::NEG_INFINITY,
        }
    }
}

/// Sliding windows over the last two axes of `[N, C, H, W]` images: `kernel` positions apart
/// by `dilation`, moved by `stride`, over the image padded by `padding` on every side. PyTorch's
/// geometry: output size `floor((H + 2p - d(k - 1) - 1) / s) + 1` per axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Image height and width.
    pub image: [usize; 2],
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Padding on each side.
    pub padding: [usize; 2],
    /// Step between a window's elements.
    pub dilation: [usize; 2],
    /// What padding reads as.
    pub fill: Fill,
}

impl Window {
    /// Windows per axis, or why there is none (a window larger than the padded image, a zero
    /// size or stride).
    pub fn output(&self) -> Result<[usize; 2], WindowError> {
        let mut out = [0; 2];
        for (a, size) in out.iter_mut().enumerate() {
            let (h, k, s, p, d) = (
                self.image[a],
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.dilation[a],
            );
            if k == 0 || s == 0 || d == 0 {
                return Err(WindowError(format!(
                    "a window needs a kernel size, stride and dilation of at least 1, got kernel {k}, stride {s}, dilation {d}"
                )));
            }
            let span = d * (k - 1) + 1;
            if h + 2 * p < span {
                return Err(WindowError(format!(
                    "a window spanning {span} (kernel {k}, dilation {d}) does not fit in {h} + 2 × {p} padding: the output size floor((H + 2p - d(k - 1) - 1) / s) + 1 would be below 1"
                )));
            }
            *size = (h + 2 * p - span) / s + 1;
        }
        Ok(out)
    }

    /// Calls `f(element, pixel)` for every element of the windows of `images` images of
    /// `channels` channels, in row-major order of `[N, OH, OW, C, KH, KW]`, with the flat index
    /// in `[N, C, H, W]` of the pixel it reads, or `None` where it reads padding. The
    /// interpreter and generated code share this walk, so they agree to the bit.
    pub fn visit(&self, images: usize, channels: usize, mut f: impl FnMut(usize, Option<usize>)) {
        let Ok([oh, ow]) = self.output() else {
            return;
        };
        let [h, w] = self.image;
        let [kh, kw] = self.kernel;
        let mut element = 0;
        for n in 0..images {
            for y in 0..oh {
                for x in 0..ow {
                    for c in 0..channels {
                        let plane = (n * channels + c) * h * w;
                        for i in 0..kh {
                            let row = (y * self.stride[0] + i * self.dilation[0])
                                .checked_sub(self.padding[0])
                                .filter(|&r| r < h);
                            for j in 0..kw {
                                let col = (x * self.stride[1] + j * self.dilation[1])
                                    .checked_sub(self.padding[1])
                                    .filter(|&q| q < w);
                                let pixel = row.zip(col).map(|(r, q)| plane + r * w + q);
                                f(element, pixel);
                                element += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pair = |v: [usize; 2]| format!("{}x{}", v[0], v[1]);
        write!(
            f,
            "image={} kernel={} stride={} padding={} dilation={}",
            pair(self.image),
            pair(self.kernel),
            pair(self.stride),
            pair(self.padding),
            pair(self.dilation)
        )?;
        if self.fill == Fill::NegInf {
            write!(f, " fill=-inf")?;
        }
        Ok(())
    }
}
