//! Canonical forms of scalar formulas in real-number algebra, for `nabla diff`: what a person
//! writes for a derivative (`4*x^3`, `sigmoid(x)*(1 - sigmoid(x))`, `x/sqrt(x^2 + y^2)`), not
//! what autodiff emits.
//!
//! A formula becomes a sum of terms, each a coefficient times a product of atoms raised to
//! rational powers; like terms are collected, products distributed and small integer powers
//! of sums expanded (within a size budget), and the common factor of a sum is pulled out when
//! printing. Atoms are variables, function calls of canonical arguments, and sums that cannot
//! be expanded (`(x^2 + y^2)^(-1/2)`). This is real algebra, not IEEE arithmetic: `x - x` is 0
//! here. Comparisons and selections become the Heaviside `step` (1 above 0, else 0), which,
//! like everything printed, parses back in the model language.
//!
//! **Architecture invariant:** only `nabla diff` prints through this module; compiled code never
//! depends on it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp, UnaryOp};

/// A rational exponent `num / den`, in lowest terms with `den > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ratio {
    num: i64,
    den: i64,
}

impl Ratio {
    fn new(num: i64, den: i64) -> Ratio {
        let g = gcd(num.unsigned_abs(), den.unsigned_abs()).max(1) as i64;
        let sign = if den < 0 { -1 } else { 1 };
        Ratio {
            num: sign * num / g,
            den: sign * den / g,
        }
    }

    fn int(n: i64) -> Ratio {
        Ratio { num: n, den: 1 }
    }

    /// The ratio equal to `v`, for small denominators.
    fn from_f64(v: f64) -> Option<Ratio> {
        (1..=12i64).find_map(|den| {
            let num = v * den as f64;
            (num.fract() == 0.0 && num.abs() < 1e9).then(|| Ratio::new(num as i64, den))
        })
    }

    fn add(self, o: Ratio) -> Ratio {
        Ratio::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }

    fn mul(self, o: Ratio) -> Ratio {
        Ratio::new(self.num * o.num, self.den * o.den)
    }

    fn is_integer(self) -> bool {
        self.den == 1
    }

