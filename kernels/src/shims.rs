//! The entry points generated code calls, as `extern "C"` functions: the math functions of each
//! precision, the GEMM, the small f32 products, f32 transcendentals in wide registers, the
//! library routines and the fork-join of
//! bands of rows, each exported under the symbol [`Symbols::name`] gives. A JIT registers their
//! addresses under those symbols; ahead-of-time code imports them and is linked against this
//! crate's functions (through `nabla-aot`'s archive).

use crate::gemm::Gemm;
use crate::transcendentals::Transcendental;
use crate::{Call, call, library, parallel};

/// The precision a program computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

/// The entry points' addresses (for a JIT) and names (for ahead-of-time code, which the
/// linker resolves against the same functions).
pub struct Symbols;

impl Symbols {
    /// The symbol the library exports entry `entry` under in `precision`: a math function's
    /// name, `gemm` or `call` with the precision's suffix (`nabla_exp_f32`, `nabla_gemm_f64`),
    /// or `nabla_parallel`, which has one for both.
    pub fn name(entry: &str, precision: Precision) -> String {
        match (entry, precision) {
            ("parallel", _) => "nabla_parallel".into(),
            (_, Precision::F32) => format!("nabla_{entry}_f32"),
            (_, Precision::F64) => format!("nabla_{entry}_f64"),
        }
    }

    /// The math function named `name` (`exp`, `log`, `tanh`, `sigmoid`, `sin`, `cos`, `tan`,
    /// `sinh`, `cosh`, `atan`, `erf`, `pow`), or `None` for a name the library lacks.
    pub fn math(name: &str, precision: Precision) -> Option<*const u8> {
        match precision {
            Precision::F32 => shims_f32::of(name),
            Precision::F64 => shims_f64::of(name),
        }
    }

    /// The GEMM: `(m, k, n, a, a_row, a_col, b, b_row, b_col, c, threads)`.
    pub fn gemm(precision: Precision) -> *const u8 {
        match precision {
            Precision::F32 => gemm_f32 as *const u8,
            Precision::F64 => gemm_f64 as *const u8,
        }
    }

    /// The small f32 product in registers, with the GEMM's arguments, under the name `tiles`
    /// (f32 only: generated code computes f64's in its own tiles).
    pub fn tiles() -> *const u8 {
        tiles_f32 as *const u8
    }

    /// f32 `exp`, `erf` or `tanh` of a block in place, in the widest registers: `(function
    /// number, block, length)`, under the name `transcendental` (f32 only).
    pub fn transcendental() -> *const u8 {
        transcendental_f32 as *const u8
    }

    /// A library routine: `(call number, operand addresses, output, words)`.
    pub fn call(precision: Precision) -> *const u8 {
        match precision {
            Precision::F32 => call_f32 as *const u8,
            Precision::F64 => call_f64 as *const u8,
        }
    }

    /// Bands of rows over the pool: `(rows function, table, extent, threads)`.
    pub fn parallel_rows() -> *const u8 {
        parallel_rows as *const u8
    }
}

/// The scalar functions kernels call, for one float type: `extern "C"` shims over Rust's
/// implementations (and `libm`'s `erf`), in a module per type with `of` giving each address.
macro_rules! math_shims {
    ($module:ident, $t:ty, $suffix:literal, $erf:path) => {
        mod $module {
            #[unsafe(export_name = concat!("nabla_exp_", $suffix))]
            extern "C" fn exp(x: $t) -> $t {
                x.exp()
            }
            #[unsafe(export_name = concat!("nabla_log_", $suffix))]
            extern "C" fn log(x: $t) -> $t {
                x.ln()
            }
            #[unsafe(export_name = concat!("nabla_tanh_", $suffix))]
            extern "C" fn tanh(x: $t) -> $t {
                x.tanh()
            }
            #[unsafe(export_name = concat!("nabla_sigmoid_", $suffix))]
            extern "C" fn sigmoid(x: $t) -> $t {
                1.0 / (1.0 + (-x).exp())
            }
            #[unsafe(export_name = concat!("nabla_pow_", $suffix))]
            extern "C" fn pow(a: $t, b: $t) -> $t {
                a.powf(b)
            }
            #[unsafe(export_name = concat!("nabla_sin_", $suffix))]
            extern "C" fn sin(x: $t) -> $t {
                x.sin()
            }
            #[unsafe(export_name = concat!("nabla_cos_", $suffix))]
            extern "C" fn cos(x: $t) -> $t {
                x.cos()
            }
            #[unsafe(export_name = concat!("nabla_tan_", $suffix))]
            extern "C" fn tan(x: $t) -> $t {
                x.tan()
            }
            #[unsafe(export_name = concat!("nabla_sinh_", $suffix))]
            extern "C" fn sinh(x: $t) -> $t {
                x.sinh()
            }
            #[unsafe(export_name = concat!("nabla_cosh_", $suffix))]
            extern "C" fn cosh(x: $t) -> $t {
                x.cosh()
            }
            #[unsafe(export_name = concat!("nabla_atan_", $suffix))]
            extern "C" fn atan(x: $t) -> $t {
                x.atan()
            }
            #[unsafe(export_name = concat!("nabla_erf_", $suffix))]
            extern "C" fn erf(x: $t) -> $t {
                $erf(x)
            }

            /// The address of the shim of the function named `name`.
            pub(super) fn of(name: &str) -> Option<*const u8> {
                Some(match name {
                    "exp" => exp as *const u8,
                    "log" => log as *const u8,
                    "tanh" => tanh as *const u8,
                    "sigmoid" => sigmoid as *const u8,
                    "sin" => sin as *const u8,
                    "cos" => cos as *const u8,
                    "tan" => tan as *const u8,
                    "sinh" => sinh as *const u8,
                    "cosh" => cosh as *const u8,
                    "atan" => atan as *const u8,
                    "erf" => erf as *const u8,
                    "pow" => pow as *const u8,
                    _ => return None,
                })
            }
        }
    };
}

