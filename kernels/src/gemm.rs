//! Matrix products through the `gemm` crate: strided operands (so a transposed operand costs
//! nothing), one thread or bands of rows or columns on the fork-join pool.

use crate::float::Float;
use crate::parallel;

#[cfg(target_arch = "x86_64")]
mod leveled;

/// `c [m, n] (+)= A [m, k] @ B [k, n]`, the operands given as `(elements, row stride, column
/// stride)` and `c` row-major; with `accumulate`, added to what `c` holds.
pub(super) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    (a, a_row, a_col): (&[T], isize, isize),
    (b, b_row, b_col): (&[T], isize, isize),
    accumulate: bool,
) {
    debug_assert!(c.len() >= m * n);
    // SAFETY: the strides stay inside `a` and `b` (each call above passes the full operand
    // of an image), and `c` is a distinct buffer of `m * n` elements.
    unsafe {
        strided_gemm(
            [m, n, k],
            (c.as_mut_ptr(), n as isize),
            (a.as_ptr(), a_row, a_col),
            (b.as_ptr(), b_row, b_col),
            accumulate,
        )
    }
}

/// The most of `k` one call into the `gemm` crate sums. The crate cuts `k` into blocks it
/// sizes from the L1 cache's geometry and its register tile, so the order of each sum, and its
/// bits, depended on the CPU and the build: the MLP's 784 inputs were two blocks of 392 in the
/// AVX-512 build on an Intel Ice Lake and one of 784 in the AVX2 build there and on aarch64
/// (8,176 of 10,000 exported logits differed in their last bits). It never cuts a `k` of 512 or
/// less, so products are cut here instead, into the equal blocks the crate itself chooses
/// where its limit is 512, each block summed from zero and added to `c` in order: the same
/// bits on every CPU, build and thread count.
const K_BLOCK: usize = 512;

/// `c [m, n] (+)= A [m, k] @ B [k, n]` on this thread, every operand given by its start and
/// strides (`c` by its row stride, columns contiguous), so transposed operands cost nothing;
/// `k` summed in blocks of at most [`K_BLOCK`].
///
/// # Safety
/// The strides stay inside each operand, and `c` overlaps neither `a` nor `b`.
pub(super) unsafe fn strided_gemm<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    [m, n, k]: [usize; 3],
    (c, c_row): (*mut T, isize),
    (a, a_row, a_col): (*const T, isize, isize),
    (b, b_row, b_col): (*const T, isize, isize),
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    let level = crate::isa::of_products();
    #[cfg(not(target_arch = "x86_64"))]
    let level = crate::isa::Level::Native;
    // SAFETY: as the caller promises.
    unsafe {
        blocked(
            level,
            [m, n, k],
            (c, c_row),
            (a, a_row, a_col),
            (b, b_row, b_col),
            accumulate,
        )
    }
}

/// [`strided_gemm`] at `level`, each block of `k` one call into the `gemm` crate.
///
/// # Safety
/// As [`strided_gemm`]'s.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
unsafe fn blocked<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    level: crate::isa::Level,
    [m, n, k]: [usize; 3],
    (c, c_row): (*mut T, isize),
    (a, a_row, a_col): (*const T, isize, isize),
    (b, b_row, b_col): (*const T, isize, isize),
    accumulate: bool,
) {
    // One call into the crate: `k` in one block from `a` and `b`.
    let call = |k: usize, a: *const T, b: *const T, accumulate: bool| {
        #[cfg(target_arch = "x86_64")]
        if level != crate::isa::Level::Native {
            let operands = leveled::Operands {
                mnk: [m, n, k],
                c: (c.cast(), c_row),
                a: (a.cast(), a_row, a_col),
                b: (b.cast(), b_row, b_col),
                accumulate,
            };
            // SAFETY: as the caller promises; `T` is f32 or f64 (`Float`).
            unsafe {
                if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
                    return leveled::f32(level, operands);
                }
                if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
                    return leveled::f64(level, operands);
                }
            }
        }
        // SAFETY: as the caller promises.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c,
                1,
                c_row,
                accumulate,
                a,
                a_col,
                a_row,
                b,
                b_col,
                b_row,
                T::one(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    let blocks = k.div_ceil(K_BLOCK).max(1);
    let block = k.div_ceil(blocks);
    for index in 0..blocks {
        let start = index * block;
        // `start..start + len` is inside `0..k`, so the operands' blocks are inside them.
        call(
            block.min(k - start),
            a.wrapping_offset(start as isize * a_col),
            b.wrapping_offset(start as isize * b_row),
            accumulate || index > 0,
        );
    }
}

/// A matrix product's operands: `a: [m, k]` and `b: [k, n]` by row and column strides (so
/// transposes cost nothing), `c: [m, n]` by its row stride (its columns contiguous).
#[derive(Clone, Copy)]
pub(crate) struct Gemm<T> {
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) a: *const T,
    pub(crate) a_row: isize,
    pub(crate) a_col: isize,
    pub(crate) b: *const T,
    pub(crate) b_row: isize,
    pub(crate) b_col: isize,
    pub(crate) c: *mut T,
    pub(crate) c_row: isize,
}

// SAFETY: the pointers are only used by `Gemm::run`, each thread on a disjoint part of `c`
// and reading `a` and `b`, which nothing writes meanwhile.
unsafe impl<T> Send for Gemm<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Gemm<T> {}

