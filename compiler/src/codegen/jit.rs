//! Plan to machine code in this process: a plan's kernels ([`super::module`]) compiled for the
//! host into a `cranelift-jit` module that the returned program owns, the kernel library's
//! entry points bound to their addresses in this binary.

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::default_libcall_names;
use nabla_runtime::{Elem, KernelFn, Program};

use super::clif::MathFn;
use super::machine::{self, Machine};
use super::module::{self, precision};
use crate::kernel::Plan;
use nabla_kernels::{Precision, Symbols};

/// Why code generation failed (a bug or an unsupported host, never bad user input).
#[derive(Debug, thiserror::Error)]
#[error("code generation failed: {0}")]
pub struct CodegenError(pub String);

pub(super) fn err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError(e.to_string())
}

/// Which text of each kernel a compilation keeps, for inspection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// No text: what running programs want.
    None,
    /// The Cranelift IR as the code generator emitted it.
    Clif,
    /// The machine code Cranelift produced, as its disassembly.
    Machine,
}

/// A compiled program and, on request, a listing of each kernel.
pub struct Compiled {
    /// The runnable program.
    pub program: Program,
    /// One listing per kernel (empty unless asked for); a kernel that splits phases over
    /// threads lists its row functions first.
    pub listing: Vec<String>,
}

/// Compiles every kernel of `plan` for elements of type `elem`; large matrix products may use
/// `threads` threads.
pub fn compile(
    plan: &Plan,
    elem: Elem,
    listing: Listing,
    threads: usize,
) -> Result<Compiled, CodegenError> {
    let mut jit_builder = JITBuilder::with_isa(
        machine::isa(&Machine::jit()?, false)?,
        default_libcall_names(),
    );
    let precision = precision(elem);
    for f in MathFn::ALL {
        let ptr = Symbols::math(f.name(), precision)
            .ok_or_else(|| err(format!("the kernel library has no `{}`", f.name())))?;
        jit_builder.symbol(Symbols::name(f.name(), precision), ptr);
    }
    jit_builder.symbol(Symbols::name("gemm", precision), Symbols::gemm(precision));
    if precision == Precision::F32 {
        jit_builder.symbol(Symbols::name("tiles", precision), Symbols::tiles());
        jit_builder.symbol(
            Symbols::name("transcendental", precision),
            Symbols::transcendental(),
        );
    }
    jit_builder.symbol(Symbols::name("call", precision), Symbols::call(precision));
    jit_builder.symbol(
        Symbols::name("parallel", precision),
        Symbols::parallel_rows(),
    );
    let mut jit = JITModule::new(jit_builder);
    let imports = module::imports(&mut jit, elem)?;
    let defined = module::define(&mut jit, &imports, (plan, ""), elem, listing, threads)?;
    jit.finalize_definitions().map_err(err)?;
    let kernels = defined
        .kernels
        .iter()
        .map(|&id| {
            let ptr = jit.get_finalized_function(id);
            // SAFETY: every kernel was declared with the signature `fn(*const *mut u8)`.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) }
        })
        .collect();
    let program = Program {
        buffers: plan.buffers.clone(),
        kernels,
        notes: plan.notes(elem.size()),
        outputs: plan.outputs.clone(),
        elem,
        code: Box::new(jit),
    };
    Ok(Compiled {
        program,
        listing: defined.listing,
    })
}
