//! Native code generation with Cranelift. These are the only files that import Cranelift.
//!
//! [`clif`] is the emitter core (buffers, loops, expressions) and turns each kernel of a
//! [`crate::kernel::Plan`] into Cranelift IR, one family of phases per file: [`loops`] (maps
//! and reductions), [`matmul`] (register-tiled products and their epilogues), [`math`]
//! (transcendental functions in registers) and [`transcendental`] (maps handing f32 `exp`,
//! `erf` and `tanh` to the kernel library's AVX-512 or AVX2 build, a block of a row at a
//! time). [`module`] defines a plan's kernels in any
//! Cranelift module, for the ISA [`machine`] chooses (the host at the level `NABLA_ISA` names,
//! or an export's target); [`jit`] compiles them in this process and returns a
//! `nabla_runtime::Program`, [`object`] into a relocatable object for a library. Generated code
//! calls into the kernel library (`nabla_kernels`: the tuned GEMM, convolution, pooling,
//! slicing, and the fork-join pool that splits large calls over the cores).

mod access;
pub mod clif;
pub mod jit;
mod loops;
pub mod machine;
mod math;
mod matmul;
mod module;
pub mod object;
mod transcendental;
