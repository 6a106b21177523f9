//! Learning-rate schedules, evaluated on the host before every step and fed to the compiled step
//! as a scalar, so changing the rate never recompiles anything. The classic ones change the rate
//! once per epoch; the warm-up and decays of transformer recipes once per step.

/// A learning-rate schedule over epochs `t = 0, 1, ...` or steps.
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
    /// Counted in steps `s`: a linear warm-up, `lr0 (s + 1) / (warmup + 1)` while
    /// `s < warmup`, then `decay` (nanoGPT's `get_lr`).
    Steps {
        /// Steps of warm-up.
        warmup: usize,
        /// What follows it.
        decay: Decay,
    },
}

/// What follows a warm-up, with `r = (s - warmup) / (total - warmup)`.
#[derive(Clone, Debug, PartialEq)]
pub enum Decay {
    /// `lr0`.
    Constant,
    /// `min_lr + (1 + cos(pi r)) / 2 (lr0 - min_lr)`, then `min_lr` after step `total`.
    Cosine {
        /// The step at which the rate reaches `min_lr`.
        total: usize,
        /// The final rate.
        min_lr: f64,
    },
    /// `min_lr + (1 - r) (lr0 - min_lr)`, then `min_lr` after step `total`.
    Linear {
        /// The step at which the rate reaches `min_lr`.
        total: usize,
        /// The final rate.
        min_lr: f64,
    },
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
            Schedule::Steps { warmup, decay } => match decay {
                Decay::Constant => write!(f, "warmup({warmup})"),
                Decay::Cosine { total, min_lr } | Decay::Linear { total, min_lr } => {
                    let name = if matches!(decay, Decay::Cosine { .. }) {
                        "cosine"
                    } else {
                        "linear"
                    };
                    write!(f, "{name}({total}, min_lr = {min_lr}, warmup = {warmup})")
                }
            },
        }
    }
}

impl Schedule {
    /// The rate for base rate `lr0` in epoch `t` (from 0) at step `step` (from 0, counted
    /// over the whole run).
    pub fn rate(&self, lr0: f64, t: usize, step: usize) -> f64 {
        let t_f = t as f64;
        match self {
            Schedule::Steps { warmup, decay } => {
                if step < *warmup {
                    return lr0 * (step + 1) as f64 / (*warmup + 1) as f64;
                }
                let (total, min_lr) = match decay {
                    Decay::Constant => return lr0,
                    Decay::Cosine { total, min_lr } | Decay::Linear { total, min_lr } => {
                        (*total, *min_lr)
                    }
                };
                if step > total {
                    return min_lr;
                }
                let r = (step - warmup) as f64 / (total - warmup) as f64;
                let coefficient = match decay {
                    Decay::Cosine { .. } => 0.5 * (1.0 + (std::f64::consts::PI * r).cos()),
                    _ => 1.0 - r,
                };
                min_lr + coefficient * (lr0 - min_lr)
            }
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
            [0, 1, 2, 3, 4, 9].map(|t| p.rate(9.0, t, 0)),
            [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
        );
        assert!((Schedule::Exponential(0.5).rate(2.0, 2, 0) - 2.0 * (-1.0f64).exp()).abs() < 1e-15);
        assert_eq!(Schedule::InverseTime(0.5).rate(3.0, 4, 0), 1.0);
    }

    /// nanoGPT's `get_lr` with `warmup_iters = 100`, `lr_decay_iters = 2000`, `learning_rate =
    /// 1e-3`, `min_lr = 1e-4`, evaluated by hand.
    #[test]
    fn warmup_and_cosine_follow_nanogpt() {
        let cosine = Schedule::Steps {
            warmup: 100,
            decay: Decay::Cosine {
                total: 2000,
                min_lr: 1e-4,
            },
        };
        let rate = |s| cosine.rate(1e-3, 0, s);
        assert_eq!(rate(0), 1e-3 / 101.0);
        assert_eq!(rate(99), 1e-3 * 100.0 / 101.0);
        assert_eq!(rate(100), 1e-3);
        assert!((rate(1050) - 5.5e-4).abs() < 1e-15);
        assert_eq!(rate(2000), 1e-4);
        assert_eq!(rate(5000), 1e-4);
        let linear = Schedule::Steps {
            warmup: 0,
            decay: Decay::Linear {
                total: 10,
                min_lr: 0.0,
            },
        };
        assert!((linear.rate(1.0, 0, 5) - 0.5).abs() < 1e-15);
    }
}
