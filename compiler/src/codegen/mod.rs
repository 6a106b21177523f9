//! Native code generation with Cranelift. These are the only files that import Cranelift.
//!
//! [`clif`] turns each kernel of a [`crate::schedule::Plan`] into Cranelift IR; [`jit`] compiles
//! the kernels for the host and returns a `nabla_runtime::Program`.

pub mod clif;
pub mod jit;
