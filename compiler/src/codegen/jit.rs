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
use super::{library, parallel};
use crate::kernel::Call;
use crate::kernel::Plan;

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

/// The scalar functions kernels call, for one float type: `extern "C"` shims over Rust's
/// implementations (and `libm`'s `erf`), in a module per type with `of` giving each address.
macro_rules! math_shims {
    ($module:ident, $t:ty, $erf:path) => {
        mod $module {
            use super::MathFn;
            use crate::ir::UnaryOp;

            extern "C" fn exp(x: $t) -> $t {
                x.exp()
            }
            extern "C" fn log(x: $t) -> $t {
                x.ln()
            }
            extern "C" fn tanh(x: $t) -> $t {
                x.tanh()
            }
            extern "C" fn sigmoid(x: $t) -> $t {
                1.0 / (1.0 + (-x).exp())
            }
            extern "C" fn pow(a: $t, b: $t) -> $t {
                a.powf(b)
            }
            extern "C" fn sin(x: $t) -> $t {
                x.sin()
            }
            extern "C" fn cos(x: $t) -> $t {
                x.cos()
            }
            extern "C" fn tan(x: $t) -> $t {
                x.tan()
            }
            extern "C" fn sinh(x: $t) -> $t {
                x.sinh()
            }
            extern "C" fn cosh(x: $t) -> $t {
                x.cosh()
            }
            extern "C" fn atan(x: $t) -> $t {
                x.atan()
            }
            extern "C" fn erf(x: $t) -> $t {
                $erf(x)
            }

            /// The address of `f`'s shim (every function of `MathFn::ALL` has one).
            pub(super) fn of(f: MathFn) -> *const u8 {
                match f {
                    MathFn::Unary(UnaryOp::Exp) => exp as *const u8,
                    MathFn::Unary(UnaryOp::Log) => log as *const u8,
                    MathFn::Unary(UnaryOp::Tanh) => tanh as *const u8,
                    MathFn::Unary(UnaryOp::Sigmoid) => sigmoid as *const u8,
                    MathFn::Unary(UnaryOp::Sin) => sin as *const u8,
                    MathFn::Unary(UnaryOp::Cos) => cos as *const u8,
                    MathFn::Unary(UnaryOp::Tan) => tan as *const u8,
                    MathFn::Unary(UnaryOp::Sinh) => sinh as *const u8,
                    MathFn::Unary(UnaryOp::Cosh) => cosh as *const u8,
                    MathFn::Unary(UnaryOp::Atan) => atan as *const u8,
                    MathFn::Unary(UnaryOp::Erf) => erf as *const u8,
                    MathFn::Pow => pow as *const u8,
                    MathFn::Unary(other) => {
                        unreachable!("{other:?} is computed inline, not called")
                    }
                }
            }
        }
    };
}

math_shims!(shims_f32, f32, libm::erff);
math_shims!(shims_f64, f64, libm::erf);

/// A matrix product's operands: `a: [m, k]` and `b: [k, n]` by row and column strides (so
/// transposes cost nothing), `c: [m, n]` row-major.
#[derive(Clone, Copy)]
struct Gemm<T> {
    m: usize,
    k: usize,
    n: usize,
    a: *const T,
    a_row: isize,
    a_col: isize,
    b: *const T,
    b_row: isize,
    b_col: isize,
    c: *mut T,
}

// SAFETY: the pointers are only used by `Gemm::run`, each thread on a disjoint part of `c`
// and reading `a` and `b`, which nothing writes meanwhile.
unsafe impl<T> Send for Gemm<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Gemm<T> {}

/// Products smaller than this (multiply-adds, a few microseconds of work) run on one thread.
/// Above it the fork and join of [`parallel`] (well under a microsecond while its helpers
/// spin) is worth paying: measured with `nabla bench`, lowering this from 2^24 to 2^17 took
/// the batch-16 MLP step from 0.49 ms to 0.32 ms and the char-RNN step (products of 2M) from
/// 15.3 ms to 10.4 ms; 2^16 and 2^18 measured the same.
const PARALLEL_MIN_MACS: usize = 1 << 17;

impl<T: 'static + Copy + num_traits::Zero + num_traits::One + Send + Sync> Gemm<T> {
    /// The product through the `gemm` crate, split into `threads` bands of rows (or of
    /// columns, when there are more) run on the fork-join pool. Every element is computed
    /// by one band, in the same order for a given thread count.
    ///
    /// # Safety
    /// `a` and `b` hold every element their strides reach, `c` holds `m * n` elements and
    /// overlaps neither.
    unsafe fn run(self, threads: usize) {
        let parts = if self.m * self.k * self.n >= PARALLEL_MIN_MACS {
            threads.min(self.m.max(self.n) / 16).max(1)
        } else {
            1
        };
        if parts == 1 {
            // SAFETY: as the caller promises.
            return unsafe { self.serial_with(self.n) };
        }
        let by_rows = self.m >= self.n;
        let len = if by_rows { self.m } else { self.n };
        parallel::for_each_part(parts, threads, &|p| {
            let (start, end) = (len * p / parts, len * (p + 1) / parts);
            let mut band = self;
            // SAFETY: the offsets stay inside the operands, and the bands of `c` are disjoint.
            unsafe {
                if by_rows {
                    band.m = end - start;
                    band.a = self.a.offset(start as isize * self.a_row);
                    band.c = self.c.add(start * self.n);
                } else {
                    band.n = end - start;
                    band.b = self.b.offset(start as isize * self.b_col);
                    band.c = self.c.add(start);
                }
                band.serial_with(self.n)
            }
        });
    }

    /// The product on this thread, `c`'s rows `row_stride` apart.
    unsafe fn serial_with(self, row_stride: usize) {
        // SAFETY: as `run`'s caller promises, for this band.
        unsafe {
            library::strided_gemm(
                [self.m, self.n, self.k],
                (self.c, row_stride as isize),
                (self.a, self.a_row, self.a_col),
                (self.b, self.b_row, self.b_col),
                false,
            )
        }
    }
}

