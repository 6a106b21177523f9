//! Seeded randomness. Every random draw in nabla (initialisation, shuffling, dropout, gradient
//! checks) goes through [`Rng`], so a fixed seed reproduces a run bit for bit on any machine.

use rand::{Rng as _, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_pcg::Pcg64Mcg;

/// A small, fast, portable PRNG (PCG 64-bit MCG) behind a stable interface.
#[derive(Clone, Debug)]
pub struct Rng(Pcg64Mcg);

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Rng(Pcg64Mcg::seed_from_u64(seed))
    }

    /// The generator of one numbered stream derived from `seed` (epoch 3's shuffle: `[3]`;
    /// dropout layer 2 at step 7: `[tag, 2, 7]`): a function of `seed` and `path` alone, so a
    /// resumed run draws what the uninterrupted one did without saving generator state.
    pub fn stream(seed: u64, path: &[u64]) -> Self {
        Rng::seeded(path.iter().fold(mix(seed), |h, &i| mix(h ^ i)))
    }

    /// A uniform draw in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.random::<f64>()
    }

    /// A normal draw with the given mean and standard deviation (`std >= 0`).
    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        match Normal::new(mean, std) {
            Ok(dist) => dist.sample(&mut self.0),
            Err(_) => mean,
        }
    }

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// SplitMix64's finaliser: nearby inputs give unrelated outputs.
fn mix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
