//! The runtime: what a compiled nabla program needs to run, and nothing more.
//!
//! **Architecture invariant:** this crate depends on no other crate of the workspace. It knows
//! nothing of the DSL or of the compiler's graph; it deals in plain data (initialiser specs,
//! flat buffers, seeds) so that the compiler and the CLI can both hand it work.
#![deny(missing_docs)]

pub mod buffer;
pub mod buffers;
pub mod checkpoint;
pub mod collective;
pub mod data;
pub mod files;
pub mod init;
pub mod program;
pub mod resume;
pub mod rng;
pub mod schedule;
pub mod text;
pub mod train;

pub use buffer::{AllocError, Buffer, Elem, available_memory};
pub use buffers::Buffers;
pub use collective::{Alone, Collective};
pub use init::Init;
pub use program::{BufferSpec, Executable, KernelFn, KernelNote, Program, RunError};
pub use rng::Rng;
pub use schedule::{Decay, Schedule};
