//! NaN goes through every built-in to the loss, as in PyTorch, so that the divergence guard
//! sees it: one NaN in the input makes the loss NaN, in the interpreter and in compiled code.
//! (`relu` once turned NaN into 0, and the interpreter's `max` dropped it.)

mod common;

use std::collections::HashMap;

use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck;
use nabla_compiler::ir::{Tensor, interp};
use nabla_runtime::{Elem, Rng};

use common::{BODIES, model, template};

/// The loss of `source` at batch 2 with the first element of input `x` set to NaN, by the
/// interpreter (f64) and by compiled code (f32).
fn losses_with_a_nan(source: &str) -> (f64, f64) {
    let mut m = model(source);
    m.bind(&|_| Some(2)).expect("binds");
    let (graph, loss, _) = m.gradient_graph().expect("differentiates");
    let mut feeds: HashMap<String, Tensor<f64>> =
        gradcheck::random_feeds(&m, &graph, &mut Rng::seeded(3), true);
    feeds.get_mut("x").expect("an input x").data[0] = f64::NAN;
    let reference = interp::eval(&graph, &feeds, &[loss]).expect("interprets")[0].data[0];
    let compiled = JitEvaluator::new(Elem::F32)
        .eval(&graph, &feeds, &[loss])
        .expect("compiles")[0]
        .data[0];
    (reference, compiled)
}

/// Layers over images and sequences, beside the elementwise bodies of [`BODIES`].
const LAYERS: &[&str] = &[
    "model c {
  input x[B, 1, 4, 4]
  target t[B, 2, 3, 3]
  loss = mse(conv2d(x, 2, 2), t)
}",
    "model p {
  input x[B, 2, 4, 4]
  loss = sum(max_pool2d(x, 2)) + sum(avg_pool2d(x, 2)) * 0
}",
    "model a {
  input x[B, 2, 4, 4]
  loss = sum(max_pool2d(x, 2, stride = 1))
}",
    "model g {
  input x[B, 2, 4, 4]
  loss = sum(global_avg_pool(x))
}",
    "model f {
  input x[B, 2, 2, 2]
  loss = sum(dense(flatten(batch_norm(x)), 3))
}",
    "model r {
  input x[B, 5, 3]
  loss = sum(last(rnn(x, 4)))
}",
    "model l {
  input x[B, 5, 3]
  loss = sum(last(lstm(x, 4)))
}",
    "model u {
  input x[B, 5, 3]
  loss = sum(last(gru(x, 4)))
}",
];

#[test]
fn a_nan_input_reaches_the_loss_through_every_built_in() {
    let sources = BODIES
        .iter()
        .filter(|body| body.contains('z'))
        .map(|body| template(4, body))
        .chain(LAYERS.iter().map(|s| s.to_string()));
    let mut hidden = Vec::new();
    for source in sources {
        let (reference, compiled) = losses_with_a_nan(&source);
        if !(reference.is_nan() && compiled.is_nan()) {
            hidden.push(format!(
                "interpreter {reference}, compiled {compiled}:\n{source}"
            ));
        }
    }
    assert!(
        hidden.is_empty(),
        "NaN disappeared:\n{}",
        hidden.join("\n\n")
    );
}

#[test]
fn relus_zeros_are_positive_zeros() {
    let source = "model r {
  input x[B, 3]
  loss = sum(relu(x) * 0) + sum(1 / relu(x))
}";
    let mut m = model(source);
    m.bind(&|_| Some(1)).expect("binds");
    let (graph, loss, _) = m.gradient_graph().expect("differentiates");
    let feeds = HashMap::from([(
        "x".to_string(),
        Tensor::new(vec![1, 3], vec![-2.0, 1.0, -0.0]),
    )]);
    // relu(-2) and relu(-0) are +0 as in PyTorch, so 1 / relu is +inf, never -inf.
    let reference = interp::eval(&graph, &feeds, &[loss]).unwrap()[0].data[0];
    let compiled = JitEvaluator::new(Elem::F32)
        .eval(&graph, &feeds, &[loss])
        .unwrap()[0]
        .data[0];
    assert_eq!(reference, f64::INFINITY);
    assert_eq!(compiled, f64::INFINITY);
}
