//! Small f32 matrix products in registers, precompiled for the CPU's widest vectors. Cranelift
//! emits 128-bit vectors at most, so a product of a few thousand multiply-adds (a tiny model's
//! layer, an RNN's step at a small batch) ran at a quarter of an AVX-512 core's width in
//! generated register tiles, while the `gemm` crate's packing and dispatch cost more than such a
//! product's arithmetic. Here each tile of up to [`Vector::ROWS`] rows by two vectors keeps its
//! accumulators in registers over the whole `k` loop (one `A` element broadcast per row and
//! step, one row of `B` loaded), with masked loads and stores for a ragged last column block,
//! in an AVX-512 and an AVX2 build chosen at run time as [`crate::isa`] allows.
//!
//! Every element is `fma(a[i, k], b[k, j], ...)` summed from 0 over `k` in order, whatever the
//! build: the bits are those of the portable loop (and of generated register tiles), on every
//! CPU and level.

use crate::gemm::Gemm;

thread_local! {
    /// `B` with contiguous columns, when the caller's has not (a transposed operand).
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether [`Gemm::tiles`] has a build in vector registers here (AVX2 or AVX-512, as
/// `NABLA_ISA` allows), rather than only the portable loop.
pub(crate) fn vectorised() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::isa::wide() != crate::isa::Wide::None;
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Gemm<f32> {
    /// Computes the product in register tiles.
    ///
    /// # Safety
    /// The strides stay inside `a`, `b` and `c`, and `c` overlaps neither `a` nor `b`.
    pub(crate) unsafe fn tiles(self) {
        if self.b_col == 1 || self.k == 0 || self.n == 0 {
            // SAFETY: as the caller promises.
            return unsafe { self.dispatch() };
        }
        PACKED.with_borrow_mut(|packed| {
            // Grown, never shrunk: products of different sizes take turns with it.
            let len = self.k * self.n;
            if packed.len() < len {
                packed.resize(len, 0.0);
            }
            let packed = &mut packed[..len];
            // SAFETY: as the caller promises.
            unsafe { self.pack(packed) };
            let contiguous = Gemm {
                b: packed.as_ptr(),
                b_row: self.n as isize,
                b_col: 1,
                ..self
            };
            // SAFETY: `packed` holds `B` as `k` rows of `n`; the rest as the caller promises.
            unsafe { contiguous.dispatch() }
        });
    }

    /// `B` into `packed` as `k` rows of `n` contiguous columns, row by row of the copy, so
    /// that its writes are consecutive. Element by element: AVX2 gathers of eight columns took
    /// a tiny model's two transposed weights from 1,940 instructions a step to 720, but its
    /// step from 1.34-1.35 µs to 1.37-1.38 on Zen 4, whose gathers are slow.
    ///
    /// # Safety
    /// `b`'s strides stay inside it.
    unsafe fn pack(&self, packed: &mut [f32]) {
        for (kk, row) in packed.chunks_exact_mut(self.n).enumerate() {
            // SAFETY: row `kk` of `b` is inside it, as the caller promises.
            let mut from = unsafe { self.b.offset(kk as isize * self.b_row) };
            for x in row {
                // SAFETY: as above, each column of that row in turn.
                *x = unsafe { *from };
                from = from.wrapping_offset(self.b_col);
            }
        }
    }

    /// The product by the widest build the CPU and `NABLA_ISA` allow; `b_col` is 1.
    unsafe fn dispatch(self) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::isa::Wide;
            // SAFETY: the level says the CPU has the build's extensions; the rest as the
            // caller promises.
            match crate::isa::wide() {
                Wide::Avx512 => return unsafe { x86::avx512(self) },
                Wide::Avx2 => return unsafe { x86::avx2(self) },
                Wide::None => {}
            }
        }
        // SAFETY: as the caller promises.
        unsafe { self.portable() }
    }

    /// The product element by element, in the order every build sums.
    unsafe fn portable(self) {
        for i in 0..self.m as isize {
            for j in 0..self.n as isize {
                let mut sum = 0.0f32;
                for kk in 0..self.k as isize {
                    // SAFETY: inside the operands, as the caller promises.
                    let (a, b) = unsafe {
                        (
                            *self.a.offset(i * self.a_row + kk * self.a_col),
                            *self.b.offset(kk * self.b_row + j * self.b_col),
                        )
                    };
                    sum = a.mul_add(b, sum);
                }
                // SAFETY: inside `c`, as the caller promises.
                unsafe { *self.c.offset(i * self.c_row + j) = sum };
            }
        }
    }
}