math_shims!(shims_f32, f32, "f32", libm::erff);
math_shims!(shims_f64, f64, "f64", libm::erf);

/// An `extern "C"` matrix product generated code calls, `(m, k, n, a, a_row, a_col, b, b_row,
/// b_col, c, threads)`, exported as `nabla_<name>`, computing the [`Gemm`] by `$run`.
macro_rules! product_shim {
    ($name:ident, $t:ty, |$product:ident, $threads:ident| $run:expr) => {
        #[allow(clippy::too_many_arguments)]
        #[unsafe(export_name = concat!("nabla_", stringify!($name)))]
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
            $threads: usize,
        ) {
            let $product = Gemm {
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
                c_row: n as isize,
            };
            // SAFETY: the generated kernel passes buffers the runtime checked against the plan:
            // `a` and `b` hold every element their strides reach, `c` holds `m * n`, and `c`
            // overlaps neither (the scheduler gives every product a buffer of its own).
            unsafe { $run }
        }
    };
}

// The GEMM (`nabla_gemm_f32`, `nabla_gemm_f64`), on up to `threads` threads.
product_shim!(gemm_f32, f32, |product, threads| product.run(threads));
product_shim!(gemm_f64, f64, |product, threads| product.run(threads));
// Small f32 products in register tiles (`nabla_tiles_f32`, see [`crate::tiles`]), where the
// target has AVX2: on the calling thread.
product_shim!(tiles_f32, f32, |product, _threads| product.tiles());

/// The `nabla_transcendental_f32` symbol generated code calls where the target has AVX2 and
/// FMA: a [`Transcendental`] (by its number) of `len` elements at `block`, in place.
#[unsafe(export_name = "nabla_transcendental_f32")]
extern "C" fn transcendental_f32(function: i64, block: *mut f32, len: i64) {
    let Some(f) = Transcendental::of(function) else {
        return;
    };
    // SAFETY: generated code passes a block of its own stack holding `len` elements.
    f.apply(unsafe { std::slice::from_raw_parts_mut(block, len.max(0) as usize) })
}

/// The `nabla_call` symbol generated code calls for a library call: the library routine
/// `call` (a [`Call`] as an integer) on the buffers whose addresses `inputs` lists, writing
/// `out`; `words` holds the thread count, then the call's sizes.
///
macro_rules! call_shim {
    ($name:ident, $t:ty) => {
        #[unsafe(export_name = concat!("nabla_", stringify!($name)))]
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
            let count = 1 + call::arg_count(call, &head[1..]);
            let words = unsafe { std::slice::from_raw_parts(words, count) };
            let (threads, args) = (words[0], &words[1..]);
            // SAFETY: the runtime checked every buffer against the plan, which sized them from
            // these sizes, and the output overlaps no operand; generated code passes one
            // address per operand.
            let input = |i: usize| unsafe {
                std::slice::from_raw_parts(*inputs.add(i), call::length(call, args, Some(i)))
            };
            let out =
                unsafe { std::slice::from_raw_parts_mut(out, call::length(call, args, None)) };
            library::run(call, args, input, out, threads);
        }
    };
}

call_shim!(call_f32, f32);
call_shim!(call_f64, f64);

/// A kernel's function computing rows `start..end` of one phase (generated for a loop whose rows split over threads).
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
#[unsafe(export_name = "nabla_parallel")]
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