/// The `nabla_gemm` symbol generated code calls, for one float type.
macro_rules! gemm_shim {
    ($name:ident, $t:ty) => {
        #[allow(clippy::too_many_arguments)]
        extern "C" fn $name(
            m: usize,
            k: usize,
            n: usize,
            a: *const $t,
            a_row: isize,
            a_col: isize,
            b: *const $t,
            b_row: isize,
            b_col: isize,
            c: *mut $t,
            threads: usize,
        ) {
            let product = Gemm {
                m,
                k,
                n,
                a,
                a_row,
                a_col,
                b,
                b_row,
                b_col,
                c,
            };
            // SAFETY: the generated kernel passes buffers the runtime checked against the plan:
            // `a` and `b` hold every element their strides reach, `c` holds `m * n`, and `c`
            // overlaps neither (the scheduler gives every product a buffer of its own).
            unsafe { product.run(threads) }
        }
    };
}

gemm_shim!(gemm_f32, f32);
gemm_shim!(gemm_f64, f64);

/// The `nabla_call` symbol generated code calls for a [`Phase::Call`]: the library routine
/// `call` (a [`Call`] as an integer) on the buffers whose addresses `inputs` lists, writing
/// `out`; `words` holds the thread count, then the call's sizes.
///
/// [`Phase::Call`]: crate::kernel::Phase::Call
macro_rules! call_shim {
    ($name:ident, $t:ty) => {
        extern "C" fn $name(
            call: usize,
            inputs: *const *const $t,
            out: *mut $t,
            words: *const usize,
        ) {
            // SAFETY: generated code passes a valid call number, then arrays on its stack: as
            // many sizes as the call's layout has (the count follows from the first sizes)
            // after the thread count, and one address per operand.
            let call = Call::ALL[call];
            let head = unsafe { std::slice::from_raw_parts(words, 4) };
            let count = 1 + library::arg_count(call, &head[1..]);
            let words = unsafe { std::slice::from_raw_parts(words, count) };
            let (threads, args) = (words[0], &words[1..]);
            // SAFETY: the runtime checked every buffer against the plan, which sized them from
            // these sizes, and the output overlaps no operand; generated code passes one
            // address per operand.
            let input = |i: usize| unsafe {
                std::slice::from_raw_parts(*inputs.add(i), library::length(call, args, Some(i)))
            };
            let out =
                unsafe { std::slice::from_raw_parts_mut(out, library::length(call, args, None)) };
            library::run(call, args, input, out, threads);
        }
    };
}

call_shim!(call_f32, f32);
call_shim!(call_f64, f64);

/// A kernel's function computing rows `start..end` of one phase (see [`clif::emit_rows`]).
type RowsFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

/// The buffer table, shared by the threads computing bands of rows.
#[derive(Clone, Copy)]
struct Table(*const *mut u8);
// SAFETY: the table is only read; the bands write disjoint rows of the buffers it points to.
unsafe impl Sync for Table {}

impl Table {
    /// The table's address (a method, so that closures capture the `Sync` wrapper whole).
    fn address(self) -> *const *mut u8 {
        self.0
    }
}

/// The `nabla_parallel` symbol generated code calls: `rows` over `0..extent`, in one band per
/// thread.
extern "C" fn parallel_rows(rows: RowsFn, table: *const *mut u8, extent: i64, threads: i64) {
    let extent = extent.max(0) as usize;
    let parts = (threads.max(1) as usize).min(extent);
    let table = Table(table);
    parallel::for_each_part(parts, parts, &|p| {
        let (start, end) = (extent * p / parts, extent * (p + 1) / parts);
        // SAFETY: generated code passes a row function of this program and its table; the
        // bands are disjoint ranges inside the phase's rows.
        unsafe { rows(table.address(), start as i64, end as i64) }
    });
}

/// The symbol name and address of a math function in the given precision.
fn math_symbol(f: MathFn, elem: Elem) -> (String, *const u8) {
    let name = format!("nabla_{}_{elem:?}", f.name()).to_lowercase();
    let ptr = match elem {
        Elem::F32 => shims_f32::of(f),
        Elem::F64 => shims_f64::of(f),
    };
    (name, ptr)
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
    for f in MathFn::ALL {
        let (name, ptr) = math_symbol(f, elem);
        jit_builder.symbol(name, ptr);
    }
    let gemm_ptr = match elem {
        Elem::F32 => gemm_f32 as *const u8,
        Elem::F64 => gemm_f64 as *const u8,
    };
    jit_builder.symbol("nabla_gemm", gemm_ptr);
    let call_ptr = match elem {
        Elem::F32 => call_f32 as *const u8,
        Elem::F64 => call_f64 as *const u8,
    };
    jit_builder.symbol("nabla_call", call_ptr);
    jit_builder.symbol("nabla_parallel", parallel_rows as *const u8);
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
                .declare_function(&math_symbol(f, elem).0, Linkage::Import, &sig)
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
        outputs: plan.outputs.clone(),
        elem,
        code: Box::new(module),
    };
    Ok(Compiled {
        program,
        listing: listings,
    })
}
