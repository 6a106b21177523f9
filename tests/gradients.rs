//! Gradients checked three ways: every built-in (random shapes, broadcasting, random values)
//! against central finite differences in f64; random formulas, with shrinking; and simplified
//! gradient graphs against unsimplified ones. A deliberately wrong rule must be caught.

use std::collections::HashMap;

use nabla_compiler::autodiff::{self, differentiate};
use nabla_compiler::egraph::{self, Limits, RuleSet};
use nabla_compiler::gradcheck::{self, Config};
use nabla_compiler::ir::{Graph, NodeId, Op, ShapeError, Tensor, UnaryOp, interp};
use nabla_runtime::Rng;
use proptest::prelude::*;

mod common;
use common::{bodies, check, formula, model, template};

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Every built-in, at random sizes and values, agrees with finite differences.
    #[test]
    fn builtins_match_finite_differences(n in 1usize..5, batch in 1usize..4, seed in 0u64..1000) {
        for body in bodies(n) {
            for r in check(&template(n, body), batch, seed, autodiff::vjp) {
                prop_assert!(r.passed, "{body} (n = {n}, batch = {batch}, seed = {seed}): {r:?}");
            }
        }
    }
}

/// `d tanh(x) = 1 - tanh(x)` instead of `1 - tanh(x)^2`: a plausible slip.
fn wrong_tanh_rule(
    graph: &mut Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, ShapeError> {
    if *graph.op(node) == Op::Unary(UnaryOp::Tanh) {
        let one = graph.constant(1.0);
        let d = graph.sub(one, node)?;
        return Ok(vec![Some(graph.mul(g, d)?)]);
    }
    autodiff::vjp(graph, node, g, wants)
}

#[test]
fn gradcheck_catches_a_wrong_rule() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/xor.nn"))
        .expect("example");
    let right = check(&source, 4, 0, autodiff::vjp);
    assert!(right.iter().all(|r| r.passed), "{right:?}");
    let wrong = check(&source, 4, 0, wrong_tanh_rule);
    let failed: Vec<&str> = wrong
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect();
    // Only the parameters below the tanh layer see its derivative; the check along a random
    // direction through all of them sees it too.
    assert_eq!(failed, ["h.w", "h.b", gradcheck::ALL_PARAMS], "{wrong:?}");
}

/// Every gradient through `select` (relu's form) scaled by 0.9: wrong everywhere, not only at
/// the kinks.
fn wrong_select_rule(
    graph: &mut Graph,
    node: NodeId,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, ShapeError> {
    let mut grads = autodiff::vjp(graph, node, g, wants)?;
    if *graph.op(node) == Op::Select {
        for grad in grads.iter_mut().flatten() {
            *grad = graph.scale(*grad, 0.9)?;
        }
    }
    Ok(grads)
}

/// The kink test (one-sided differences that disagree as a crossed kink's do) never excuses a
/// wrong rule: through relu and max pooling, where nudges do cross kinks, a rule wrong by 10%
/// still fails every parameter below it, and none of its failures is skipped as a kink.
#[test]
fn kinks_do_not_hide_a_wrong_rule() {
    let source = "model cnn {
  input  x[B, 1, 6, 6]
  target y[B] : class
  c      = max_pool2d(relu(conv2d(x, 3, 3, padding = 1)), 2)
  h      = relu(dense(flatten(c), 8))
  loss   = cross_entropy(dense(h, 3), y)
}
";
    for seed in 0..4 {
        let right = check(source, 3, seed, autodiff::vjp);
        assert!(right.iter().all(|r| r.passed), "seed {seed}: {right:?}");
        let wrong = check(source, 3, seed, wrong_select_rule);
        let failed: Vec<&str> = wrong
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            failed,
            ["c.w", "c.b", "h.w", "h.b", gradcheck::ALL_PARAMS],
            "seed {seed}: {wrong:?}"
        );
        assert!(wrong.iter().all(|r| r.skipped == 0), "{wrong:?}");
    }
}

/// A chain of `layers` tanh layers of width 2: two parameter tensors per layer.
fn deep_model(layers: usize) -> String {
    let mut source = "model deep {\n  input x[B, 2]\n  target y[B, 2]\n  h0 = x\n".to_string();
    for i in 1..=layers {
        source += &format!("  h{i} = tanh(dense(h{}, 2))\n", i - 1);
    }
    source + &format!("  loss = mse(h{layers}, y)\n}}\n")
}

