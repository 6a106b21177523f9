//! Attention's row loops (softmax and its gradient) written in lanes, so that they vectorise:
//! a sum or a maximum over a row is a chain of dependent additions when written as one fold,
//! which no compiler may reorder (floats do not associate), so each lane of [`LANES`] keeps
//! its own partial result and the lanes are combined in one fixed tree at the end. The bits
//! are then the same on every CPU and thread count, and compiling the same code for AVX2
//! (where the CPU has it and `NABLA_ISA` allows it) only changes the width of the registers:
//! Rust never fuses a multiply and an add on its own, so each lane computes what it would in
//! SSE2.

use crate::float::Float;

/// Partial results kept per row: two AVX2 registers of f32, four SSE2 ones.
pub(crate) const LANES: usize = 16;

/// The attention weights of a row's first `seen` scores in place: `softmax(scale * row)`, a NaN
/// making them NaN as in PyTorch (a NaN score is never the maximum, and its exponential is
/// NaN). The rest of the row comes out 0: a causal row computed to a whole number of lanes
/// instead of a ragged tail, with the bits of the first `seen` alone (a sum's lane of each
/// element does not change, and the rest add exact zeros).
pub(crate) fn softmax<T: Float>(row: &mut [T], seen: usize, scale: T) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::wide_loops() {
        // SAFETY: the CPU has AVX2 and FMA (`wide_loops`).
        return unsafe { softmax_avx2(row, seen, scale) };
    }
    softmax_lanes(row, seen, scale)
}

/// The gradient of the scores from the weights `p` and their gradient `dp` (in place of `dp`):
/// `scale p (dp - sum(p dp))`.
pub(crate) fn softmax_grad<T: Float>(p: &[T], dp: &mut [T], scale: T) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::wide_loops() {
        // SAFETY: the CPU has AVX2 and FMA (`wide_loops`).
        return unsafe { softmax_grad_avx2(p, dp, scale) };
    }
    softmax_grad_lanes(p, dp, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2<T: Float>(row: &mut [T], seen: usize, scale: T) {
    softmax_lanes(row, seen, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_grad_avx2<T: Float>(p: &[T], dp: &mut [T], scale: T) {
    softmax_grad_lanes(p, dp, scale)
}

#[inline(always)]
fn softmax_lanes<T: Float>(row: &mut [T], seen: usize, scale: T) {
    row.iter_mut().for_each(|x| *x = *x * scale);
    row[seen..].fill(T::neg_infinity());
    let max = fold(row, T::neg_infinity(), |m, x| if x > m { x } else { m });
    row.iter_mut().for_each(|x| *x = (*x - max).exp_fast());
    row[seen..].fill(T::zero());
    let inverse = T::one() / fold(row, T::zero(), |a, x| a + x);
    row.iter_mut().for_each(|x| *x = *x * inverse);
}

#[inline(always)]
fn softmax_grad_lanes<T: Float>(p: &[T], dp: &mut [T], scale: T) {
    let mut partial = [T::zero(); LANES];
    let (whole, tail) = (p.len() / LANES * LANES, p.len() % LANES);
    for (ps, ds) in p[..whole]
        .chunks_exact(LANES)
        .zip(dp[..whole].chunks_exact(LANES))
    {
        for j in 0..LANES {
            partial[j] = partial[j] + ps[j] * ds[j];
        }
    }
    for j in 0..tail {
        partial[j] = partial[j] + p[whole + j] * dp[whole + j];
    }
    let total = combine(partial, T::zero(), |a, x| a + x);
    for (ds, &pj) in dp.iter_mut().zip(p) {
        *ds = pj * (*ds - total) * scale;
    }
}

/// `op` folded over `row` in [`LANES`] lanes from `start`, then over the lanes by [`combine`].
#[inline(always)]
fn fold<T: Float>(row: &[T], start: T, op: impl Fn(T, T) -> T) -> T {
    let mut partial = [start; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for j in 0..LANES {
            partial[j] = op(partial[j], chunk[j]);
        }
    }
    for (j, &x) in tail.iter().enumerate() {
        partial[j] = op(partial[j], x);
    }
    combine(partial, start, op)
}

/// The lanes' partial results combined by halves, lane `j` with lane `j + width` for `width`
/// 8, 4, 2 and 1, then into `start`: four dependent steps where folding the lanes in order took
/// sixteen, a sixth of a causal head's short row; the same fixed order on every CPU.
#[inline(always)]
fn combine<T: Float>(mut partial: [T; LANES], start: T, op: impl Fn(T, T) -> T) -> T {
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            partial[j] = op(partial[j], partial[j + width]);
        }
        width /= 2;
    }
    op(start, partial[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of every length up to three chunks, so that tails of every size are covered.
    fn rows() -> impl Iterator<Item = Vec<f32>> {
        (1..3 * LANES).map(|n| (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7).collect())
    }

    #[test]
    fn weights_are_the_softmax_in_f64_to_round_off() {
        for row in rows() {
            let mut p = row.clone();
            softmax(&mut p, row.len(), 0.5);
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(0.5 * f64::from(x)));
            let e: Vec<f64> = row
                .iter()
                .map(|&x| (0.5 * f64::from(x) - max).exp())
                .collect();
            let sum: f64 = e.iter().sum();
            for (got, want) in p.iter().zip(&e) {
                assert!((f64::from(*got) - want / sum).abs() < 1e-6, "{row:?}");
            }
        }
    }

    #[test]
    fn a_nan_score_makes_its_row_nan() {
        let mut row = vec![1.0f32; 2 * LANES + 3];
        row[LANES + 1] = f32::NAN;
        let seen = row.len();
        softmax(&mut row, seen, 1.0);
        assert!(row.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn the_gradient_is_the_softmax_jacobian_times_dp() {
        for row in rows() {
            let mut p = row.clone();
            softmax(&mut p, row.len(), 1.0);
            let dp: Vec<f32> = (0..row.len()).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut ds = dp.clone();
            softmax_grad(&p, &mut ds, 2.0);
            let total: f64 = p.iter().zip(&dp).map(|(&a, &b)| f64::from(a * b)).sum();
            for i in 0..row.len() {
                let want = 2.0 * f64::from(p[i]) * (f64::from(dp[i]) - total);
                assert!((f64::from(ds[i]) - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn a_row_padded_to_whole_lanes_has_the_bits_of_its_seen_part_and_zeros() {
        for row in rows() {
            for seen in 1..=row.len() {
                let mut alone = row[..seen].to_vec();
                softmax(&mut alone, seen, 0.7);
                let mut padded = row.clone();
                padded[seen..].fill(f32::NAN);
                softmax(&mut padded, seen, 0.7);
                assert_eq!(padded[..seen], alone[..]);
                assert!(padded[seen..].iter().all(|&x| x == 0.0));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_loops_give_the_same_bits() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        for row in rows() {
            let (mut narrow, mut wide) = (row.clone(), row.clone());
            softmax_lanes(&mut narrow, row.len(), 0.3);
            // SAFETY: checked above.
            unsafe { softmax_avx2(&mut wide, row.len(), 0.3) };
            assert_eq!(narrow, wide);
            let (mut narrow_grad, mut wide_grad) = (row.clone(), row.clone());
            softmax_grad_lanes(&narrow, &mut narrow_grad, 0.3);
            // SAFETY: checked above.
            unsafe { softmax_grad_avx2(&narrow, &mut wide_grad, 0.3) };
            assert_eq!(narrow_grad, wide_grad);
        }
    }
}
