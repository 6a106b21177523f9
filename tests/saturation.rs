//! Every clamped, guarded or saturating built-in at saturating inputs: the f32 gradients that
//! training computes (compiled code) must be finite and equal PyTorch's, computed here from
//! PyTorch's documented backward formulas. The pattern this guards against is `0 * inf`: a
//! gradient that is zero in exact arithmetic but NaN in floats once a value rounds to 0 or 1
//! (issue 6: `bce` on a saturated sigmoid turned the weights NaN where PyTorch stays finite).

use std::collections::HashMap;

use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::ir::Tensor;
use nabla_runtime::Elem;

mod common;
use common::model;

/// The gradient of the model's loss with respect to its first parameter, in f32 through
/// compiled code. Literal parameters keep their values; `t` and `y` are fed as given.
fn gradient(source: &str, feeds: &[(&str, Vec<usize>, Vec<f64>)]) -> Vec<f64> {
    let m = model(source);
    let (graph, _, grads) = m.gradient_graph().expect("differentiable");
    let mut inputs: HashMap<String, Tensor<f64>> = feeds
        .iter()
        .map(|(n, s, v)| (n.to_string(), Tensor::new(s.clone(), v.clone())))
        .collect();
    for p in &m.params {
        let values = match &p.init {
            nabla_runtime::Init::Values(v) => v.clone(),
            other => panic!("parameters here are literal, got {other}"),
        };
        let shape = m.graph.shape(p.node).concrete().expect("known");
        inputs.insert(p.name.clone(), Tensor::new(shape, values));
    }
    JitEvaluator::new(Elem::F32)
        .eval(&graph, &inputs, &grads[..1])
        .expect("runs")
        .remove(0)
        .data
}

fn sigmoid32(z: f64) -> f64 {
    let z = z as f32;
    (1.0 / (1.0 + (-z).exp())) as f64
}

fn assert_close(what: &str, got: &[f64], expected: &[f64]) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            g.is_finite(),
            "{what}[{i}]: {g} is not finite (expected {e})"
        );
        let tolerance = 1e-5 * e.abs().max(1e-30);
        assert!(
            (g - e).abs() <= tolerance,
            "{what}[{i}]: got {g}, expected {e}"
        );
    }
}

fn row(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
    format!("[[{}]]", items.join(", "))
}

const LOGITS: [f64; 8] = [40.0, -40.0, 200.0, -200.0, 10.0, -10.0, 17.0, 0.0];
const TARGETS: [f64; 8] = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];

/// PyTorch: `grad_p = (p - t) / max(p (1 - p), 1e-12) / N`, then sigmoid's `p (1 - p)`.
#[test]
fn bce_of_a_saturated_sigmoid() {
    let n = LOGITS.len();
    let source = format!(
        "model m {{\n  target t[1, {n}]\n  param z[1, {n}] = {}\n  loss = bce(sigmoid(z), t)\n}}\n",
        row(&LOGITS)
    );
    let got = gradient(&source, &[("t", vec![1, n], TARGETS.to_vec())]);
    let expected: Vec<f64> = LOGITS
        .iter()
        .zip(TARGETS)
        .map(|(&z, t)| {
            let p = sigmoid32(z);
            let variance = p * (1.0 - p);
            (p - t) / variance.max(1e-12) * variance / n as f64
        })
        .collect();
    assert_close("bce", &got, &expected);
}

/// PyTorch: `(sigmoid(z) - t) / N`.
#[test]
fn bce_with_logits_at_huge_logits() {
    let logits = [1000.0, -1000.0, 88.0, -88.0, 40.0, -40.0, 0.0, 3.0];
    let n = logits.len();
    let source = format!(
        "model m {{\n  target t[1, {n}]\n  param z[1, {n}] = {}\n  loss = bce_with_logits(z, t)\n}}\n",
        row(&logits)
    );
    let got = gradient(&source, &[("t", vec![1, n], TARGETS.to_vec())]);
    let expected: Vec<f64> = logits
        .iter()
        .zip(TARGETS)
        .map(|(&z, t)| (sigmoid32(z) - t) / n as f64)
        .collect();
    assert_close("bce_with_logits", &got, &expected);
}

/// PyTorch: `(softmax(z) - onehot(y)) / B`, softmax of logits far apart.
#[test]
fn cross_entropy_and_log_softmax_at_far_apart_logits() {
    let logits = [1000.0, -1000.0, 0.0, 500.0];
    let source = format!(
        "model m {{\n  target y[1] : class\n  param z[1, 4] = {}\n  loss = cross_entropy(z, y)\n}}\n",
        row(&logits)
    );
    let got = gradient(&source, &[("y", vec![1], vec![1.0])]);
    assert_close("cross_entropy", &got, &[1.0, -1.0, 0.0, 0.0]);
    // sum(log_softmax(z) * u) has gradient u - softmax(z) * sum(u).
    let source = format!(
        "model m {{\n  target u[1, 4]\n  param z[1, 4] = {}\n  loss = sum(log_softmax(z) * u)\n}}\n",
        row(&logits)
    );
    let got = gradient(&source, &[("u", vec![1, 4], vec![1.0, 2.0, 3.0, 4.0])]);
    assert_close("log_softmax", &got, &[1.0 - 10.0, 2.0, 3.0, 4.0]);
}

/// Saturated activations pass a zero gradient, not NaN: `tanh' = 1 - tanh^2`,
/// `sigmoid' = s (1 - s)`, `relu'(x < 0) = 0`, `leaky_relu'(x < 0) = a`, softmax's Jacobian.
#[test]
fn saturated_activations() {
    let z = [100.0, -100.0, 1e30, -1e30];
    let cases: [(&str, [f64; 4]); 5] = [
        ("tanh(z)", [0.0, 0.0, 0.0, 0.0]),
        ("sigmoid(z)", [0.0, 0.0, 0.0, 0.0]),
        ("relu(z)", [1.0, 0.0, 1.0, 0.0]),
        ("leaky_relu(z, 0.1)", [1.0, 0.1, 1.0, 0.1]),
        ("softmax(z)", [0.0, 0.0, 0.0, 0.0]),
    ];
    for (body, expected) in cases {
        let source = format!(
            "model m {{\n  input x[1, 1]\n  param z[1, 4] = {}\n  loss = sum({body})\n}}\n",
            row(&z)
        );
        assert_close(
            body,
            &gradient(&source, &[("x", vec![1, 1], vec![0.0])]),
            &expected,
        );
    }
}

/// Losses with a kink or a clamp: PyTorch's `l1' = sign(d) / N`, `smooth_l1' = clamp(d /
/// beta, -1, 1) / N`, and `max`/`min` with a far larger operand.
#[test]
fn losses_with_kinks_at_huge_differences() {
    let z = [1e30, -1e30, 0.25, -0.25];
    let n = z.len() as f64;
    let t = vec![0.0; 4];
    let cases: [(&str, [f64; 4]); 3] = [
        ("l1(z, t)", [1.0 / n, -1.0 / n, 1.0 / n, -1.0 / n]),
        (
            "smooth_l1(z, t, beta = 0.5)",
            [1.0 / n, -1.0 / n, 0.5 / n, -0.5 / n],
        ),
        ("sum(max(z, t) + min(z, t))", [1.0, 1.0, 1.0, 1.0]),
    ];
    for (body, expected) in cases {
        let source = format!(
            "model m {{\n  target t[1, 4]\n  param z[1, 4] = {}\n  loss = {body}\n}}\n",
            row(&z)
        );
        assert_close(
            body,
            &gradient(&source, &[("t", vec![1, 4], t.clone())]),
            &expected,
        );
    }
}
