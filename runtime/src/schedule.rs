//! Learning-rate schedules, evaluated on the host once per epoch and fed to the compiled step as
//! a scalar, so changing the rate never recompiles anything.

/// A learning-rate schedule over epochs `t = 0, 1, ...`.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// `values[i]` while `t < boundaries[i]`, then the last value.
    Piecewise {
        /// Increasing epoch boundaries.
        boundaries: Vec<f64>,
        /// One more value than boundaries.
        values: Vec<f64>,
    },
    /// `lr0 * e^(-k t)`.
    Exponential(f64),
    /// `lr0 / (1 + k t)`.
    InverseTime(f64),
}

/// The schedule as it would be written in a `train` block (`constant` when there is none).
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f64]| {
            let items: Vec<String> = v.iter().map(f64::to_string).collect();
            format!("[{}]", items.join(", "))
        };
        match self {
            Schedule::Constant => f.write_str("constant"),
            Schedule::Piecewise { boundaries, values } => {
                write!(f, "piecewise({}, {})", list(boundaries), list(values))
            }
            Schedule::Exponential(k) => write!(f, "exponential({k})"),
            Schedule::InverseTime(k) => write!(f, "inverse_time({k})"),
        }
    }
}

impl Schedule {
    /// The rate at epoch `t` for base rate `lr0`.
    pub fn rate(&self, lr0: f64, t: usize) -> f64 {
        let t_f = t as f64;
        match self {
            Schedule::Constant => lr0,
            Schedule::Piecewise { boundaries, values } => {
                let i = boundaries.iter().take_while(|&&b| t_f >= b).count();
                values.get(i).copied().unwrap_or(lr0)
            }
            Schedule::Exponential(k) => lr0 * (-k * t_f).exp(),
            Schedule::InverseTime(k) => lr0 / (1.0 + k * t_f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        let p = Schedule::Piecewise {
            boundaries: vec![2.0, 4.0],
            values: vec![1.0, 0.5, 0.1],
        };
        assert_eq!(
            [0, 1, 2, 3, 4, 9].map(|t| p.rate(9.0, t)),
            [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
        );
        assert!((Schedule::Exponential(0.5).rate(2.0, 2) - 2.0 * (-1.0f64).exp()).abs() < 1e-15);
        assert_eq!(Schedule::InverseTime(0.5).rate(3.0, 4), 1.0);
    }
}
