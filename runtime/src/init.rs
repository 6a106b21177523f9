//! Parameter initialisation as plain data.
//!
//! The DSL resolves named schemes (Xavier, He, PyTorch's `nn.Linear` default) to one of these
//! concrete distributions using the parameter's fan-in and fan-out, so the runtime only has to
//! draw numbers and never needs to know how a scheme was chosen.

use crate::Rng;

/// How to fill a parameter tensor before training.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Every element equal to the value.
    Constant(f64),
    /// Independent uniform draws in `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Independent normal draws.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Literal values in row-major order; the length equals the parameter's element count.
    Values(Vec<f64>),
}

impl Init {
    /// Draws `len` values in row-major order from this initialiser.
    pub fn sample(&self, len: usize, rng: &mut Rng) -> Vec<f64> {
        (0..len).map(|i| self.draw(i, rng)).collect()
    }

    /// Value `i` of the row-major order; random initialisers draw from `rng`.
    pub fn draw(&self, i: usize, rng: &mut Rng) -> f64 {
        match self {
            Init::Constant(v) => *v,
            Init::Uniform { lo, hi } => rng.uniform(*lo, *hi),
            Init::Normal { mean, std } => rng.normal(*mean, *std),
            Init::Values(values) => values[i],
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Init::Constant(v) => write!(f, "constant({v})"),
            Init::Uniform { lo, hi } => write!(f, "uniform({lo:.4}, {hi:.4})"),
            Init::Normal { mean, std } => write!(f, "normal({mean}, {std:.4})"),
            Init::Values(v) => write!(f, "literal({} values)", v.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values() {
        let init = Init::Normal {
            mean: 0.0,
            std: 1.0,
        };
        let a = init.sample(100, &mut Rng::seeded(7));
        let b = init.sample(100, &mut Rng::seeded(7));
        let c = init.sample(100, &mut Rng::seeded(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_stays_in_bounds_and_normal_has_its_moments() {
        let mut rng = Rng::seeded(1);
        let u = Init::Uniform { lo: -0.5, hi: 0.25 }.sample(10_000, &mut rng);
        assert!(u.iter().all(|&v| (-0.5..0.25).contains(&v)));
        let n = Init::Normal {
            mean: 2.0,
            std: 3.0,
        }
        .sample(100_000, &mut rng);
        let mean = n.iter().sum::<f64>() / n.len() as f64;
        let var = n.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.len() as f64;
        assert!((mean - 2.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 3.0).abs() < 0.05, "std {}", var.sqrt());
    }
}
