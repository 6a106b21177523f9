//! Every simplification rule, "start => goal" (as egg's own tests are written), and its
//! numerical contract: both sides agree on random values (exact and rounding rules), exact
//! rules agree bit for bit on NaN, infinities and signed zeros too, and finite-only rules run
//! under `--fast-math` alone, so that compiled code gives the interpreter's verdicts.

use std::collections::HashMap;

use nabla_compiler::autodiff;
use nabla_compiler::egraph::{self, Limits, RuleSet, rules};
use nabla_compiler::evaluator::JitEvaluator;
use nabla_compiler::gradcheck::{self, Config};
use nabla_compiler::ir::{Tensor, formula, interp};
use nabla_runtime::{Elem, Rng};

mod common;

#[derive(Clone, Copy, PartialEq)]
enum Contract {
    Exact,
    Rounding,
    FiniteOnly,
}

/// `(rule, contract, start, goal)`: simplifying `start` with the rule's set gives `goal`, and
/// the rule is among those that fired.
const CASES: &[(&str, Contract, &str, &str)] = &[
    ("add-zero", Contract::Exact, "x + 0", "x"),
    ("zero-add", Contract::Exact, "0 + x", "x"),
    ("sub-zero", Contract::Exact, "x - 0", "x"),
    ("zero-sub", Contract::Exact, "0 - x", "-x"),
    ("mul-one", Contract::Exact, "x * 1", "x"),
    ("one-mul", Contract::Exact, "1 * x", "x"),
    ("div-one", Contract::Exact, "x / 1", "x"),
    ("pow-one", Contract::Exact, "x ^ 1", "x"),
    ("mul-minus-one", Contract::Exact, "x * (0 - 1)", "-x"),
    ("minus-one-mul", Contract::Exact, "(0 - 1) * x", "-x"),
    ("neg-neg", Contract::Exact, "-(-x)", "x"),
    ("add-neg", Contract::Exact, "x + -y", "x - y"),
    ("neg-add", Contract::Exact, "-y + x", "x - y"),
    ("sub-neg", Contract::Exact, "x - -y", "x + y"),
    ("neg-sub", Contract::Exact, "-(x - y)", "y - x"),
    ("neg-mul-neg", Contract::Exact, "(-x) * (-y)", "x*y"),
    ("neg-mul", Contract::Exact, "(-x) * y", "-(x*y)"),
    ("mul-neg", Contract::Exact, "x * (-y)", "-(x*y)"),
    ("neg-div", Contract::Exact, "(-x) / y", "-(x/y)"),
    ("stop-gradient", Contract::Exact, "stop_gradient(x)", "x"),
    ("one-div", Contract::Exact, "1 / x", "1/x"),
    (
        "mul-const-const-x",
        Contract::Rounding,
        "2 * (3 * x)",
        "6*x",
    ),
    (
        "mul-const-x-const",
        Contract::Rounding,
        "2 * (x * 3)",
        "6*x",
    ),
    (
        "mul-const-x-const-r",
        Contract::Rounding,
        "(x * 3) * 2",
        "6*x",
    ),
    (
        "mul-const-const-x-r",
        Contract::Rounding,
        "(3 * x) * 2",
        "6*x",
    ),
    ("div-const", Contract::Rounding, "x / 4", "0.25*x"),
    ("factor-left", Contract::Rounding, "x*y + x*z", "x*(y + z)"),
    ("factor-right", Contract::Rounding, "y*x + z*x", "(y + z)*x"),
    (
        "factor-left-sub",
        Contract::Rounding,
        "x*y - x*z",
        "x*(y - z)",
    ),
    (
        "factor-right-sub",
        Contract::Rounding,
        "y*x - z*x",
        "(y - z)*x",
    ),
    ("pow-two", Contract::Rounding, "x ^ 2", "x*x"),
    ("pow-minus-one", Contract::Rounding, "x ^ (0 - 1)", "1/x"),
    ("mul-zero", Contract::FiniteOnly, "x * 0", "0"),
    ("zero-mul", Contract::FiniteOnly, "0 * x", "0"),
    ("zero-div", Contract::FiniteOnly, "0 / x", "0"),
    ("log-exp", Contract::FiniteOnly, "log(exp(x))", "x"),
    ("recip-recip", Contract::FiniteOnly, "1 / (1 / x)", "x"),
    ("pow-half", Contract::FiniteOnly, "x ^ 0.5", "sqrt(x)"),
];

fn rule_set(contract: Contract) -> RuleSet {
    match contract {
        Contract::FiniteOnly => RuleSet::FastMath,
        _ => RuleSet::Ieee,
    }
}

