//! Native code generation with Cranelift. These are the only files that import Cranelift.
//!
//! [`clif`] is the emitter core (buffers, loops, expressions) and turns each kernel of a
//! [`crate::kernel::Plan`] into Cranelift IR, one family of phases per file: [`loops`] (maps
//! and reductions) and [`matmul`] (register-tiled products and their epilogues); [`jit`]
//! compiles the kernels for the host and returns a `nabla_runtime::Program`. Generated code
//! calls into [`library`] (the tuned GEMM, convolution, pooling, slicing), which splits large
//! calls over the cores with [`parallel`]'s fork-join pool.

pub mod clif;
pub mod jit;
mod loops;
pub mod machine;
mod math;
mod matmul;
mod module;
pub mod object;
