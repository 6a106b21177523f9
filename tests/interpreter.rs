//! The interpreter's results for activations and losses against closed forms computed by hand.

use std::collections::HashMap;

use nabla_compiler::ir::{Tensor, interp};

/// Evaluates the binding `name` of a one-model source with the given feeds.
fn eval(source: &str, name: &str, feeds: &[(&str, Vec<usize>, Vec<f64>)]) -> Vec<f64> {
    let mut model = nabla_dsl::compile(source).expect("compiles").model;
    model.bind(&|_| Some(feeds[0].1[0])).expect("binds");
    let node = model
        .bindings
        .iter()
        .find(|b| b.name == name)
        .expect("binding")
        .node;
    let feeds: HashMap<String, Tensor<f64>> = feeds
        .iter()
        .map(|(n, s, d)| (n.to_string(), Tensor::new(s.clone(), d.clone())))
        .collect();
    interp::eval(&model.graph, &feeds, &[node])
        .expect("evaluates")
        .remove(0)
        .data
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-12 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

const LOGITS: [f64; 6] = [1.0, 2.0, 3.0, -1.0, 0.0, 1000.0];

#[test]
fn softmax_and_cross_entropy_are_stable_and_exact() {
    let src = "model m {\n input z[B, 3]\n target y[B] : class\n s = softmax(z)\n l = log_softmax(z)\n loss = cross_entropy(z, y)\n}";
    let feeds = [
        ("z", vec![2, 3], LOGITS.to_vec()),
        ("y", vec![2], vec![2.0, 0.0]),
    ];
    let row0: Vec<f64> = LOGITS[..3].iter().map(|v| v.exp()).collect();
    let total: f64 = row0.iter().sum();
    let mut expected: Vec<f64> = row0.iter().map(|v| v / total).collect();
    expected.extend([0.0, 0.0, 1.0]);
    close(&eval(src, "s", &feeds), &expected);
    let log = eval(src, "l", &feeds);
    assert!(log.iter().all(|v| v.is_finite()), "{log:?}");
    let ce = eval(src, "loss", &feeds)[0];
    let expected_ce = (-(expected[2].ln()) + 1001.0) / 2.0;
    assert!((ce - expected_ce).abs() < 1e-9, "{ce} vs {expected_ce}");
}

#[test]
fn regression_losses_match_their_definitions() {
    let src = "model m {\n input p[B, 2]\n target t[B, 2]\n a = mse(p, t)\n b = l1(p, t)\n c = smooth_l1(p, t)\n loss = a\n}";
    let (p, t) = (vec![0.0, 1.0, 3.0, -2.0], vec![0.5, 1.0, 0.0, 0.0]);
    let feeds = [("p", vec![2, 2], p.clone()), ("t", vec![2, 2], t.clone())];
    let d: Vec<f64> = p.iter().zip(&t).map(|(a, b)| a - b).collect();
    close(
        &eval(src, "a", &feeds),
        &[d.iter().map(|v| v * v).sum::<f64>() / 4.0],
    );
    close(
        &eval(src, "b", &feeds),
        &[d.iter().map(|v| v.abs()).sum::<f64>() / 4.0],
    );
    let huber: f64 = d
        .iter()
        .map(|v| {
            if v.abs() < 1.0 {
                0.5 * v * v
            } else {
                v.abs() - 0.5
            }
        })
        .sum();
    close(&eval(src, "c", &feeds), &[huber / 4.0]);
}

#[test]
fn binary_cross_entropy_forms_agree() {
    let src = "model m {\n input z[B, 1]\n target t[B, 1]\n a = bce(sigmoid(z), t)\n b = bce_with_logits(z, t)\n loss = a\n}";
    let feeds = [
        ("z", vec![3, 1], vec![-2.0, 0.5, 3.0]),
        ("t", vec![3, 1], vec![0.0, 1.0, 0.25]),
    ];
    let expected: f64 = [(-2.0f64, 0.0f64), (0.5, 1.0), (3.0, 0.25)]
        .iter()
        .map(|&(z, t)| {
            let s = 1.0 / (1.0 + (-z).exp());
            -(t * s.ln() + (1.0 - t) * (1.0 - s).ln())
        })
        .sum::<f64>()
        / 3.0;
    close(&eval(src, "a", &feeds), &[expected]);
    close(&eval(src, "b", &feeds), &[expected]);
    // Far out, the logit form stays finite where the probability form has clamped its log.
    let far = [
        ("z", vec![1, 1], vec![-800.0]),
        ("t", vec![1, 1], vec![1.0]),
    ];
    close(&eval(src, "b", &far), &[800.0]);
    close(&eval(src, "a", &far), &[100.0]);
}
