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

/// The one call into the `gemm` crate, on this thread: `c [m, n] (+)= A [m, k] @ B [k, n]`,
/// every operand given by its start and strides (`c` by its row stride, columns contiguous),
/// so transposed operands cost nothing.
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

/// The side up to which the `gemm` crate treats a product as small, and the `k` above which
/// its blocking of small and large products differs (`gemm-common`'s `gemm_basic_generic`).
const SMALL_SIDE: usize = 64;
const SMALL_KC: usize = 512;

/// How a product of sizes `[m, k, n]` is split on `threads` threads: the number of bands of at
/// least 16 rows or columns, and whether they are bands of rows. Every band must sum `k` in the
/// whole product's blocks, so that the bits do not depend on the thread count: a large product
/// whose `k` exceeds [`SMALL_KC`] keeps every band larger than [`SMALL_SIDE`] on one side,
/// which splitting the other side does when that side is large.
fn bands([m, k, n]: [usize; 3], threads: usize) -> (usize, bool) {
    let parts = |len: usize| threads.min(len / 16).max(1);
    let (mut rows, mut columns) = (parts(m), parts(n));
    if k > SMALL_KC && (m > SMALL_SIDE || n > SMALL_SIDE) {
        if n <= SMALL_SIDE {
            rows = rows.min(m / (SMALL_SIDE + 1)).max(1);
        }
        if m <= SMALL_SIDE {
            columns = columns.min(n / (SMALL_SIDE + 1)).max(1);
        }
    }
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
    /// by one band, in the same order whatever the thread count: the crate sums `k` in blocks
    /// of 512 for products within 64 x 64 and in blocks sized by the caches for larger ones,
    /// so a band of a larger product is kept larger than that ([`bands`]).
    ///
    /// # Safety
    /// `a`, `b` and `c` hold every element their strides reach, and `c` overlaps neither
    /// `a` nor `b`.
    pub(crate) unsafe fn run(self, threads: usize) {
        let (parts, by_rows) = if self.m * self.k * self.n >= PARALLEL_MIN_MACS {
            bands([self.m, self.k, self.n], threads)
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

    /// Every band of a split product takes the `gemm` crate's path for the whole product (small
    /// within 64 x 64, else large), so it blocks `k` the same way on any number of threads.
    #[test]
    fn bands_keep_the_whole_products_blocking() {
        let small = |m: usize, n: usize| m <= SMALL_SIDE && n <= SMALL_SIDE;
        for m in [16, 33, 64, 65, 100, 128, 130, 784] {
            for n in [1, 10, 64, 65, 128, 256] {
                for threads in 1..=8 {
                    let (parts, by_rows) = bands([m, 784, n], threads);
                    let len = if by_rows { m } else { n };
                    assert!(parts >= 1 && parts <= threads.max(1));
                    for p in 0..parts {
                        let band = len * (p + 1) / parts - len * p / parts;
                        let (bm, bn) = if by_rows { (band, n) } else { (m, band) };
                        assert_eq!(
                            small(bm, bn),
                            small(m, n),
                            "[{m}, 784, {n}] on {threads} threads: band {bm} x {bn}"
                        );
                    }
                }
            }
        }
        // Where nothing forbids it, both threads are used: the MLP's first layer at batch 64.
        assert_eq!(bands([64, 784, 128], 2), (2, true));
    }
}
