//! Generated 2-D toy sets like TensorFlow Playground's (circles, XOR, spirals, ...), drawn from
//! the seed.

use super::{Column, Dataset};
use crate::Rng;

/// TensorFlow Playground's 2-D classification sets, labels 0/1, seeded.
pub(super) fn toy(
    kind: &str,
    n: usize,
    noise: f64,
    input: &str,
    target: &str,
    seed: u64,
) -> Dataset {
    let mut rng = Rng::seeded(seed ^ 0x746f79);
    let mut points = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    let mut push = |x: f64, y: f64, label: bool| {
        points.extend([x as f32, y as f32]);
        labels.push(if label { 1.0 } else { 0.0 });
    };
    for i in 0..n {
        match kind {
            "circle" => {
                let label = i % 2 == 0;
                let r = if label {
                    rng.uniform(0.0, 2.5)
                } else {
                    rng.uniform(3.5, 5.0)
                };
                let a = rng.uniform(0.0, std::f64::consts::TAU);
                let (x, y) = (r * a.cos(), r * a.sin());
                push(
                    x + rng.uniform(-5.0, 5.0) * noise,
                    y + rng.uniform(-5.0, 5.0) * noise,
                    label,
                );
            }
            "gauss" => {
                let label = i % 2 == 0;
                let c = if label { 2.0 } else { -2.0 };
                let spread = 0.5 + 3.5 * noise;
                push(rng.normal(c, spread), rng.normal(c, spread), label);
            }
            "spiral" => {
                let label = i % 2 == 0;
                let t = (i / 2) as f64 / (n / 2).max(1) as f64 * 5.0;
                let a = 1.75 * t * std::f64::consts::TAU / 5.0
                    + if label { 0.0 } else { std::f64::consts::PI };
                push(
                    t * a.sin() + rng.uniform(-1.0, 1.0) * noise,
                    t * a.cos() + rng.uniform(-1.0, 1.0) * noise,
                    label,
                );
            }
            _ => {
                let pad = 0.3;
                let mut c = || {
                    let v = rng.uniform(-5.0, 5.0);
                    if v > 0.0 { v + pad } else { v - pad }
                };
                let (x, y) = (c(), c());
                let label = x * y >= 0.0;
                push(
                    x + rng.uniform(-5.0, 5.0) * noise,
                    y + rng.uniform(-5.0, 5.0) * noise,
                    label,
                );
            }
        }
    }
    Dataset {
        columns: vec![
            Column {
                name: input.to_string(),
                row_len: 2,
                values: points,
                source: None,
            },
            Column {
                name: target.to_string(),
                row_len: 1,
                values: labels,
                source: None,
            },
        ],
        rows: n,
        origin: format!("{kind}({n})"),
        vocabulary: None,
    }
}
