//! Rewrite rules, in named groups by numerical contract. Every right-hand side is never worse
//! than its left-hand side and there is no blanket commutativity or associativity, so
//! saturation stays small.
//!
//! The contract of each group, tested (`tests/rules.rs`) on random inputs and, for the exact
//! group, on NaN, infinities and zeros:
//! - [`exact`]: the same IEEE result for every input, infinities and NaN included (only the
//!   sign of a zero result may differ, as in `x + 0 => x` at `x = -0`);
//! - [`rounding`]: equal in real arithmetic, and for finite values up to rounding
//!   (reassociation, distributivity, division by a constant as multiplication);
//! - [`finite_only`]: true only for finite values (`x * 0 => 0` is wrong for `inf` and NaN):
//!   applied under `--fast-math` alone.
//!
//! The default set is exact and rounding rules, so compiled code and the interpreter give the
//! same verdicts on every model (a NaN stays a NaN).

use egg::{Rewrite, Subst, Var, rewrite as rw};

use super::analysis::{TensorAnalysis, TensorEGraph};
use super::lang::TensorNode;

/// A rewrite rule over tensor e-graphs.
pub type Rule = Rewrite<TensorNode, TensorAnalysis>;

/// Which rules simplification may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuleSet {
    /// Exact and rounding rules: NaN and infinities behave as written.
    #[default]
    Ieee,
    /// Also the rules that assume finite values (`--fast-math`).
    FastMath,
}

/// A condition: the e-class bound to `var` is filled with exactly `value`.
fn is(var: &str, value: f64) -> impl Fn(&mut TensorEGraph, egg::Id, &Subst) -> bool {
    let var: Var = var.parse().expect("rule variables are well-formed");
    move |egraph, _, subst| egraph[subst[var]].data.constant == Some(value)
}