/// Finite differences evaluate the whole loss per nudge, so checking every tensor of a deep
/// model is quadratic; the per-draw budget keeps the number of evaluations constant, and the
/// directional check still sees a wrong rule in a tensor the draw did not sample.
#[test]
fn gradcheck_evaluations_are_bounded_and_still_catch_a_wrong_rule() {
    let evaluations = std::cell::Cell::new(0usize);
    let counting = |g: &Graph, f: &HashMap<String, Tensor<f64>>, o: &[NodeId]| {
        evaluations.set(evaluations.get() + 1);
        interp::eval(g, f, o)
    };
    let config = Config {
        cases: 1,
        max_elements: 16,
        ..Config::default()
    };
    for layers in [4, 40] {
        evaluations.set(0);
        let results = gradcheck::check(
            &model(&deep_model(layers)),
            &config,
            autodiff::vjp,
            &counting,
        )
        .expect("gradcheck runs");
        assert!(results.iter().all(|r| r.passed), "{results:?}");
        // One evaluation of the gradients and one of the loss alone, two per nudged element,
        // two for the direction.
        assert!(
            evaluations.get() <= 2 + 2 * 16 + 2,
            "{layers} layers: {}",
            evaluations.get()
        );
        if layers == 40 {
            assert!(
                results.iter().any(|r| r.cases == 0),
                "a deep model is sampled"
            );
            let wrong = gradcheck::check(
                &model(&deep_model(layers)),
                &config,
                wrong_tanh_rule,
                &counting,
            )
            .expect("gradcheck runs");
            let all = wrong.last().expect("the directional result");
            assert!(all.name == gradcheck::ALL_PARAMS && !all.passed, "{all:?}");
        }
    }
}

/// Simplifying a deep model's gradient graph is linear in its depth: extraction once took
/// seconds for 800 layers (every root extracted separately, costs relaxed in hash order) and
/// minutes for 3,000, while saturation took milliseconds. The bound is generous; the
/// quadratic version exceeded it many times over.
#[test]
fn simplifying_a_deep_model_scales_linearly() {
    let m = model(&deep_model(3000));
    let (graph, loss, grads) = m.gradient_graph().expect("differentiable");
    let roots: Vec<NodeId> = std::iter::once(loss).chain(grads).collect();
    let started = std::time::Instant::now();
    let s =
        egraph::simplify(&graph, &roots, &Limits::default(), RuleSet::Ieee).expect("simplifies");
    assert!(
        s.graph.ancestors(&s.roots).len() <= s.nodes_before,
        "{}",
        s.report
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "{:?}: {}",
        started.elapsed(),
        s.report
    );
}

/// NaN and infinities fail and are reported, not dropped by `max`; a 100% error in a tiny
/// gradient fails; a parameter on a kink is reported as not checked; literal parameter values
/// are kept unless asked otherwise.
#[test]
fn gradcheck_reports_non_finite_values_and_scales_its_tolerance() {
    let run_with = |body: &str, random_params: bool, rules: autodiff::VjpRule| {
        let source = format!(
            "model m {{\n  input x[B, 2]\n  param w[2, 1] = [[0], [1]]\n  loss = {body}\n}}\n"
        );
        let config = Config {
            random_params,
            ..Config::default()
        };
        gradcheck::check(&model(&source), &config, rules, &interp::eval).expect("gradcheck runs")
    };
    let run = |body: &str, random_params: bool| run_with(body, random_params, autodiff::vjp);
    let sqrt = run("sum(sqrt(w))", false);
    assert!(!sqrt[0].passed && sqrt[0].max_abs_err.is_nan(), "{sqrt:?}");
    let worst = sqrt[0].worst.as_ref().expect("the failing element");
    assert_eq!((worst.element, worst.analytic), (0, f64::INFINITY));
    // A wrong tanh rule scaled by 1e-7: a large error in a tiny gradient still fails.
    let tiny = run_with("1e-7 * sum(tanh(x @ w + 1))", false, wrong_tanh_rule);
    assert!(!tiny[0].passed, "{tiny:?}");
    // relu'(0) = 0 against a numeric 0.5: the nudge crosses the kink at every step, so `w`'s
    // first element is reported as not checked rather than failed or passed.
    let kink = run("sum(relu(w))", false);
    assert!(kink[0].passed && kink[0].skipped == 3, "{kink:?}");
    assert_eq!(kink[0].checked, 3, "{kink:?}");
    // Redrawn away from the kink, every element is checked.
    let away = run("sum(relu(w))", true);
    assert!(away.iter().all(|r| r.passed && r.skipped == 0), "{away:?}");
    // Round-off of a huge loss is not mistaken for a wrong gradient.
    let big = run("1e10 + sum(x @ w)", false);
    assert!(big.iter().all(|r| r.passed && r.round_off > 1.0), "{big:?}");
}

