//! The syntax tree of a `.nn` file. Every node keeps its source span for diagnostics.

/// A byte range in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end`.
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A name and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A whole file: functions, one model, training configurations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    /// User functions, inlined at each call.
    pub functions: Vec<Function>,
    /// Models (a file must have exactly one).
    pub models: Vec<ModelDef>,
    /// `train NAME { ... }` blocks.
    pub trains: Vec<TrainDef>,
}

/// `fn name(params) = expr` or `fn name(params) { bindings; result }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// The function's name.
    pub name: Ident,
    /// Its parameters.
    pub params: Vec<Ident>,
    /// Local bindings (braced form only).
    pub bindings: Vec<(Ident, Expr)>,
    /// The result.
    pub body: Expr,
}

/// `model name { items }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    /// The model's name.
    pub name: Ident,
    /// Its items in order.
    pub items: Vec<Item>,
}

/// How the numbers of an input or target are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Annotation {
    /// Real values (the default).
    Real,
    /// `: class`: integer class labels.
    Class,
    /// `: index`: integer token indices (read by `embedding`).
    Index,
}

/// One declaration or binding in a model.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `input x[B, 784]` or `target y[B] : class`.
    Data {
        /// Whether it is a target.
        target: bool,
        /// Its name.
        name: Ident,
        /// Its dimensions.
        dims: Vec<Expr>,
        /// `: class` or not.
        annotation: Annotation,
    },
    /// `param w[784, 512] = he_uniform`.
    Param {
        /// Its name.
        name: Ident,
        /// Its dimensions.
        dims: Vec<Expr>,
        /// Its initialiser (zeros when absent).
        init: Option<Expr>,
    },
    /// `h = relu(x @ w + b)`.
    Binding {
        /// The bound name.
        name: Ident,
        /// The value.
        value: Expr,
    },
}

/// `train name { key = value ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDef {
    /// The configuration's name.
    pub name: Ident,
    /// Its settings in order.
    pub settings: Vec<(Ident, Expr)>,
    /// The whole block.
    pub span: Span,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `^`
    Pow,
    /// `@`
    MatMul,
}

impl BinOp {
    /// `a op b` on numbers; `None` for `@`.
    pub fn apply(self, a: f64, b: f64) -> Option<f64> {
        match self {
            BinOp::Add => Some(a + b),
            BinOp::Sub => Some(a - b),
            BinOp::Mul => Some(a * b),
            BinOp::Div => Some(a / b),
            BinOp::Pow => Some(a.powf(b)),
            BinOp::MatMul => None,
        }
    }
}

/// An argument of a call, positional or `name = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The name, for a named argument.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number.
    Number(f64),
    /// A string (file names in `train` blocks).
    Str(String),
    /// A name.
    Name(String),
    /// `-e`
    Neg(Box<Expr>),
    /// `a ^ b`, right-associative.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `a op b op c ...` with the left-associative operators of one precedence (`+ -` or
    /// `* / @`), evaluated left to right. A flat list rather than a left-deep tree, so that a
    /// sum of thousands of terms is no deeper than a sum of two for every pass that walks it.
    Chain(Box<Expr>, Vec<(BinOp, Expr)>),
    /// `f(args)`
    Call(Ident, Vec<Arg>),
    /// `[a, b, ...]`
    List(Vec<Expr>),
    /// `a..b`
    Range(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// The value of a constant numeric expression (numbers, unary minus, arithmetic, and `sqrt`,
    /// `exp`, `log`, `abs` of one).
    pub fn constant(&self) -> Option<f64> {
        match &self.kind {
            ExprKind::Number(v) => Some(*v),
            ExprKind::Neg(e) => e.constant().map(|v| -v),
            ExprKind::Binary(op, a, b) => op.apply(a.constant()?, b.constant()?),
            ExprKind::Chain(first, rest) => {
                rest.iter().try_fold(first.constant()?, |acc, (op, e)| {
                    op.apply(acc, e.constant()?)
                })
            }
            // The elementary functions of one number, so that a setting may be written as a
            // formula: `normal(0, 0.02 / sqrt(8))`.
            ExprKind::Call(callee, args) => match args.as_slice() {
                [Arg { name: None, value }] => {
                    let x = value.constant()?;
                    let y = match callee.name.as_str() {
                        "sqrt" => x.sqrt(),
                        "exp" => x.exp(),
                        "log" => x.ln(),
                        "abs" => x.abs(),
                        _ => return None,
                    };
                    y.is_finite().then_some(y)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The name, if the expression is a bare name.
    pub fn as_name(&self) -> Option<&str> {
        match &self.kind {
            ExprKind::Name(n) => Some(n),
            _ => None,
        }
    }
}
