//! What the tests share: models for the gradient and compiled-code tests, and running the
//! binary as a user does.
#![allow(dead_code)]

pub mod golden;

/// A fresh, empty directory for one test's files (`name` unique within the test binary; the
/// process id keeps test binaries and concurrent runs apart).
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Every tensor of a saved weights file, by name, in order.
pub fn tensors(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let contents =
        nabla_runtime::checkpoint::load(path, "weights", 1 << 30).expect("saved weights");
    contents
        .tensors
        .into_iter()
        .map(|(name, _, values)| (name, values))
        .collect()
}

/// The largest difference between two runs' tensors: elementwise relative to each tensor's
/// largest magnitude, and as the 2-norm of the difference relative to the tensor's.
pub fn difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f64, f64) {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| {
            let scale = x.iter().fold(1e-12f64, |m, v| m.max(f64::from(v.abs())));
            let diffs = || x.iter().zip(y).map(|(u, v)| f64::from(u - v));
            let largest = diffs().fold(0.0f64, |m, d| m.max(d.abs())) / scale;
            let l2 = norm(&mut diffs()) / norm(&mut x.iter().map(|&v| f64::from(v))).max(1e-12);
            (largest, l2)
        })
        .fold((0.0, 0.0), |(a, b), (c, d)| {
            (f64::max(a, c), f64::max(b, d))
        })
}

/// Runs the `nabla` binary from the repository root.
pub fn nabla(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the nabla binary runs")
}

use nabla_compiler::autodiff;
use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck::{self, Config, ParamResult};
use nabla_compiler::ir::{NodeId, interp};
use nabla_compiler::model::Model;
use nabla_runtime::Rng;
use proptest::prelude::*;

/// The loss and every gradient of `m` at batch `batch`, by `evaluator`'s compiled code and by
/// the interpreter in f64, equal to `tol` relative to each result's largest magnitude; inputs
/// (and, with `random_params`, parameters) drawn from `seed`.
pub fn compiled_matches_interpreter(
    m: &Model,
    batch: usize,
    seed: u64,
    evaluator: JitEvaluator,
    tol: f64,
    random_params: bool,
) -> Result<(), String> {
    let mut m = m.clone();
    m.bind(&|_| Some(batch)).map_err(|e| e.0)?;
    let (graph, loss, grads) = m.gradient_graph().map_err(|e| e.to_string())?;
    let roots: Vec<NodeId> = std::iter::once(loss).chain(grads).collect();
    let feeds = gradcheck::random_feeds(&m, &graph, &mut Rng::seeded(seed), random_params);
    let expected = interp::eval(&graph, &feeds, &roots).map_err(|e| e.to_string())?;
    let actual = evaluator
        .eval(&graph, &feeds, &roots)
        .map_err(|e| e.to_string())?;
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        let scale = e.data.iter().fold(1.0f64, |s, v| s.max(v.abs()));
        for (j, (x, y)) in e.data.iter().zip(&a.data).enumerate() {
            if (x - y).is_nan() || (x - y).abs() > tol * scale {
                return Err(format!(
                    "root {i} element {j}: interpreter {x}, compiled {y}"
                ));
            }
        }
    }
    Ok(())
}

/// Gradcheck of the model `source` by the interpreter with `rules`: two draws at `batch`, 12
/// elements per parameter.
pub fn check(source: &str, batch: usize, seed: u64, rules: autodiff::VjpRule) -> Vec<ParamResult> {
    let config = Config {
        cases: 2,
        seed,
        batch,
        samples: 12,
        ..Config::default()
    };
    gradcheck::check(&model(source), &config, rules, &interp::eval).expect("gradcheck runs")
}

pub fn model(source: &str) -> Model {
    match nabla_dsl::compile(source) {
        Ok(c) => c.model,
        Err(d) => panic!(
            "{}\n{}",
            source,
            nabla_dsl::diagnostic::render(&d, "test.nn", source)
        ),
    }
}