/// How a product of `m` rows and `n` columns is split on `threads` threads: the number of bands
/// of at least 16 rows or columns, and whether they are bands of rows (of the longer side where
/// both split alike). Every band sums `k` in the whole product's blocks ([`K_BLOCK`]), so the
/// bits do not depend on the thread count.
fn bands([m, n]: [usize; 2], threads: usize) -> (usize, bool) {
    let parts = |len: usize| threads.min(len / 16).max(1);
    let (rows, columns) = (parts(m), parts(n));
    match rows.cmp(&columns) {
        std::cmp::Ordering::Equal => (rows, m >= n),
        more => (rows.max(columns), more.is_gt()),
    }
}

/// Products smaller than this (multiply-adds, a few microseconds of work) run on one thread.
/// Above it the fork and join of [`parallel`] (well under a microsecond while its helpers
/// spin) is worth paying: measured with `nabla bench`, lowering this from 2^24 to 2^17 took
/// the batch-16 MLP step from 0.49 ms to 0.32 ms and the char-RNN step (products of 2M) from
/// 15.3 ms to 10.4 ms; 2^16 and 2^18 measured the same.
const PARALLEL_MIN_MACS: usize = 1 << 17;

impl<T: 'static + Copy + num_traits::Zero + num_traits::One + Send + Sync> Gemm<T> {
    /// The product through the `gemm` crate, split into `threads` bands of rows (or of
    /// columns, when there are more) run on the fork-join pool. Every element is computed
    /// by one band, in the same order whatever the thread count ([`K_BLOCK`]).
    ///
    /// # Safety
    /// `a`, `b` and `c` hold every element their strides reach, and `c` overlaps neither
    /// `a` nor `b`.
    pub(crate) unsafe fn run(self, threads: usize) {
        let (parts, by_rows) = if self.m * self.k * self.n >= PARALLEL_MIN_MACS {
            bands([self.m, self.n], threads)
        } else {
            (1, true)
        };
        if parts == 1 {
            // SAFETY: as the caller promises.
            return unsafe { self.serial() };
        }
        let len = if by_rows { self.m } else { self.n };
        parallel::for_each_part(parts, threads, &|p| {
            let (start, end) = (len * p / parts, len * (p + 1) / parts);
            let mut band = self;
            // SAFETY: the offsets stay inside the operands, and the bands of `c` are disjoint.
            unsafe {
                if by_rows {
                    band.m = end - start;
                    band.a = self.a.offset(start as isize * self.a_row);
                    band.c = self.c.offset(start as isize * self.c_row);
                } else {
                    band.n = end - start;
                    band.b = self.b.offset(start as isize * self.b_col);
                    band.c = self.c.add(start);
                }
                band.serial()
            }
        });
    }

    /// The product on this thread.
    unsafe fn serial(self) {
        // SAFETY: as `run`'s caller promises, for this band.
        unsafe {
            strided_gemm(
                [self.m, self.n, self.k],
                (self.c, self.c_row),
                (self.a, self.a_row, self.a_col),
                (self.b, self.b_row, self.b_col),
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product sums `k` in the same blocks at every vector level this CPU has, whatever the
    /// `gemm` crate would choose from its caches: each element is the sum, in order, of its
    /// blocks' fused multiply-add chains (`K_BLOCK`). Without the blocks, on an Intel Ice Lake
    /// the AVX2 build summed 784 terms in one block where the AVX-512 build took two of 392.
    #[test]
    fn every_level_sums_k_in_the_same_blocks() {
        use crate::isa::Level;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for [m, k, n] in [[64usize, 784, 256], [3, 1025, 70], [100, 300, 20]] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let blocks = k.div_ceil(K_BLOCK);
            let block = k.div_ceil(blocks);
            let expected: Vec<u32> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    let mut total = 0.0f32;
                    for start in (0..k).step_by(block) {
                        let mut sum = 0.0f32;
                        for kk in start..(start + block).min(k) {
                            sum = a[i * k + kk].mul_add(b[kk * n + j], sum);
                        }
                        total += sum;
                    }
                    total.to_bits()
                })
                .collect();
            let mut levels = vec![Level::Native];
            #[cfg(target_arch = "x86_64")]
            levels.extend(
                ["avx512", "avx2"]
                    .into_iter()
                    .filter_map(|name| Level::named(name).ok()),
            );
            for level in levels {
                let mut c = vec![0.0f32; m * n];
                // SAFETY: the operands are whole row-major matrices of these sizes.
                unsafe {
                    blocked(
                        level,
                        [m, n, k],
                        (c.as_mut_ptr(), n as isize),
                        (a.as_ptr(), k as isize, 1),
                        (b.as_ptr(), n as isize, 1),
                        false,
                    )
                };
                let differing = c
                    .iter()
                    .zip(&expected)
                    .filter(|(c, e)| c.to_bits() != **e)
                    .count();
                assert_eq!(differing, 0, "[{m}, {k}, {n}] at {level:?}");
            }
        }
    }

    #[test]
    fn both_threads_take_a_band_where_both_sides_allow() {
        // The MLP's first layer at batch 64: bands of its wider side.
        assert_eq!(bands([64, 128], 2), (2, false));
        assert_eq!(bands([128, 10], 2), (2, true));
        assert_eq!(bands([20, 1000], 8), (8, false));
    }
}
