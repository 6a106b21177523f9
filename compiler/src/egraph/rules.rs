//! Rewrite rules, in named groups. Every right-hand side is never worse than its left-hand side
//! and there is no blanket commutativity or associativity, so saturation stays small.
//!
//! Rules assume finite values, as fast-math compilers do: `x * 0 => 0` and `0 / x => 0` are
//! applied even though they change `inf * 0` and `0 / 0`.

use egg::{Rewrite, Subst, Var, rewrite as rw};

use super::analysis::{TensorAnalysis, TensorEGraph};
use super::lang::TensorNode;

/// A rewrite rule over tensor e-graphs.
pub type Rule = Rewrite<TensorNode, TensorAnalysis>;

/// A condition: the e-class bound to `var` is filled with exactly `value`.
fn is(var: &str, value: f64) -> impl Fn(&mut TensorEGraph, egg::Id, &Subst) -> bool {
    let var: Var = var.parse().expect("rule variables are well-formed");
    move |egraph, _, subst| egraph[subst[var]].data.constant == Some(value)
}

/// A condition: `a` and `b` are known constants and `x` is not (gathering constants out of a
/// product that is itself constant would only mint new constants forever).
fn gatherable(a: &str, b: &str, x: &str) -> impl Fn(&mut TensorEGraph, egg::Id, &Subst) -> bool {
    let [a, b, x]: [Var; 3] = [a, b, x].map(|v| v.parse().expect("rule variables are well-formed"));
    move |egraph, _, subst| {
        let constant = |v: Var| egraph[subst[v]].data.constant.is_some();
        constant(a) && constant(b) && !constant(x)
    }
}

/// Neutral and absorbing elements: `x + 0`, `x * 1`, `x * 0`, `x / 1`, `x ^ 1`.
/// Elementwise operands have equal shapes, so the surviving operand has the result's shape.
pub fn identities() -> Vec<Rule> {
    vec![
        rw!("add-zero"; "(add ?x ?z)" => "?x" if is("?z", 0.0)),
        rw!("zero-add"; "(add ?z ?x)" => "?x" if is("?z", 0.0)),
        rw!("sub-zero"; "(sub ?x ?z)" => "?x" if is("?z", 0.0)),
        rw!("zero-sub"; "(sub ?z ?x)" => "(neg ?x)" if is("?z", 0.0)),
        rw!("mul-one"; "(mul ?x ?o)" => "?x" if is("?o", 1.0)),
        rw!("one-mul"; "(mul ?o ?x)" => "?x" if is("?o", 1.0)),
        rw!("mul-zero"; "(mul ?x ?z)" => "?z" if is("?z", 0.0)),
        rw!("zero-mul"; "(mul ?z ?x)" => "?z" if is("?z", 0.0)),
        rw!("mul-minus-one"; "(mul ?x ?m)" => "(neg ?x)" if is("?m", -1.0)),
        rw!("minus-one-mul"; "(mul ?m ?x)" => "(neg ?x)" if is("?m", -1.0)),
        rw!("div-one"; "(div ?x ?o)" => "?x" if is("?o", 1.0)),
        rw!("zero-div"; "(div ?z ?x)" => "?z" if is("?z", 0.0)),
        rw!("pow-one"; "(pow ?x ?o)" => "?x" if is("?o", 1.0)),
    ]
}

/// Sign and inverse-function cancellations.
pub fn cancellations() -> Vec<Rule> {
    vec![
        rw!("neg-neg"; "(neg (neg ?x))" => "?x"),
        rw!("add-neg"; "(add ?x (neg ?y))" => "(sub ?x ?y)"),
        rw!("neg-add"; "(add (neg ?y) ?x)" => "(sub ?x ?y)"),
        rw!("sub-neg"; "(sub ?x (neg ?y))" => "(add ?x ?y)"),
        rw!("neg-mul-neg"; "(mul (neg ?x) (neg ?y))" => "(mul ?x ?y)"),
        rw!("log-exp"; "(log (exp ?x))" => "?x"),
        rw!("recip-recip"; "(recip (recip ?x))" => "?x"),
        // Simplification runs after differentiation, where `stop_gradient` is the identity.
        rw!("stop-gradient"; "(stop_gradient ?x)" => "?x"),
    ]
}

/// Gathers constant factors of a product so the analysis can fold them: `a * (b * x)` with
/// constants `a`, `b` becomes `(a * b) * x`.
pub fn constant_gathering() -> Vec<Rule> {
    vec![
        rw!("mul-const-const-x"; "(mul ?a (mul ?b ?x))" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        rw!("mul-const-x-const"; "(mul ?a (mul ?x ?b))" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        rw!("mul-const-x-const-r"; "(mul (mul ?x ?b) ?a)" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        rw!("mul-const-const-x-r"; "(mul (mul ?b ?x) ?a)" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
    ]
}

/// Every rule, in the order the groups are listed above.
pub fn all() -> Vec<Rule> {
    [identities(), cancellations(), constant_gathering()]
        .into_iter()
        .flatten()
        .collect()
}