/// A model whose loss applies `body` (in terms of `z`, a `[B, N]` tensor depending on every
/// parameter through broadcasting) and reduces it to a scalar.
pub fn template(n: usize, body: &str) -> String {
    format!(
        "model t {{
  input  x[B, {n}]
  input  u[B, {n}]
  target y[B] : class
  target t[B, {n}]
  param  p[{n}] = normal(0, 1)
  param  q[1, {n}] = normal(0, 1)
  param  m[{n}, {n}] = normal(0, 0.5)
  z      = x * p + q
  loss   = {body}
}}"
    )
}

/// One expression per primitive, activation, reduction and loss.
pub const BODIES: &[&str] = &[
    "sum(exp(z))",
    "sum(log(1 + exp(z)))",
    "sum(sqrt(1 + z * z))",
    "sum(abs(z))",
    "sum(tanh(z) * u)",
    "sum(sigmoid(z) * u)",
    "sum(sin(z) * u + cos(z))",
    "sum(tan(z / 4) * u)",
    "sum(sinh(z) * u + cosh(z))",
    "sum(atan(z) * u + erf(z))",
    "sum(gelu(z) * u + gelu(z, approximate = \"tanh\"))",
    "sum(relu(z) * u)",
    "sum(dropout(z, 0.3) * u)",
    "sum(batch_norm(z) * u)",
    "sum(leaky_relu(z, 0.1) * u)",
    "sum(identity(z) ^ 2)",
    "sum(z ^ 3)",
    "sum(u / (1 + z * z))",
    "sum(-z * u - z)",
    "sum(softmax(z) * u)",
    "sum(softmax(z, axis = 0) * u)",
    "sum(log_softmax(z) * u)",
    "mean(z * u)",
    "sum(mean(z, axis = 0) * sum(u, axis = 0))",
    "sum(max(z, axis = 1)) + sum(min(z, axis = 0))",
    "max(z) - min(z)",
    "sum(max(z, u) + min(z, u))",
    "sum((z @ m) * u)",
    "sum(transpose(z) @ (u @ m))",
    "sum(reshape(m, [-1]) * reshape(transpose(m), [-1]))",
    "sum(reshape(z * u, [B, 1, -1]))",
    "sum(tanh(dense(z, 3)))",
    "mse(z, t)",
    "l1(z, t)",
    "smooth_l1(z, t, beta = 0.5)",
    "bce(sigmoid(z), t)",
    "bce_with_logits(z, t)",
    "cross_entropy(z, y)",
    "cross_entropy(z, softmax(u))",
];

/// The [`BODIES`] that a [`template`] of width `n` can hold: cross-entropy needs two classes or
/// more (over one it is always 0, and refused).
pub fn bodies(n: usize) -> impl Iterator<Item = &'static str> {
    BODIES.iter().copied().filter(move |b| fits(n, b))
}

/// Whether `body` fits a [`template`] of width `n` (see [`bodies`]).
pub fn fits(n: usize, body: &str) -> bool {
    n > 1 || !body.contains("cross_entropy")
}

/// Random scalar formulas over `x` and `y`: smooth ones (finite differences are trustworthy),
/// or, with `kinks`, also `relu`, `abs` and `max`, whose derivatives `nabla diff` prints with
/// `step`.
pub fn formula(kinks: bool) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("x".to_string()),
        Just("y".to_string()),
        (1u8..5).prop_map(|c| c.to_string())
    ];
    leaf.prop_recursive(5, 32, 2, move |inner| {
        let smooth = prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} - {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} / (1 + {b}^2))")),
            inner.clone().prop_map(|a| format!("tanh({a})")),
            inner.clone().prop_map(|a| format!("sigmoid({a})")),
            inner.clone().prop_map(|a| format!("sqrt(1 + {a}^2)")),
            inner.clone().prop_map(|a| format!("sin({a})")),
            inner.clone().prop_map(|a| format!("atan({a})")),
            inner.clone().prop_map(|a| format!("(-{a})")),
        ];
        if !kinks {
            return smooth.boxed();
        }
        prop_oneof![
            4 => smooth,
            1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("max({a}, {b})")),
            1 => inner.clone().prop_map(|a| format!("relu({a})")),
            1 => inner.prop_map(|a| format!("abs({a})")),
        ]
        .boxed()
    })
    .boxed()
}