/// A vector register of f32 lanes and the operations a tile needs. Each method is compiled
/// with its extensions enabled; a tile, inlined into the build's entry point, which enables the
/// same, inlines them in turn.
#[cfg(target_arch = "x86_64")]
trait Vector: Copy {
    /// Lanes per register.
    const LANES: usize;
    /// Rows per tile in this width's own build: two accumulators each, with two `B` vectors
    /// and a broadcast beside them in the register file.
    const ROWS: usize;
    /// Which of the first `count` lanes a masked access touches (`count` at most `LANES`).
    type Mask: Copy;
    unsafe fn mask(count: usize) -> Self::Mask;
    unsafe fn zero() -> Self;
    unsafe fn splat(at: *const f32) -> Self;
    unsafe fn load(at: *const f32) -> Self;
    unsafe fn store(self, at: *mut f32);
    unsafe fn load_masked(at: *const f32, mask: Self::Mask) -> Self;
    unsafe fn store_masked(self, at: *mut f32, mask: Self::Mask);
    /// `a * b + self`, rounded once.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Vector;
    use crate::gemm::Gemm;

    /// The operations both widths spell alike, from their intrinsics' names.
    macro_rules! unmasked {
        ($v:ident, $features:literal, $zero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident) => {
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn zero() -> Self {
                $v($zero())
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(at: *const f32) -> Self {
                // SAFETY: the caller's element.
                $v($set1(unsafe { *at }))
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(at: *const f32) -> Self {
                // SAFETY: the caller's `LANES` elements.
                $v(unsafe { $load(at) })
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store(self, at: *mut f32) {
                // SAFETY: as for `load`.
                unsafe { $store(at, self.0) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fma(self, a: Self, b: Self) -> Self {
                $v($fmadd(a.0, b.0, self.0))
            }
        };
    }

    #[derive(Clone, Copy)]
    pub(super) struct Zmm(__m512);

    impl Vector for Zmm {
        const LANES: usize = 16;
        const ROWS: usize = 8;
        type Mask = __mmask16;
        unmasked!(
            Zmm,
            "avx512f",
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_fmadd_ps
        );
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn mask(count: usize) -> __mmask16 {
            ((1u32 << count) - 1) as __mmask16
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load_masked(at: *const f32, mask: __mmask16) -> Self {
            // SAFETY: the masked lanes are inside the caller's row; the rest are not read.
            Zmm(unsafe { _mm512_maskz_loadu_ps(mask, at) })
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store_masked(self, at: *mut f32, mask: __mmask16) {
            // SAFETY: as for `load_masked`.
            unsafe { _mm512_mask_storeu_ps(at, mask, self.0) }
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Ymm(__m256);

    impl Vector for Ymm {
        const LANES: usize = 8;
        const ROWS: usize = 4;
        type Mask = __m256i;
        unmasked!(
            Ymm,
            "avx2,fma",
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_fmadd_ps
        );
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn mask(count: usize) -> __m256i {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lane)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load_masked(at: *const f32, mask: __m256i) -> Self {
            // SAFETY: the masked lanes are inside the caller's row; the rest are not read.
            Ymm(unsafe { _mm256_maskload_ps(at, mask) })
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store_masked(self, at: *mut f32, mask: __m256i) {
            // SAFETY: as for `load_masked`.
            unsafe { _mm256_maskstore_ps(at, mask, self.0) }
        }
    }

    /// The AVX-512 build. Columns past the last multiple of 16 that fit in 8 go in AVX2
    /// vectors: Zen 4 runs a 512-bit multiply-add as two 256-bit halves, so a half-empty
    /// 512-bit register costs twice a full 256-bit one.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512(p: Gemm<f32>) {
        let ragged = p.n % Zmm::LANES;
        let wide = if ragged <= Ymm::LANES {
            p.n - ragged
        } else {
            p.n
        };
        // SAFETY: as the caller promises.
        unsafe {
            columns::<Zmm>(p, 0..wide, Zmm::ROWS);
            columns::<Ymm>(p, wide..p.n, Zmm::ROWS);
        }
    }

    /// The AVX2 build.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(p: Gemm<f32>) {
        // SAFETY: as the caller promises.
        unsafe { columns::<Ymm>(p, 0..p.n, Ymm::ROWS) }
    }

    /// Columns `columns` in blocks of up to two vectors, each split into tiles of up to
    /// `most_rows` rows (at most 8).
    #[inline(always)]
    unsafe fn columns<V: Vector>(p: Gemm<f32>, columns: std::ops::Range<usize>, most_rows: usize) {
        let mut j = columns.start;
        while j < columns.end {
            let width = (columns.end - j).min(2 * V::LANES);
            let mut i = 0;
            while i < p.m {
                let rows = (p.m - i).min(most_rows);
                // SAFETY: the tile is inside the product, as the caller promises.
                unsafe {
                    match (width > V::LANES, !width.is_multiple_of(V::LANES)) {
                        (true, true) => tile_rows::<V, 2, true>(p, i, j, width, rows),
                        (true, false) => tile_rows::<V, 2, false>(p, i, j, width, rows),
                        (false, true) => tile_rows::<V, 1, true>(p, i, j, width, rows),
                        (false, false) => tile_rows::<V, 1, false>(p, i, j, width, rows),
                    }
                }
                i += rows;
            }
            j += width;
        }
    }

    /// A tile of `rows` rows, with the row count a constant of its own code.
    #[inline(always)]
    unsafe fn tile_rows<V: Vector, const W: usize, const RAGGED: bool>(
        p: Gemm<f32>,
        i: usize,
        j: usize,
        columns: usize,
        rows: usize,
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            match rows {
                1 => tile::<V, 1, W, RAGGED>(p, i, j, columns),
                2 => tile::<V, 2, W, RAGGED>(p, i, j, columns),
                3 => tile::<V, 3, W, RAGGED>(p, i, j, columns),
                4 => tile::<V, 4, W, RAGGED>(p, i, j, columns),
                5 => tile::<V, 5, W, RAGGED>(p, i, j, columns),
                6 => tile::<V, 6, W, RAGGED>(p, i, j, columns),
                7 => tile::<V, 7, W, RAGGED>(p, i, j, columns),
                _ => tile::<V, 8, W, RAGGED>(p, i, j, columns),
            }
        }
    }

    /// Rows `i..i + R` by columns `j..j + columns`: `W` vectors, the last one masked when
    /// `RAGGED` (AMD's AVX2 masked stores are slow, so full vectors are not masked).
    #[inline(always)]
    unsafe fn tile<V: Vector, const R: usize, const W: usize, const RAGGED: bool>(
        p: Gemm<f32>,
        i: usize,
        j: usize,
        columns: usize,
    ) {
        // SAFETY: every access is inside the operands: rows `i..i + R` of `a` and `c`,
        // columns `j..j + columns` of `b` (contiguous) and `c`, the mask covering the rest.
        unsafe {
            let mask = V::mask(columns - (W - 1) * V::LANES);
            let load = |at: *const f32, w: usize| {
                if RAGGED && w == W - 1 {
                    V::load_masked(at, mask)
                } else {
                    V::load(at)
                }
            };
            let mut acc = [[V::zero(); W]; R];
            let a = p.a.offset(i as isize * p.a_row);
            let mut b = p.b.add(j);
            for kk in 0..p.k as isize {
                let row: [V; W] = std::array::from_fn(|w| load(b.add(w * V::LANES), w));
                let a_k = a.offset(kk * p.a_col);
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x = V::splat(a_k.offset(r as isize * p.a_row));
                    for (sum, &y) in sums.iter_mut().zip(&row) {
                        *sum = sum.fma(x, y);
                    }
                }
                b = b.offset(p.b_row);
            }
            for (r, sums) in acc.iter().enumerate() {
                let c = p.c.offset((i + r) as isize * p.c_row).add(j);
                for (w, sum) in sums.iter().enumerate() {
                    if RAGGED && w == W - 1 {
                        sum.store_masked(c.add(w * V::LANES), mask);
                    } else {
                        sum.store(c.add(w * V::LANES));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(
        [m, k, n]: [usize; 3],
        a: &[f32],
        (a_row, a_col): (isize, isize),
        b: &[f32],
        (b_row, b_col): (isize, isize),
        build: impl Fn(Gemm<f32>),
    ) -> Vec<f32> {
        let mut c = vec![f32::NAN; m * n];
        build(Gemm {
            m,
            k,
            n,
            a: a.as_ptr(),
            a_row,
            a_col,
            b: b.as_ptr(),
            b_row,
            b_col,
            c: c.as_mut_ptr(),
            c_row: n as isize,
        });
        c
    }

    /// A way to compute a product, by name.
    type Build = (&'static str, fn(Gemm<f32>));

    /// Every build the CPU has gives the portable loop's bits, on sizes with ragged rows and
    /// columns (a last block in 256-bit registers on AVX-512), transposed operands (packed
    /// when dispatched; the builds themselves take `B` with contiguous columns), and NaN and
    /// infinities among the values.
    #[test]
    fn every_build_sums_in_the_portable_order() {
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2001) as f32 / 997.0 - 1.0
        };
        let mut builds: Vec<Build> = vec![("dispatched", |p| unsafe { p.tiles() })];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                builds.push(("avx512", |p| unsafe { x86::avx512(p) }));
            }
            if avx2 {
                builds.push(("avx2", |p| unsafe { x86::avx2(p) }));
            }
        }
        let shapes = [
            [1, 1, 1],
            [16, 16, 16],
            [3, 5, 7],
            [9, 2, 33],
            [17, 40, 2],
            [8, 0, 5],
            [5, 3, 24],
        ];
        for [m, k, n] in shapes {
            let mut a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            if m * k > 2 {
                a[1] = f32::NAN;
                a[2] = f32::INFINITY;
            }
            for transposed_a in [false, true] {
                for transposed_b in [false, true] {
                    let a_strides = if transposed_a {
                        (1, m as isize)
                    } else {
                        (k as isize, 1)
                    };
                    let b_strides = if transposed_b {
                        (1, k as isize)
                    } else {
                        (n as isize, 1)
                    };
                    let expected = product([m, k, n], &a, a_strides, &b, b_strides, |p| unsafe {
                        p.portable()
                    });
                    for (name, build) in &builds {
                        if transposed_b && *name != "dispatched" {
                            continue;
                        }
                        let got = product([m, k, n], &a, a_strides, &b, b_strides, build);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&expected),
                            "{name} at {m}x{k}x{n}, A transposed {transposed_a}, B {transposed_b}"
                        );
                    }
                }
            }
        }
    }
}
