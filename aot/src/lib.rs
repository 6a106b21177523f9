//! The run time of the libraries `nabla export --format native` writes. An exported library is
//! the model's kernels compiled ahead of time, its weights, and a descriptor (the [`format`]
//! nabla writes and this crate reads), linked against this crate's archive, which brings the
//! kernel library the generated code calls. The library's C entry points are thin wrappers that
//! hand their descriptor to [`entry`]'s functions, which cut a call into the compiled batches
//! ([`schedule`], shared with `nabla predict` so that both run the same programs on the same
//! rows), lay out the buffer table in the caller's scratch, and run the kernels in order, on a
//! CPU that has the instruction-set extensions the code was compiled for ([`cpu`]).
//!
//! Nothing here is global: every call works in its own scratch, so calls from several threads
//! need only separate scratch (the kernel library's thread pool serialises itself).
#![deny(missing_docs)]

pub mod cpu;
pub mod entry;
pub mod format;
pub mod schedule;

pub use schedule::{Chunk, schedule};

/// The floating-point mode kernels run under, here and in nabla's own runtime, which reaches
/// it through this crate: exported libraries and the JIT compute alike.
pub use nabla_kernels::denormals;

// The kernel library's entry points must be in the archive even though nothing here calls
// them: generated code does.
pub use nabla_kernels::shims::Symbols;