/// A condition: the e-class bound to `var` is one nonzero finite constant.
fn nonzero_constant(var: &str) -> impl Fn(&mut TensorEGraph, egg::Id, &Subst) -> bool {
    let var: Var = var.parse().expect("rule variables are well-formed");
    move |egraph, _, subst| {
        egraph[subst[var]]
            .data
            .constant
            .is_some_and(|c| c != 0.0 && c.is_finite())
    }
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

/// Exact rules: neutral elements, negation algebra, inverse functions that are exact.
/// Elementwise operands have equal shapes, so the surviving operand has the result's shape.
pub fn exact() -> Vec<Rule> {
    vec![
        // x + 0 = x (the sign of a zero sum aside)
        rw!("add-zero"; "(add ?x ?z)" => "?x" if is("?z", 0.0)),
        rw!("zero-add"; "(add ?z ?x)" => "?x" if is("?z", 0.0)),
        // x - 0 = x
        rw!("sub-zero"; "(sub ?x ?z)" => "?x" if is("?z", 0.0)),
        // 0 - x = -x
        rw!("zero-sub"; "(sub ?z ?x)" => "(neg ?x)" if is("?z", 0.0)),
        // x * 1 = x, x / 1 = x, x ^ 1 = x
        rw!("mul-one"; "(mul ?x ?o)" => "?x" if is("?o", 1.0)),
        rw!("one-mul"; "(mul ?o ?x)" => "?x" if is("?o", 1.0)),
        rw!("div-one"; "(div ?x ?o)" => "?x" if is("?o", 1.0)),
        rw!("pow-one"; "(pow ?x ?o)" => "?x" if is("?o", 1.0)),
        // x * -1 = -x
        rw!("mul-minus-one"; "(mul ?x ?m)" => "(neg ?x)" if is("?m", -1.0)),
        rw!("minus-one-mul"; "(mul ?m ?x)" => "(neg ?x)" if is("?m", -1.0)),
        // --x = x
        rw!("neg-neg"; "(neg (neg ?x))" => "?x"),
        // x + -y = x - y, -y + x = x - y, x - -y = x + y
        rw!("add-neg"; "(add ?x (neg ?y))" => "(sub ?x ?y)"),
        rw!("neg-add"; "(add (neg ?y) ?x)" => "(sub ?x ?y)"),
        rw!("sub-neg"; "(sub ?x (neg ?y))" => "(add ?x ?y)"),
        // -(x - y) = y - x
        rw!("neg-sub"; "(neg (sub ?x ?y))" => "(sub ?y ?x)"),
        // (-x)(-y) = xy, (-x) y = -(xy), x (-y) = -(xy), (-x) / y = -(x / y)
        rw!("neg-mul-neg"; "(mul (neg ?x) (neg ?y))" => "(mul ?x ?y)"),
        rw!("neg-mul"; "(mul (neg ?x) ?y)" => "(neg (mul ?x ?y))"),
        rw!("mul-neg"; "(mul ?x (neg ?y))" => "(neg (mul ?x ?y))"),
        rw!("neg-div"; "(div (neg ?x) ?y)" => "(neg (div ?x ?y))"),
        // 1 / x = recip(x)
        rw!("one-div"; "(div ?o ?x)" => "(recip ?x)" if is("?o", 1.0)),
        // c ? x : x = x
        rw!("select-same"; "(select ?c ?x ?x)" => "?x"),
        // Simplification runs after differentiation, where `stop_gradient` is the identity.
        rw!("stop-gradient"; "(stop_gradient ?x)" => "?x"),
    ]
}

/// Rules equal in real arithmetic that may round differently: constants gathered out of
/// products, common factors pulled out of the sums autodiff produces, division by a constant
/// as multiplication by its reciprocal, small integer powers as products.
pub fn rounding() -> Vec<Rule> {
    vec![
        // a (b x) = (a b) x for constants a, b
        rw!("mul-const-const-x"; "(mul ?a (mul ?b ?x))" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        rw!("mul-const-x-const"; "(mul ?a (mul ?x ?b))" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        rw!("mul-const-x-const-r"; "(mul (mul ?x ?b) ?a)" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        rw!("mul-const-const-x-r"; "(mul (mul ?b ?x) ?a)" => "(mul (mul ?a ?b) ?x)" if gatherable("?a", "?b", "?x")),
        // x / c = x (1/c) for a nonzero finite constant c (1/c folds)
        rw!("div-const"; "(div ?x ?c)" => "(mul ?x (recip ?c))" if nonzero_constant("?c")),
        // a b + a c = a (b + c), and its mirror images; likewise for differences
        rw!("factor-left"; "(add (mul ?a ?b) (mul ?a ?c))" => "(mul ?a (add ?b ?c))"),
        rw!("factor-right"; "(add (mul ?b ?a) (mul ?c ?a))" => "(mul (add ?b ?c) ?a)"),
        rw!("factor-left-sub"; "(sub (mul ?a ?b) (mul ?a ?c))" => "(mul ?a (sub ?b ?c))"),
        rw!("factor-right-sub"; "(sub (mul ?b ?a) (mul ?c ?a))" => "(mul (sub ?b ?c) ?a)"),
        // x^2 = x x, x^-1 = 1/x
        rw!("pow-two"; "(pow ?x ?t)" => "(mul ?x ?x)" if is("?t", 2.0)),
        rw!("pow-minus-one"; "(pow ?x ?m)" => "(recip ?x)" if is("?m", -1.0)),
    ]
}

/// Rules that hold only for finite values; `--fast-math` alone applies them.
pub fn finite_only() -> Vec<Rule> {
    vec![
        // x * 0 = 0 (not for inf or NaN)
        rw!("mul-zero"; "(mul ?x ?z)" => "?z" if is("?z", 0.0)),
        rw!("zero-mul"; "(mul ?z ?x)" => "?z" if is("?z", 0.0)),
        // 0 / x = 0 (not for x = 0 or NaN)
        rw!("zero-div"; "(div ?z ?x)" => "?z" if is("?z", 0.0)),
        // log(e^x) = x (not once e^x overflows)
        rw!("log-exp"; "(log (exp ?x))" => "?x"),
        // 1/(1/x) = x (not for subnormal x)
        rw!("recip-recip"; "(recip (recip ?x))" => "?x"),
        // x^0.5 = sqrt(x) (not at -inf)
        rw!("pow-half"; "(pow ?x ?h)" => "(sqrt ?x)" if is("?h", 0.5)),
    ]
}

/// The rules of a set, in the order the groups are listed above.
pub fn all(set: RuleSet) -> Vec<Rule> {
    let mut rules = exact();
    rules.extend(rounding());
    if set == RuleSet::FastMath {
        rules.extend(finite_only());
    }
    rules
}
