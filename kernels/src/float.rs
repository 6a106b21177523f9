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
}

impl Float for f32 {
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
