//! A plan's kernels as functions of any Cranelift module: the JIT's, which runs them in this
//! process ([`super::jit`]), or an object file's, which a linker puts in a library
//! ([`super::object`]). Both import the kernel library's entry points under the same symbols
//! (`nabla_kernels::Symbols::name`), so a kernel is the same machine code either way.

use std::collections::HashMap;

use cranelift_codegen::ir::{AbiParam, UserFuncName, types};
use cranelift_codegen::isa::TargetIsa;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module};
use nabla_runtime::Elem;

use super::clif::{self, MathFn, Target, emit_kernel};
use super::jit::{CodegenError, Listing, err};
use crate::kernel::Plan;
use nabla_kernels::{Precision, Symbols};

/// The precision of `elem`, as the kernel library names it.
pub(super) fn precision(elem: Elem) -> Precision {
    match elem {
        Elem::F32 => Precision::F32,
        Elem::F64 => Precision::F64,
    }
}

/// The kernel library's entry points, declared as imports of one module.
pub(super) struct Imports {
    math: Vec<FuncId>,
    gemm: FuncId,
    tiles: Option<FuncId>,
    transcendental: Option<FuncId>,
    call: FuncId,
    parallel: FuncId,
}

/// Declares the kernel library's entry points for elements of type `elem` in `module`.
pub(super) fn imports<M: Module>(module: &mut M, elem: Elem) -> Result<Imports, CodegenError> {
    let precision = precision(elem);
    let pointer = module.target_config().pointer_type();
    let scalar = scalar(elem);
    let wide = has_flags(module.isa(), &["has_avx2", "has_fma"]);
    let mut import = |name: &str, params: &[types::Type], returns: &[types::Type]| {
        let mut sig = module.make_signature();
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        sig.returns
            .extend(returns.iter().map(|&t| AbiParam::new(t)));
        module
            .declare_function(&Symbols::name(name, precision), Linkage::Import, &sig)
            .map_err(err)
    };
    let math = MathFn::ALL
        .iter()
        .map(|f| import(f.name(), &vec![scalar; f.arity()], &[scalar]))
        .collect::<Result<_, _>>()?;
    let i64 = types::I64;
    // The GEMM's and the register tiles' arguments: sizes, operands by strides, the output,
    // the threads.
    let product = [
        i64, i64, i64, pointer, i64, i64, pointer, i64, i64, pointer, i64,
    ];
    let gemm = import("gemm", &product, &[])?;
    let tiles = match elem {
        Elem::F32 if wide => Some(import("tiles", &product, &[])?),
        _ => None,
    };
    let transcendental = match elem {
        Elem::F32 if wide => Some(import("transcendental", &[i64, pointer, i64], &[])?),
        _ => None,
    };
    let call = import("call", &[i64, pointer, pointer, pointer], &[])?;
    let parallel = import("parallel", &[pointer, pointer, i64, i64], &[])?;
    Ok(Imports {
        math,
        gemm,
        tiles,
        transcendental,
        call,
        parallel,
    })
}

/// Whether `isa` is an x86-64 one with every flag of `flags` set (`has_avx`, `has_fma`).
fn has_flags(isa: &dyn TargetIsa, flags: &[&str]) -> bool {
    isa.triple().architecture == target_lexicon::Architecture::X86_64
        && flags.iter().all(|name| {
            isa.isa_flags()
                .iter()
                .any(|flag| flag.name == *name && flag.as_bool() == Some(true))
        })
}

/// The scalar type of `elem`.
fn scalar(elem: Elem) -> types::Type {
    match elem {
        Elem::F32 => types::F32,
        Elem::F64 => types::F64,
    }
}

/// A plan's kernels, defined in a module.
pub(super) struct Defined {
    /// Each kernel's function, in run order.
    pub kernels: Vec<FuncId>,
    /// One listing per kernel (empty unless asked for).
    pub listing: Vec<String>,
}

/// Defines every kernel of `plan` in `module` as a local function named after `prefix`, for
/// elements of type `elem`; large matrix products may use `threads` threads.
pub(super) fn define<M: Module>(
    module: &mut M,
    imports: &Imports,
    (plan, prefix): (&Plan, &str),
    elem: Elem,
    listing: Listing,
    threads: usize,
) -> Result<Defined, CodegenError> {
    let pointer = module.target_config().pointer_type();
    let isa = module.isa();
    let compares_in_registers = isa.triple().architecture == target_lexicon::Architecture::X86_64
        && !has_flags(isa, &["has_avx"]);
    let (scalar, vector) = match elem {
        Elem::F32 => (types::F32, types::F32X4),
        Elem::F64 => (types::F64, types::F64X2),
    };
    let mut ctx = module.make_context();
    let mut builder_ctx = FunctionBuilderContext::new();
    let mut kernels = Vec::with_capacity(plan.kernels.len());
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
                Some((index, _)) => format!("{prefix}kernel{i}_rows{index}"),
                None => format!("{prefix}kernel{i}"),
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
                let math = imports
                    .math
                    .iter()
                    .map(|&m| module.declare_func_in_func(m, b.func))
                    .collect();
                let target = Target {
                    scalar,
                    vector,
                    pointer,
                    math,
                    gemm: module.declare_func_in_func(imports.gemm, b.func),
                    tiles: imports
                        .tiles
                        .map(|id| module.declare_func_in_func(id, b.func)),
                    transcendental: imports
                        .transcendental
                        .map(|id| module.declare_func_in_func(id, b.func)),
                    call: module.declare_func_in_func(imports.call, b.func),
                    threads: threads.max(1) as i64,
                    parallel: module.declare_func_in_func(imports.parallel, b.func),
                    compares_in_registers,
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
                None => kernels.push(id),
            }
        }
        if listing != Listing::None {
            listings.push(text);
        }
    }
    Ok(Defined {
        kernels,
        listing: listings,
    })
}
