//! The float types the library computes in, and the integer ordering max pooling compares by.

/// A float type the library computes in.
pub(super) trait Float:
    'static + Copy + Send + Sync + num_traits::Float + num_traits::Zero + num_traits::One
{
    /// Its value of `v`.
    fn of(v: f64) -> Self;

    /// An integer ordered as max pooling compares: by value, `-0` equal to `+0`, and every NaN
    /// above everything (PyTorch propagates it). Comparing integers lets the compiler pick with
    /// conditional moves, where float comparisons become branches that real activations
    /// mispredict half the time.
    fn max_key(self) -> i64;

    /// `e^self`, for softmax: f32 by Cephes' polynomial with plain arithmetic, so that loops
    /// over rows vectorise (within 2 ulp for results above 1e-38; smaller ones are about that,
    /// and NaN stays NaN); f64 exactly, for gradient checks.
    fn exp_fast(self) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        // e^x = 2^n e^r with n = round(x log2 e), |r| <= ln 2 / 2; adding and subtracting
        // 1.5 * 2^23 rounds to the nearest integer without a call.
        const ROUND: f32 = 12_582_912.0;
        let x = self.clamp(-87.0, 88.0);
        let k = x * std::f32::consts::LOG2_E + ROUND;
        let n = k - ROUND;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 0.166_666_65)
            * r
            + 0.5;
        let e = p * r * r + r + 1.0;
        // 2^n from `k`'s bits, whose low ones hold n (in -126..=127), without a conversion
        // to an integer (Rust's saturating `as i32` does not vectorise).
        e * f32::from_bits(k.to_bits().wrapping_add(127) << 23)
    }

    fn of(v: f64) -> f32 {
        v as f32
    }

    fn max_key(self) -> i64 {
        let bits = self.to_bits() as i32;
        let sign = bits >> 31;
        // Sign and magnitude to two's complement; negatives move up by one so that -0 is 0.
        let ordered = (bits ^ (sign & i32::MAX)) - sign;
        let nan = bits & i32::MAX > 0x7f80_0000;
        std::hint::select_unpredictable(nan, i64::MAX, ordered.into())
    }
}

impl Float for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }

    fn of(v: f64) -> f64 {
        v
    }

    fn max_key(self) -> i64 {
        let bits = self.to_bits() as i64;
        let sign = bits >> 63;
        let ordered = (bits ^ (sign & i64::MAX)) - sign;
        let nan = bits & i64::MAX > 0x7ff0_0000_0000_0000;
        std::hint::select_unpredictable(nan, i64::MAX, ordered)
    }
}
