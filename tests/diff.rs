//! `nabla diff` prints derivatives as a person writes them, and every printed formula parses
//! back in the model language and evaluates to the derivative autodiff computes.

use std::collections::HashMap;
use std::process::Command;

use nabla_compiler::algebra;
use nabla_compiler::autodiff::differentiate;
use nabla_compiler::ir::{Tensor, interp};
use nabla_runtime::Rng;
use proptest::prelude::*;

mod common;
use common::formula;

/// What `nabla diff EXPR --wrt VARS` prints, one formula per variable.
fn diff(expr: &str, wrt: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["diff", expr, "--wrt", wrt])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.split_once(" = ").expect("d/dx = formula").1.to_string())
        .collect()
}

#[test]
fn derivatives_read_as_a_person_writes_them() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("x*x*x*x", "x", &["4*x^3"]),
        ("(x+1)^2 - x^2", "x", &["2"]),
        ("sigmoid(x)", "x", &["sigmoid(x)*(1 - sigmoid(x))"]),
        ("tanh(x)", "x", &["1 - tanh(x)^2"]),
        ("exp(2*x)", "x", &["2*exp(2*x)"]),
        ("sqrt(x^2 + y^2)", "x", &["x/sqrt(x^2 + y^2)"]),
        (
            "x^2 + 3*x*y + y^2 + z^3",
            "x,y,z",
            &["2*x + 3*y", "3*x + 2*y", "3*z^2"],
        ),
        ("relu(x)", "x", &["step(x)"]),
        ("2e300*x + 1e-20*x*x", "x", &["2e-20*x + 2e300"]),
        ("log(x)", "x", &["1/x"]),
        ("sin(x)*cos(x)", "x", &["cos(x)^2 - sin(x)^2"]),
    ];
    for (expr, wrt, expected) in cases {
        assert_eq!(diff(expr, wrt), *expected, "d/d{wrt} {expr}");
    }
}

/// The canonical form of each derivative of `source`, parsed back and evaluated, equals the
/// derivative autodiff computes, at `point`.
fn parses_back_to_the_same_value(source: &str, point: [f64; 2]) -> Result<(), String> {
    let f = nabla_dsl::formula(source).map_err(|d| d.message)?;
    let mut graph = f.graph.clone();
    let wrt: Vec<_> = f.variables.iter().map(|(_, id)| *id).collect();
    let grads = differentiate(&mut graph, f.root, &wrt).map_err(|e| e.to_string())?;
    let feeds = |vars: &[(String, _)]| -> HashMap<String, Tensor<f64>> {
        vars.iter()
            .map(|(n, _): &(String, _)| {
                let v = if n == "x" { point[0] } else { point[1] };
                (n.clone(), Tensor::scalar(v))
            })
            .collect()
    };
    let values = interp::eval(&graph, &feeds(&f.variables), &grads).map_err(|e| e.to_string())?;
    for (g, value) in grads.iter().zip(values) {
        let text = algebra::canonical(&graph, *g).to_string();
        let back = nabla_dsl::formula(&format!("{text} + 0*x + 0*y"))
            .map_err(|d| format!("`{text}` does not parse: {}", d.message))?;
        let again = interp::eval(&back.graph, &feeds(&back.variables), &[back.root])
            .map_err(|e| e.to_string())?;
        let (a, b) = (value.data[0], again[0].data[0]);
        if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1.0) {
            return Err(format!("{source}: autodiff {a}, `{text}` gives {b}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn printed_derivatives_parse_back_to_the_same_value(source in formula(true), seed in 0u64..1000) {
        let mut rng = Rng::seeded(seed);
        let point = [rng.normal(0.0, 2.0), rng.normal(0.0, 2.0)];
        parses_back_to_the_same_value(&source, point).map_err(TestCaseError::fail)?;
    }
}
