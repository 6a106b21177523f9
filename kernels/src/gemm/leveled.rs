//! Matrix products at a chosen instruction-set level ([`crate::isa`]): the `gemm` crate's own
//! microkernels for that level (AVX-512, AVX2 and FMA, or scalar) driven by its public
//! `gemm_basic_generic`, as its private dispatch drives the best one; the operands normalised
//! as its `gemm` entry point normalises them (the destination's columns contiguous, strides
//! positive), so that a level computes what that kernel would on a CPU that has nothing better.

use gemm_common::gemm::gemm_basic_generic;
use gemm_common::simd::MixedSimd;

use crate::isa::Level;

/// One product's operands, as [`super::strided_gemm`] takes them, over untyped pointers.
pub(super) struct Operands {
    pub mnk: [usize; 3],
    pub c: (*mut u8, isize),
    pub a: (*const u8, isize, isize),
    pub b: (*const u8, isize, isize),
    pub accumulate: bool,
}

/// The operands as the crate's kernels take them: `dst` column-major-friendly, every stride
/// positive (the crate's `gemm` does the same before its dispatch).
struct Normal {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut u8,
    dst_cs: isize,
    dst_rs: isize,
    lhs: *const u8,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const u8,
    rhs_cs: isize,
    rhs_rs: isize,
}

/// `operands` normalised for elements of `size` bytes.
fn normal(operands: &Operands, size: isize) -> Normal {
    let [m, n, k] = operands.mnk;
    let (dst, c_row) = operands.c;
    let (a, a_row, a_col) = operands.a;
    let (b, b_row, b_col) = operands.b;
    // The kernels prefer a column-major destination: transpose the product when it is not.
    let (dst_cs, dst_rs) = (1, c_row);
    let mut x = if dst_cs < dst_rs.abs() {
        Normal {
            m: n,
            n: m,
            k,
            dst,
            dst_cs: dst_rs,
            dst_rs: dst_cs,
            lhs: b,
            lhs_cs: b_row,
            lhs_rs: b_col,
            rhs: a,
            rhs_cs: a_row,
            rhs_rs: a_col,
        }
    } else {
        Normal {
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            lhs: a,
            lhs_cs: a_col,
            lhs_rs: a_row,
            rhs: b,
            rhs_cs: b_col,
            rhs_rs: b_row,
        }
    };
    let at = |p: *const u8, count: usize, stride: isize| {
        p.wrapping_offset((count as isize - 1) * stride * size)
    };
    if x.dst_rs < 0 && x.m > 0 {
        x.dst = at(x.dst, x.m, x.dst_rs).cast_mut();
        x.dst_rs = -x.dst_rs;
        x.lhs = at(x.lhs, x.m, x.lhs_rs);
        x.lhs_rs = -x.lhs_rs;
    }
    if x.dst_cs < 0 && x.n > 0 {
        x.dst = at(x.dst, x.n, x.dst_cs).cast_mut();
        x.dst_cs = -x.dst_cs;
        x.rhs = at(x.rhs, x.n, x.rhs_cs);
        x.rhs_cs = -x.rhs_cs;
    }
    if x.lhs_cs < 0 && x.k > 0 {
        x.lhs = at(x.lhs, x.k, x.lhs_cs);
        x.lhs_cs = -x.lhs_cs;
        x.rhs = at(x.rhs, x.k, x.rhs_rs);
        x.rhs_rs = -x.rhs_rs;
    }
    x
}

/// Calls `gemm_basic_generic` with the kernels of module `$kernels`, `$n` lanes, for `$ty`.
macro_rules! with_kernels {
    ($simd:ty, $ty:ty, $n:expr, $kernels:path, $x:expr, $accumulate:expr) => {{
        use $kernels as kernels;
        let x = $x;
        gemm_basic_generic::<
            _,
            $ty,
            { $n },
            { kernels::MR_DIV_N * $n },
            { kernels::NR },
            { kernels::MR_DIV_N },
            { kernels::H_M },
            { kernels::H_N },
        >(
            <$simd as MixedSimd<$ty, $ty, $ty, $ty>>::try_new()
                .expect("the level was checked against the CPU"),
            x.m,
            x.n,
            x.k,
            x.dst.cast(),
            x.dst_cs,
            x.dst_rs,
            $accumulate,
            x.lhs.cast(),
            x.lhs_cs,
            x.lhs_rs,
            x.rhs.cast(),
            x.rhs_cs,
            x.rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            &kernels::UKR,
            &kernels::H_UKR,
            false,
            gemm_common::Parallelism::None,
        )
    }};
}

/// Defines `$name`, a product of `$ty` elements at a level (not [`Level::Native`]) through the
/// microkernels of `$kernels` (the crate `gemm-f32` or `gemm-f64`), AVX-512's and AVX2's
/// with `$avx512` and `$avx2` lanes.
macro_rules! leveled {
    ($name:ident, $ty:ident, $kernels:ident, $avx512:expr, $avx2:expr) => {
        /// A product at `level` (not [`Level::Native`]).
        ///
        /// # Safety
        /// As [`super::strided_gemm`]'s, for operands of this element type.
        pub(super) unsafe fn $name(level: Level, operands: Operands) {
            let x = normal(&operands, std::mem::size_of::<$ty>() as isize);
            let accumulate = operands.accumulate;
            // SAFETY: as the caller promises; the level was checked against the CPU.
            unsafe {
                match level {
                    Level::Avx512 => with_kernels!(
                        gemm_common::simd::V4,
                        $ty,
                        $avx512,
                        $kernels::microkernel::avx512f::$ty,
                        x,
                        accumulate
                    ),
                    Level::Avx2 => with_kernels!(
                        gemm_common::simd::V3,
                        $ty,
                        $avx2,
                        $kernels::microkernel::fma::$ty,
                        x,
                        accumulate
                    ),
                    Level::Baseline | Level::Native => with_kernels!(
                        gemm_common::simd::Scalar,
                        $ty,
                        1,
                        $kernels::microkernel::scalar::$ty,
                        x,
                        accumulate
                    ),
                }
            }
        }
    };
}

leveled!(f32, f32, gemm_f32, 16, 8);
leveled!(f64, f64, gemm_f64, 8, 4);
