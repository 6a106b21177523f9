//! Plans to an object file for a library: every program's kernels ([`super::module`]) compiled
//! ahead of time with `cranelift-object` for the machine asked for ([`super::machine`]),
//! position-independent, beside the
//! weights and the descriptor that tells the run time (`nabla-aot`) how to call them, and the
//! library's exported C entry points, each a call of the run time's function with the
//! descriptor. The kernel library's and the run time's symbols are left for the linker.

use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature, UserFuncName, types};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use nabla_runtime::Elem;

use super::jit::{CodegenError, err};
use super::machine::{self, Machine};
use super::module;
use crate::kernel::Plan;

/// One word of the descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// A number.
    Number(u64),
    /// The address of the weights.
    Weights,
    /// The address of a kernel: its program and its place in the run order.
    Kernel {
        /// The program, in [`Library::programs`].
        program: usize,
        /// The kernel.
        kernel: usize,
    },
}

/// A C entry point of the library: `{name}_{suffix}`, calling the run time's `callee` with
/// the descriptor first, then its own arguments.
pub struct Entry {
    /// What follows the library's name.
    pub suffix: &'static str,
    /// The run-time function it calls.
    pub callee: &'static str,
    /// Its arguments, as the C header declares them.
    pub params: Vec<Param>,
    /// Whether it returns an error code (`int32_t`) or a size (`size_t`).
    pub returns: Param,
}

/// An argument's type, as far as the calling convention cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A pointer or a `size_t`.
    Word,
    /// An `int32_t`, passed on as an `int64_t`.
    Int,
}

/// What goes into the object.
pub struct Library<'a> {
    /// The prefix of every exported symbol.
    pub name: &'a str,
    /// The programs whose kernels the descriptor's [`Word::Kernel`]s name.
    pub programs: Vec<&'a Plan>,
    /// The descriptor.
    pub descriptor: Vec<Word>,
    /// The weights, laid out as the descriptor says.
    pub weights: Vec<u8>,
    /// The exported entry points.
    pub entries: Vec<Entry>,
    /// Element type.
    pub elem: Elem,
    /// Threads large matrix products may use.
    pub threads: usize,
    /// The machine the code runs on.
    pub machine: &'a Machine,
}

/// The relocatable object (ELF) holding `library`.
pub fn object(library: &Library) -> Result<Vec<u8>, CodegenError> {
    let builder = ObjectBuilder::new(
        machine::isa(library.machine, true)?,
        library.name,
        cranelift_module::default_libcall_names(),
    )
    .map_err(err)?;
    let mut object = ObjectModule::new(builder);
    let imports = module::imports(&mut object, library.elem)?;
    let mut kernels = Vec::new();
    for (i, plan) in library.programs.iter().enumerate() {
        let prefix = format!("{}_program{i}_", library.name);
        let defined = module::define(
            &mut object,
            &imports,
            (plan, &prefix),
            library.elem,
            crate::codegen::jit::Listing::None,
            library.threads,
        )?;
        kernels.push(defined.kernels);
    }
    let weights = data(
        &mut object,
        &format!("{}_weights", library.name),
        library.weights.clone(),
        |_, _| Ok(()),
    )?;
    let descriptor = data(
        &mut object,
        &format!("{}_descriptor", library.name),
        library
            .descriptor
            .iter()
            .flat_map(|w| match w {
                Word::Number(n) => n.to_le_bytes(),
                _ => [0; 8],
            })
            .collect(),
        |object, description| {
            for (i, word) in library.descriptor.iter().enumerate() {
                let offset = (i * 8) as u32;
                match *word {
                    Word::Number(_) => {}
                    Word::Weights => {
                        let gv = object.declare_data_in_data(weights, description);
                        description.write_data_addr(offset, gv, 0);
                    }
                    Word::Kernel { program, kernel } => {
                        let id = *kernels
                            .get(program)
                            .and_then(|k| k.get(kernel))
                            .ok_or_else(|| {
                                err(format!("no kernel {kernel} in program {program}"))
                            })?;
                        let f = object.declare_func_in_data(id, description);
                        description.write_function_addr(offset, f);
                    }
                }
            }
            Ok(())
        },
    )?;
    for entry in &library.entries {
        define_entry(&mut object, library.name, entry, descriptor)?;
    }
    object.finish().emit().map_err(err)
}

/// Defines read-only data `name` holding `bytes`, aligned for any buffer, with the
/// relocations `relocate` writes.
fn data(
    object: &mut ObjectModule,
    name: &str,
    bytes: Vec<u8>,
    relocate: impl FnOnce(&mut ObjectModule, &mut DataDescription) -> Result<(), CodegenError>,
) -> Result<DataId, CodegenError> {
    let id = object
        .declare_data(name, Linkage::Local, false, false)
        .map_err(err)?;
    let mut description = DataDescription::new();
    description.define(bytes.into_boxed_slice());
    description.set_align(nabla_aot::format::ALIGN as u64);
    relocate(object, &mut description)?;
    object.define_data(id, &description).map_err(err)?;
    Ok(id)
}

/// Defines the exported function `{name}_{suffix}`: the run time's function called with the
/// descriptor's address and the entry's arguments.
fn define_entry(
    object: &mut ObjectModule,
    name: &str,
    entry: &Entry,
    descriptor: DataId,
) -> Result<FuncId, CodegenError> {
    let pointer = object.target_config().pointer_type();
    let ty = |p: Param| match p {
        Param::Word => pointer,
        Param::Int => types::I32,
    };
    let mut exported = object.make_signature();
    exported
        .params
        .extend(entry.params.iter().map(|&p| AbiParam::new(ty(p))));
    exported.returns.push(AbiParam::new(ty(entry.returns)));
    let mut callee: Signature = object.make_signature();
    callee.params.push(AbiParam::new(pointer));
    callee.params.extend(entry.params.iter().map(|&p| {
        AbiParam::new(match p {
            Param::Word => pointer,
            Param::Int => types::I64,
        })
    }));
    callee.returns.push(AbiParam::new(ty(entry.returns)));
    let callee = object
        .declare_function(entry.callee, Linkage::Import, &callee)
        .map_err(err)?;
    let symbol = format!("{name}_{}", entry.suffix);
    let id = object
        .declare_function(&symbol, Linkage::Export, &exported)
        .map_err(err)?;
    let mut ctx = object.make_context();
    ctx.func.signature = exported;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut builder_ctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut builder_ctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        b.seal_block(block);
        let gv = object.declare_data_in_func(descriptor, b.func);
        let mut args = vec![b.ins().symbol_value(pointer, gv)];
        let params = b.block_params(block).to_vec();
        for (&value, &p) in params.iter().zip(&entry.params) {
            args.push(match p {
                Param::Word => value,
                Param::Int => b.ins().sextend(types::I64, value),
            });
        }
        let f = object.declare_func_in_func(callee, b.func);
        let call = b.ins().call(f, &args);
        let result = b.inst_results(call)[0];
        b.ins().return_(&[result]);
        b.finalize(object.target_config());
    }
    object
        .define_function(id, &mut ctx)
        .map_err(|e| CodegenError(format!("{symbol}: {e:?}")))?;
    Ok(id)
}
