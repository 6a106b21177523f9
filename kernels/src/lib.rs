//! The kernel library: the run-time routines generated code calls, with no compiler in it, so
//! that the same code serves the JIT and, later, ahead-of-time objects linked against it.
//!
//! [`window`] (the geometry of sliding windows, shared with the reference interpreter),
//! [`call`] (the routines generated code calls by number, and their sizes), [`library`] (their
//! dispatch, and slices, concatenations, gathers and scatters), [`convolution`] (im2col,
//! col2im and convolutions), [`pooling`] (max pooling), [`gemm`] (matrix products through the
//! `gemm` crate), [`tiles`] (small f32 products in AVX-512 or AVX2 registers), [`transcendentals`]
//! (f32 `exp`, `erf` and `tanh` of blocks in the same registers, the bits of generated code's), [`attention`] (attention without stored scores), [`lanes`] (its row loops, vectorised),
//! [`parallel`] (the fork-join pool), [`denormals`] (the floating-point mode compiled code runs
//! under), [`float`] (the float types),
//! [`shims`] (the `extern "C"` entry points generated code imports), and [`peaks`] (this
//! machine's measured compute and memory peaks, for profiles' rooflines).
#![deny(missing_docs)]

mod attention;
pub mod call;
mod convolution;
pub mod denormals;
mod float;
pub mod gemm;
pub mod isa;
mod lanes;
mod library;
pub mod parallel;
pub mod peaks;
mod pooling;
pub mod shims;
mod tiles;
pub mod transcendentals;
pub mod window;

pub use call::Call;
pub use shims::{Precision, Symbols};
pub use window::{Fill, Window, WindowError};