/// The formula after simplification, and the rules that fired.
fn simplify(source: &str, set: RuleSet) -> (String, Vec<String>) {
    let f = nabla_dsl::formula(source).unwrap_or_else(|d| panic!("{source}: {}", d.message));
    let s = egraph::simplify(&f.graph, &[f.root], &Limits::default(), set).expect("simplifies");
    let fired = s.rules_fired.iter().map(|(r, _)| r.clone()).collect();
    (formula::to_formula(&s.graph, s.roots[0]), fired)
}

/// The value of a formula at `x`, `y`, `z`.
fn value(source: &str, point: [f64; 3]) -> f64 {
    let f = nabla_dsl::formula(source).expect("parses");
    let feeds: HashMap<String, Tensor<f64>> = f
        .variables
        .iter()
        .map(|(name, _)| {
            let i = ["x", "y", "z"]
                .iter()
                .position(|v| v == name)
                .expect("x, y or z");
            (name.clone(), Tensor::scalar(point[i]))
        })
        .collect();
    interp::eval(&f.graph, &feeds, &[f.root]).expect("evaluates")[0].data[0]
}

#[test]
fn every_rule_rewrites_its_start_to_its_goal() {
    for &(rule, contract, start, goal) in CASES {
        let (got, fired) = simplify(start, rule_set(contract));
        assert_eq!(got, goal, "{rule}: {start}");
        assert!(
            fired.iter().any(|f| f == rule),
            "{rule} did not fire on {start}: {fired:?}"
        );
    }
}

#[test]
fn every_rule_has_a_case() {
    let tested: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    for rule in rules::all(RuleSet::FastMath) {
        let name = rule.name.to_string();
        assert!(
            tested.contains(&name.as_str()) || name == "select-same",
            "no case for {name}"
        );
    }
}

/// Finite-only rules do not apply by default: NaN stays NaN.
#[test]
fn finite_only_rules_wait_for_fast_math() {
    for &(rule, contract, start, goal) in CASES {
        if contract == Contract::FiniteOnly {
            let (got, _) = simplify(start, RuleSet::Ieee);
            assert_ne!(got, goal, "{rule} applied without --fast-math");
        }
    }
}

/// Both sides agree at random points: exactly for exact rules, to rounding otherwise.
#[test]
fn both_sides_agree_on_random_values() {
    let mut rng = Rng::seeded(11);
    for &(rule, contract, start, goal) in CASES {
        if contract == Contract::FiniteOnly {
            continue;
        }
        for _ in 0..200 {
            let point = [0; 3].map(|_| rng.normal(0.0, 3.0));
            let (a, b) = (value(start, point), value(goal, point));
            let ok = match contract {
                Contract::Exact => a == b || (a.is_nan() && b.is_nan()),
                _ => (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300),
            };
            assert!(ok, "{rule} at {point:?}: {start} = {a}, {goal} = {b}");
        }
    }
}

/// Exact rules agree on every special value, bit for bit but for the sign of a zero.
#[test]
fn exact_rules_agree_on_nan_infinities_and_zeros() {
    let special = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        -2.5,
        1e308,
        5e-324,
    ];
    for &(rule, contract, start, goal) in CASES {
        if contract != Contract::Exact {
            continue;
        }
        for x in special {
            for y in special {
                let (a, b) = (value(start, [x, y, 1.0]), value(goal, [x, y, 1.0]));
                let same = a.to_bits() == b.to_bits()
                    || (a.is_nan() && b.is_nan())
                    || (a == 0.0 && b == 0.0);
                assert!(
                    same,
                    "{rule} at x = {x}, y = {y}: {start} = {a}, {goal} = {b}"
                );
            }
        }
    }
}

/// `0 * sum(log(w))` is NaN for negative `w`: by default compiled code says so as the
/// interpreter does, so both backends give gradcheck the same verdict (fast-math once folded
/// it to 0 and passed).
#[test]
fn gradcheck_verdicts_agree_across_backends() {
    let source = "model m {\n  input x[B, 2]\n  param w[2] = normal(0, 1)\n  loss = 0 * sum(log(w)) + sum(x)\n}\n";
    let model = common::model(source);
    let jit = JitEvaluator::new(Elem::F64);
    let config = Config::default();
    let with_jit = gradcheck::check(&model, &config, autodiff::vjp, &|g, f, o| jit.eval(g, f, o))
        .expect("runs");
    let with_interp =
        gradcheck::check(&model, &config, autodiff::vjp, &interp::eval).expect("runs");
    let verdicts = |r: &[gradcheck::ParamResult]| r.iter().map(|p| p.passed).collect::<Vec<_>>();
    assert_eq!(verdicts(&with_jit), verdicts(&with_interp));
    assert!(!with_jit[0].passed, "a NaN loss fails: {with_jit:?}");
}