    fn value(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A coefficient: an `f64` ordered totally, so terms and atoms can be sorted and compared.
#[derive(Clone, Copy, Debug)]
struct Coeff(f64);

impl PartialEq for Coeff {
    fn eq(&self, o: &Coeff) -> bool {
        self.0.total_cmp(&o.0) == Ordering::Equal
    }
}
impl Eq for Coeff {}
impl PartialOrd for Coeff {
    fn partial_cmp(&self, o: &Coeff) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Coeff {
    fn cmp(&self, o: &Coeff) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Something raised to a power inside a term.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    /// A free variable.
    Var(String),
    /// A function of canonical arguments (`exp`, `sigmoid`, `max`, `step`, `pow` with a
    /// non-constant exponent, ...).
    Call(&'static str, Vec<Expr>),
    /// A sum, or a product with a coefficient, kept whole: raised to a power that cannot be
    /// distributed over it (`(x^2 + y^2)^(-1/2)`, `(x^2)^(1/2)`), or too large to expand.
    Group(Expr),
}

/// A coefficient times a product of atoms raised to nonzero powers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Term {
    factors: BTreeMap<Atom, Ratio>,
    coeff: Coeff,
}

/// A sum of terms with distinct factors and nonzero coefficients, sorted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expr(Vec<Term>);

/// Products larger than this stay unexpanded.
const MAX_TERMS: usize = 64;

impl Expr {
    fn number(c: f64) -> Expr {
        Expr::from_terms(vec![Term {
            factors: BTreeMap::new(),
            coeff: Coeff(c),
        }])
    }

    fn atom(atom: Atom) -> Expr {
        Expr(vec![Term {
            factors: BTreeMap::from([(atom, Ratio::int(1))]),
            coeff: Coeff(1.0),
        }])
    }

    /// The constant value, when the expression is one.
    fn constant(&self) -> Option<f64> {
        match self.0.as_slice() {
            [] => Some(0.0),
            [t] if t.factors.is_empty() => Some(t.coeff.0),
            _ => None,
        }
    }

    /// Collects like terms, drops zeros and sorts.
    fn from_terms(terms: Vec<Term>) -> Expr {
        let mut collected: BTreeMap<BTreeMap<Atom, Ratio>, f64> = BTreeMap::new();
        for t in terms {
            *collected.entry(t.factors).or_insert(0.0) += t.coeff.0;
        }
        Expr(
            collected
                .into_iter()
                .filter(|(_, c)| *c != 0.0)
                .map(|(factors, c)| Term {
                    factors,
                    coeff: Coeff(c),
                })
                .collect(),
        )
    }

    fn add(&self, o: &Expr) -> Expr {
        Expr::from_terms(self.0.iter().chain(&o.0).cloned().collect())
    }

    fn scale(&self, c: f64) -> Expr {
        Expr::from_terms(
            self.0
                .iter()
                .map(|t| Term {
                    factors: t.factors.clone(),
                    coeff: Coeff(t.coeff.0 * c),
                })
                .collect(),
        )
    }

    fn mul(&self, o: &Expr) -> Expr {
        if self.0.len() * o.0.len() > MAX_TERMS {
            return Expr::atom(Atom::Group(self.clone())).mul(&Expr::atom(Atom::Group(o.clone())));
        }
        let mut terms = Vec::new();
        for a in &self.0 {
            for b in &o.0 {
                let mut factors = a.factors.clone();
                for (atom, e) in &b.factors {
                    let sum = factors.get(atom).map_or(*e, |x| x.add(*e));
                    if sum.num == 0 {
                        factors.remove(atom);
                    } else {
                        factors.insert(atom.clone(), sum);
                    }
                }
                let coeff = if opposite_steps(&factors) {
                    0.0
                } else {
                    a.coeff.0 * b.coeff.0
                };
                terms.push(Term {
                    factors: simplify_steps(factors),
                    coeff: Coeff(coeff),
                });
            }
        }
        Expr::from_terms(terms)
    }

    /// `self ^ r`: exact for a single term whose atoms stay real (integer `r`, or a plain atom),
    /// by expansion for small natural `r`, else a power of the whole sum.
    fn pow(&self, r: Ratio) -> Expr {
        if r.num == 0 {
            return Expr::number(1.0);
        }
        if let [t] = self.0.as_slice() {
            let coeff_ok = r.is_integer() || t.coeff.0 > 0.0;
            let atoms_ok = r.is_integer() || t.factors.values().all(|e| *e == Ratio::int(1));
            if coeff_ok && atoms_ok {
                let factors = t
                    .factors
                    .iter()
                    .map(|(a, e)| (a.clone(), e.mul(r)))
                    .collect();
                return Expr(vec![Term {
                    factors: simplify_steps(factors),
                    coeff: Coeff(t.coeff.0.powf(r.value())),
                }]);
            }
        }
        if r.is_integer() && (1..=4).contains(&r.num) {
            let mut out = self.clone();
            for _ in 1..r.num {
                out = out.mul(self);
            }
            return out;
        }
        if self.0.is_empty() {
            return Expr::number(0.0f64.powf(r.value()));
        }
        Expr(vec![Term {
            factors: BTreeMap::from([(Atom::Group(self.clone()), r)]),
            coeff: Coeff(1.0),
        }])
    }

    fn call(name: &'static str, args: Vec<Expr>) -> Expr {
        Expr::atom(Atom::Call(name, args))
    }

    /// Heaviside step of `self` (1 above 0, else 0), folded when constant.
    fn step(&self) -> Expr {
        match self.constant() {
            Some(c) => Expr::number(if c > 0.0 { 1.0 } else { 0.0 }),
            None => Expr::call("step", vec![self.clone()]),
        }
    }
}

/// Whether the factors hold `step(e)` and `step(-e)`, whose product is 0 (`e` cannot be above 0
/// and below it).
fn opposite_steps(factors: &BTreeMap<Atom, Ratio>) -> bool {
    factors.iter().any(|(a, r)| match a {
        Atom::Call("step", args) if r.num > 0 => {
            let opposite = Atom::Call("step", vec![args[0].scale(-1.0)]);
            factors.get(&opposite).is_some_and(|o| o.num > 0)
        }
        _ => false,
    })
}

/// `step(e)^k = step(e)` for `k > 0`: a step is 0 or 1.
fn simplify_steps(factors: BTreeMap<Atom, Ratio>) -> BTreeMap<Atom, Ratio> {
    factors
        .into_iter()
        .map(|(a, e)| match &a {
            Atom::Call("step", _) if e.num > 0 => (a, Ratio::int(1)),
            _ => (a, e),
        })
        .collect()
}

/// The canonical form of the scalar value `root` of a formula graph.
pub fn canonical(graph: &Graph, root: NodeId) -> Expr {
    let mut done: Vec<Option<Expr>> = vec![None; graph.len()];
    for id in graph.ancestors(&[root]) {
        let x: Vec<Expr> = graph
            .operands(id)
            .iter()
            .map(|o| done[o.index()].clone().expect("operands come first"))
            .collect();
        done[id.index()] = Some(node(graph, id, &x));
    }
    done[root.index()]
        .take()
        .expect("the root is its own ancestor")
}

fn node(graph: &Graph, id: NodeId, x: &[Expr]) -> Expr {
    let unary_name = |u: UnaryOp| Op::Unary(u).name();
    match graph.op(id) {
        Op::Input { name, .. } | Op::Param { name, .. } => Expr::atom(Atom::Var(name.clone())),
        Op::Const(c) => Expr::number(c.get()),
        Op::Numel(s) => Expr::number(s.numel().unwrap_or(1) as f64),
        Op::Iota { .. } => Expr::number(0.0),
        Op::Broadcast(_) | Op::Reshape(_) | Op::Transpose(_) | Op::Reduce(ReduceOp::Max, _) => {
            x[0].clone()
        }
        Op::Reduce(ReduceOp::Sum, _) => x[0].clone(),
        Op::MatMul | Op::BatchMatMul => x[0].mul(&x[1]),
        // Weights of the values, and the same again for their gradients.
        Op::Attention { .. } => x[2].clone(),
        Op::AttentionGrad { .. } => x[4].clone(),
        // Windows only move elements (and pad with a constant).
        Op::Windows(_) | Op::Unwindows(_) | Op::Slice { .. } | Op::Concat { .. } => x[0].clone(),
        Op::Gather => x[0].clone(),
        Op::ScatterAdd { .. } => x[1].clone(),
        Op::Conv(_) | Op::ConvInputGrad(_) | Op::ConvWeightGrad(_) => x[0].mul(&x[1]),
        Op::MaxPoolGather(_) | Op::MaxPoolScatter(_) => x[1].clone(),
        Op::Unary(u) => match u {
            UnaryOp::Neg => x[0].scale(-1.0),
            UnaryOp::Recip => x[0].pow(Ratio::int(-1)),
            UnaryOp::Sqrt => x[0].pow(Ratio::new(1, 2)),
            UnaryOp::StopGradient => x[0].clone(),
            UnaryOp::Sign => x[0].step().add(&x[0].scale(-1.0).step().scale(-1.0)),
            other => match x[0].constant() {
                Some(c) => Expr::number(crate::ir::interp::unary(*other, c)),
                None => Expr::call(unary_name(*other), vec![x[0].clone()]),
            },
        },
        Op::Binary(b) => {
            let (a, c) = (&x[0], &x[1]);
            match b {
                BinaryOp::Add => a.add(c),
                BinaryOp::Sub => a.add(&c.scale(-1.0)),
                BinaryOp::Mul => a.mul(c),
                BinaryOp::Div => a.mul(&c.pow(Ratio::int(-1))),
                BinaryOp::Pow => match c.constant().and_then(Ratio::from_f64) {
                    Some(r) => a.pow(r),
                    None => Expr::call("pow", vec![a.clone(), c.clone()]),
                },
                BinaryOp::Max | BinaryOp::Min => match (a.constant(), c.constant()) {
                    (Some(p), Some(q)) => Expr::number(if *b == BinaryOp::Max {
                        p.max(q)
                    } else {
                        p.min(q)
                    }),
                    _ => Expr::call(b_name(*b), vec![a.clone(), c.clone()]),
                },
                BinaryOp::Gt => a.add(&c.scale(-1.0)).step(),
                BinaryOp::Lt => c.add(&a.scale(-1.0)).step(),
                BinaryOp::Le => Expr::number(1.0).add(&a.add(&c.scale(-1.0)).step().scale(-1.0)),
                // a == b exactly when neither is above the other
                BinaryOp::Eq => {
                    let d = a.add(&c.scale(-1.0));
                    let above = d.step().add(&d.scale(-1.0).step());
                    Expr::number(1.0).add(&above.scale(-1.0))
                }
            }
        }
        // c ? a : b = c a + (1 - c) b, for c in {0, 1}
        Op::Select => {
            let (c, a, b) = (&x[0], &x[1], &x[2]);
            let not_c = Expr::number(1.0).add(&c.scale(-1.0));
            c.mul(a).add(&not_c.mul(b))
        }
    }
}

fn b_name(b: BinaryOp) -> &'static str {
    Op::Binary(b).name()
}

impl std::fmt::Display for Expr {
    /// Infix text that parses back in the model language: terms by decreasing degree, a common
    /// factor pulled out, negative powers as division, halves as `sqrt`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render_sum(self))
    }
}

/// A sum with its common factor pulled out: `sigmoid(x)*(1 - sigmoid(x))`, `2*(x + 1)`.
fn render_sum(e: &Expr) -> String {
    if e.0.len() < 2 {
        return render_terms(&e.0);
    }
    let mut common: BTreeMap<Atom, Ratio> = e.0[0]
        .factors
        .iter()
        .filter(|(_, r)| r.num > 0)
        .map(|(a, r)| (a.clone(), *r))
        .collect();
    for t in &e.0[1..] {
        common = common
            .into_iter()
            .filter_map(|(a, r)| {
                let other = t.factors.get(&a).filter(|o| o.num > 0)?;
                Some((a, if other < &r { *other } else { r }))
            })
            .collect();
    }
    let integers =
        e.0.iter()
            .all(|t| t.coeff.0.fract() == 0.0 && t.coeff.0.abs() < 1e15);
    let mut numeric = if integers {
        e.0.iter().fold(0u64, |g, t| gcd(g, t.coeff.0.abs() as u64)) as f64
    } else {
        1.0
    };
    if e.0.iter().all(|t| t.coeff.0 < 0.0) {
        numeric = -numeric;
    }
    if common.is_empty() && numeric == 1.0 {
        return render_terms(&e.0);
    }
    let rest: Vec<Term> =
        e.0.iter()
            .map(|t| {
                let mut factors = t.factors.clone();
                for (a, r) in &common {
                    let left = factors[a].add(Ratio::new(-r.num, r.den));
                    if left.num == 0 {
                        factors.remove(a);
                    } else {
                        factors.insert(a.clone(), left);
                    }
                }
                Term {
                    factors,
                    coeff: Coeff(t.coeff.0 / numeric),
                }
            })
            .collect();
    let outer = Term {
        factors: common,
        coeff: Coeff(numeric),
    };
    let inner = format!("({})", render_terms(&sorted(rest)));
    let outer_text = render_terms(std::slice::from_ref(&outer));
    if outer.factors.is_empty() {
        match numeric {
            1.0 => inner,
            -1.0 => format!("-{inner}"),
            _ => format!("{outer_text}*{inner}"),
        }
    } else {
        format!("{outer_text}*{inner}")
    }
}

fn degree(t: &Term) -> f64 {
    t.factors.values().map(|r| r.value()).sum()
}

/// Terms by decreasing degree (ties in atom order), a positive term first where there is one.
fn sorted(mut terms: Vec<Term>) -> Vec<Term> {
    terms.sort_by(|a, b| {
        degree(b)
            .total_cmp(&degree(a))
            .then_with(|| a.factors.cmp(&b.factors))
    });
    if let Some(i) = terms.iter().position(|t| t.coeff.0 > 0.0) {
        let first = terms.remove(i);
        terms.insert(0, first);
    }
    terms
}

fn render_terms(terms: &[Term]) -> String {
    let terms = sorted(terms.to_vec());
    if terms.is_empty() {
        return "0".into();
    }
    let mut out = String::new();
    for (i, t) in terms.iter().enumerate() {
        let text = render_term(t);
        match (i, text.strip_prefix('-')) {
            (0, _) => out += &text,
            (_, Some(positive)) => out += &format!(" - {positive}"),
            (_, None) => out += &format!(" + {text}"),
        }
    }
    out
}

/// `coeff*a*b^2/(c*sqrt(d))`.
fn render_term(t: &Term) -> String {
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for (atom, r) in &t.factors {
        let (side, r) = if r.num < 0 {
            (&mut bottom, Ratio::new(-r.num, r.den))
        } else {
            (&mut top, *r)
        };
        side.push(render_power(atom, r));
    }
    let c = t.coeff.0;
    let sign = if c < 0.0 { "-" } else { "" };
    let magnitude = c.abs();
    let mut numerator = top.join("*");
    if numerator.is_empty() {
        numerator = number(magnitude);
    } else if magnitude != 1.0 {
        numerator = format!("{}*{numerator}", number(magnitude));
    }
    let denominator = match bottom.len() {
        0 => String::new(),
        1 => format!("/{}", bottom[0]),
        _ => format!("/({})", bottom.join("*")),
    };
    format!("{sign}{numerator}{denominator}")
}

fn render_power(atom: &Atom, r: Ratio) -> String {
    let base = |parenthesise: bool| match atom {
        Atom::Var(name) => name.clone(),
        Atom::Call(name, args) if *name == "pow" => {
            format!("({})^({})", render_sum(&args[0]), render_sum(&args[1]))
        }
        Atom::Call(name, args) => {
            let args: Vec<String> = args.iter().map(render_sum).collect();
            format!("{name}({})", args.join(", "))
        }
        Atom::Group(e) if parenthesise || e.0.len() > 1 => format!("({})", render_sum(e)),
        Atom::Group(e) => render_sum(e),
    };
    match (r.num, r.den) {
        (1, 1) => base(false),
        (1, 2) => match atom {
            Atom::Group(e) => format!("sqrt({})", render_sum(e)),
            _ => format!("sqrt({})", base(false)),
        },
        (n, 1) => format!("{}^{n}", base(true)),
        (n, d) => format!("{}^({n}/{d})", base(true)),
    }
}

/// A number as a person writes it: `3`, `0.25`, `2e300`, `1e-20`.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e15 {
        format!("{}", v as i64)
    } else if a >= 1e15 || (a != 0.0 && a < 1e-4) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}
