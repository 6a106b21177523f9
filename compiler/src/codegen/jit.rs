//! Plan to machine code: one Cranelift function per kernel, compiled with the host's ISA flags
//! (SSE4.1/AVX/FMA where present) into a `cranelift-jit` module that the returned program owns.

use std::collections::HashMap;

use cranelift_codegen::ir::{AbiParam, UserFuncName, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use nabla_runtime::{Elem, KernelFn, Program};

use super::clif::{self, MathFn, Target, emit_kernel};
use crate::kernel::Plan;
use nabla_kernels::{Precision, Symbols};

/// Why code generation failed (a bug or an unsupported host, never bad user input).
#[derive(Debug, thiserror::Error)]
#[error("code generation failed: {0}")]
pub struct CodegenError(pub String);

fn err(e: impl std::fmt::Display) -> CodegenError {
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

/// The symbol generated code imports a math function under, in the given precision.
fn math_symbol(f: MathFn, elem: Elem) -> String {
    format!("nabla_{}_{elem:?}", f.name()).to_lowercase()
}

/// Compiles every kernel of `plan` for elements of type `elem`; large matrix products may use
/// `threads` threads.
pub fn compile(
    plan: &Plan,
    elem: Elem,
    listing: Listing,
    threads: usize,
) -> Result<Compiled, CodegenError> {
    let mut flag_builder = settings::builder();
    flag_builder.set("opt_level", "speed").map_err(err)?;
    let isa = cranelift_native::builder()
        .map_err(err)?
        .finish(settings::Flags::new(flag_builder))
        .map_err(err)?;
    let mut jit_builder = JITBuilder::with_isa(isa, default_libcall_names());
    let precision = match elem {
        Elem::F32 => Precision::F32,
        Elem::F64 => Precision::F64,
    };
    for f in MathFn::ALL {
        let ptr = Symbols::math(f.name(), precision)
            .ok_or_else(|| err(format!("the kernel library has no `{}`", f.name())))?;
        jit_builder.symbol(math_symbol(f, elem), ptr);
    }
    jit_builder.symbol("nabla_gemm", Symbols::gemm(precision));
    jit_builder.symbol("nabla_call", Symbols::call(precision));
    jit_builder.symbol("nabla_parallel", Symbols::parallel_rows());
    let mut module = JITModule::new(jit_builder);
    let pointer = module.target_config().pointer_type();
    let (scalar, vector) = match elem {
        Elem::F32 => (types::F32, types::F32X4),
        Elem::F64 => (types::F64, types::F64X2),
    };

    let mut math_ids = Vec::new();
    for f in MathFn::ALL {
        let mut sig = module.make_signature();
        sig.params
            .extend(std::iter::repeat_n(AbiParam::new(scalar), f.arity()));
        sig.returns.push(AbiParam::new(scalar));
        math_ids.push(
            module
                .declare_function(&math_symbol(f, elem), Linkage::Import, &sig)
                .map_err(err)?,
        );
    }

    let mut gemm_sig = module.make_signature();
    gemm_sig.params.extend(
        [
            types::I64,
            types::I64,
            types::I64,
            pointer,
            types::I64,
            types::I64,
            pointer,
            types::I64,
            types::I64,
            pointer,
            types::I64,
        ]
        .map(AbiParam::new),
    );
    let gemm_id = module
        .declare_function("nabla_gemm", Linkage::Import, &gemm_sig)
        .map_err(err)?;
    let mut call_sig = module.make_signature();
    call_sig
        .params
        .extend([types::I64, pointer, pointer, pointer].map(AbiParam::new));
    let call_id = module
        .declare_function("nabla_call", Linkage::Import, &call_sig)
        .map_err(err)?;

    let mut parallel_sig = module.make_signature();
    parallel_sig
        .params
        .extend([pointer, pointer, types::I64, types::I64].map(AbiParam::new));
    let parallel_id = module
        .declare_function("nabla_parallel", Linkage::Import, &parallel_sig)
        .map_err(err)?;

    let mut ctx = module.make_context();
    let mut builder_ctx = FunctionBuilderContext::new();
    let mut ids = Vec::with_capacity(plan.kernels.len());
    let mut listings = Vec::new();
    for (i, kernel) in plan.kernels.iter().enumerate() {
        // First the functions computing bands of rows of the phases split over threads, then
        // the kernel calling them.
        let splits: Vec<(usize, usize)> = kernel
            .phases
            .iter()
            .enumerate()
            .filter_map(|(index, phase)| Some((index, phase.split_rows()?)))
            .collect();
        let mut rows = HashMap::new();
        let mut text = String::new();
        for split in splits.iter().map(Some).chain([None]) {
            let name = match split {
                Some((index, _)) => format!("kernel{i}_rows{index}"),
                None => format!("kernel{i}"),
            };
            ctx.func.signature.params.push(AbiParam::new(pointer));
            if split.is_some() {
                ctx.func
                    .signature
                    .params
                    .extend([AbiParam::new(types::I64); 2]);
            }
            let id = module
                .declare_function(&name, Linkage::Local, &ctx.func.signature)
                .map_err(err)?;
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, &mut builder_ctx);
                let math = math_ids
                    .iter()
                    .map(|&m| module.declare_func_in_func(m, b.func))
                    .collect();
                let target = Target {
                    scalar,
                    vector,
                    pointer,
                    math,
                    gemm: module.declare_func_in_func(gemm_id, b.func),
                    call: module.declare_func_in_func(call_id, b.func),
                    threads: threads.max(1) as i64,
                    parallel: module.declare_func_in_func(parallel_id, b.func),
                    rows: rows
                        .iter()
                        .map(|(&index, &(id, extent))| {
                            (index, (module.declare_func_in_func(id, b.func), extent))
                        })
                        .collect(),
                };
                match split {
                    Some(&(index, _)) => clif::emit_rows(&mut b, kernel, index, &target),
                    None => emit_kernel(&mut b, kernel, &target),
                }
                b.finalize(module.target_config());
            }
            if listing == Listing::Clif {
                text += &ctx.func.display().to_string();
            }
            ctx.set_disasm(listing == Listing::Machine);
            module
                .define_function(id, &mut ctx)
                .map_err(|e| CodegenError(format!("{name}: {e:?}")))?;
            if let Some(machine) = ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
                text += &format!("{name}:\n{machine}");
            }
            module.clear_context(&mut ctx);
            match split {
                Some(&(index, extent)) => {
                    rows.insert(index, (id, extent));
                }
                None => ids.push(id),
            }
        }
        if listing != Listing::None {
            listings.push(text);
        }
    }
    module.finalize_definitions().map_err(err)?;
    let kernels = ids
        .iter()
        .map(|&id| {
            let ptr = module.get_finalized_function(id);
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
        code: Box::new(module),
    };
    Ok(Compiled {
        program,
        listing: listings,
    })
}