/// `gelu`'s rule and its derivative's rule (reached by differentiating twice, as `nabla diff`
/// of a gradient would) against central differences of the function and of its derivative.
#[test]
fn gelu_derivatives_of_first_and_second_order_match_finite_differences() {
    let nabla_dsl::Formula {
        mut graph,
        root,
        variables,
    } = nabla_dsl::formula("gelu(x) + 0 * y").expect("the formula parses");
    let x = variables.iter().find(|(v, _)| v == "x").expect("used").1;
    let first = differentiate(&mut graph, root, &[x]).expect("differentiates")[0];
    let second = differentiate(&mut graph, first, &[x]).expect("differentiates again")[0];
    let eps = 1e-5;
    for at in [-4.2, -1.3, -0.4, 0.0, 0.25, 1.0, 2.7, 5.5] {
        let value = |node: NodeId, x: f64| eval_at(&graph, &[node], x, 0.0)[0];
        for (function, derivative) in [(root, first), (first, second)] {
            let numeric = (value(function, at + eps) - value(function, at - eps)) / (2.0 * eps);
            let analytic = value(derivative, at);
            assert!(
                (analytic - numeric).abs() <= 1e-7,
                "at {at}: {analytic} against {numeric}"
            );
        }
    }
}

fn eval_at(graph: &Graph, roots: &[NodeId], x: f64, y: f64) -> Vec<f64> {
    let feeds: HashMap<String, Tensor<f64>> = [
        ("x".to_string(), Tensor::scalar(x)),
        ("y".to_string(), Tensor::scalar(y)),
    ]
    .into();
    interp::eval(graph, &feeds, roots)
        .expect("evaluates")
        .into_iter()
        .map(|t| t.data[0])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Symbolic derivatives of random formulas, simplified or not, agree with finite differences.
    #[test]
    fn random_formulas_differentiate_correctly(f in formula(false), x in -2.0f64..2.0, y in -2.0f64..2.0) {
        let source = format!("{f} + 0*x + 0*y");
        let nabla_dsl::Formula { mut graph, root, variables: vars } = nabla_dsl::formula(&source).expect("the formula parses");
        let wrt: Vec<NodeId> = ["x", "y"].iter().map(|n| vars.iter().find(|(v, _)| v == n).expect("used").1).collect();
        let grads = differentiate(&mut graph, root, &wrt).expect("differentiates");
        let simplified = egraph::simplify(&graph, &grads, &Limits::default(), RuleSet::Ieee).expect("simplifies");
        let analytic = eval_at(&graph, &grads, x, y);
        let simple = eval_at(&simplified.graph, &simplified.roots, x, y);
        let eps = 1e-6;
        let loss = |x: f64, y: f64| eval_at(&graph, &[root], x, y)[0];
        let numeric = [(loss(x + eps, y) - loss(x - eps, y)) / (2.0 * eps), (loss(x, y + eps) - loss(x, y - eps)) / (2.0 * eps)];
        for i in 0..2 {
            prop_assert!((analytic[i] - numeric[i]).abs() <= 1e-5 + 1e-4 * numeric[i].abs(), "{f}: d{i} {} vs {}", analytic[i], numeric[i]);
            prop_assert!((analytic[i] - simple[i]).abs() <= 1e-9 * (1.0 + analytic[i].abs()), "{f}: simplified {} vs {}", simple[i], analytic[i]);
        }
    }
}

/// For every example, the simplified gradient graph computes what the raw one does.
#[test]
fn simplification_preserves_gradients_of_examples() {
    for name in ["backprop", "xor", "linear_regression", "mnist_mlp"] {
        let source =
            std::fs::read_to_string(format!("{}/examples/{name}.nn", env!("CARGO_MANIFEST_DIR")))
                .expect("example");
        let mut m = model(&source);
        m.bind(&|_| Some(2)).expect("binds");
        let (graph, loss, grads) = m.gradient_graph().expect("differentiates");
        let roots: Vec<NodeId> = std::iter::once(loss).chain(grads).collect();
        let simplified = egraph::simplify(&graph, &roots, &Limits::default(), RuleSet::Ieee)
            .expect("simplifies");
        nabla_compiler::ir::verify::verify(&simplified.graph).expect("a well-formed graph");
        let feeds = gradcheck::random_feeds(&m, &graph, &mut Rng::seeded(3), false);
        let before = interp::eval(&graph, &feeds, &roots).expect("evaluates");
        let after = interp::eval(&simplified.graph, &feeds, &simplified.roots).expect("evaluates");
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b.shape, a.shape, "{name}");
            for (x, y) in b.data.iter().zip(&a.data) {
                assert!(
                    (x - y).abs() <= 1e-12 * (1.0 + x.abs()),
                    "{name}: {x} vs {y}"
                );
            }
        }
        assert!(
            simplified.graph.ancestors(&simplified.roots).len() <= graph.ancestors(&roots).len(),
            "{name} grew"
        );
        assert!(
            egraph::cost(&simplified.graph, &simplified.roots) <= egraph::cost(&graph, &roots),
            "{name} costs more after simplification"
        );
    }
}
