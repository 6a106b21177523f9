//! Named initialisers resolved to concrete distributions from a parameter's fan-in and fan-out.
//!
//! Fans follow PyTorch for the layouts nabla uses: a weight `[in, out]` (applied as `x @ w`) has
//! fan-in `in` and fan-out `out`; a vector `[n]` has both equal to `n`; a convolution kernel
//! `[out, in, kh, kw]` has fan-in `in*kh*kw` and fan-out `out*kh*kw`.

use nabla_runtime::Init;

use crate::args::{Args, number};
use crate::ast::{Expr, ExprKind};
use crate::diagnostic::Diagnostic;

/// The initialisers that take no arguments.
pub const NAMED: [&str; 7] = [
    "zeros",
    "ones",
    "xavier_uniform",
    "xavier_normal",
    "he_uniform",
    "he_normal",
    "fan_in_uniform",
];

/// `(fan_in, fan_out)` of a parameter shape.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [fan_in, fan_out] => (*fan_in, *fan_out),
        [out, input, rest @ ..] => {
            let receptive: usize = rest.iter().product();
            (input * receptive, out * receptive)
        }
    }
}

/// PyTorch's `nn.Linear` default: uniform in `±1/sqrt(fan_in)`.
pub fn fan_in_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        hi: bound,
    }
}

/// Resolves an initialiser expression (zeros when absent) for a parameter of `shape`.
pub fn resolve(
    expr: Option<&Expr>,
    shape: &[usize],
    (fan_in, fan_out): (usize, usize),
) -> Result<(Init, String), Diagnostic> {
    let Some(expr) = expr else {
        return Ok((Init::Constant(0.0), "zeros".into()));
    };
    let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
    let init = match &expr.kind {
        ExprKind::Name(name) => match name.as_str() {
            "zeros" => Init::Constant(0.0),
            "ones" => Init::Constant(1.0),
            "xavier_uniform" => {
                let bound = (6.0 / (fi + fo)).sqrt();
                Init::Uniform {
                    lo: -bound,
                    hi: bound,
                }
            }
            "xavier_normal" => Init::Normal {
                mean: 0.0,
                std: (2.0 / (fi + fo)).sqrt(),
            },
            "he_uniform" => {
                let bound = (6.0 / fi).sqrt();
                Init::Uniform {
                    lo: -bound,
                    hi: bound,
                }
            }
            "he_normal" => Init::Normal {
                mean: 0.0,
                std: (2.0 / fi).sqrt(),
            },
            "fan_in_uniform" => fan_in_uniform(fan_in),
            _ => return Err(unknown(expr)),
        },
        ExprKind::Call(callee, args) => {
            let name = callee.name.as_str();
            match name {
                "constant" => {
                    let a = Args::new(name, expr.span, args, 1, 1, &["value"])?;
                    Init::Constant(number(a.required(0, "value")?, "value")?)
                }
                "normal" => {
                    let a = Args::new(name, expr.span, args, 0, 2, &["mean", "std"])?;
                    let std = a.number(1, "std", 1.0)?;
                    if std < 0.0 {
                        return Err(Diagnostic::new(
                            "`std` must not be negative",
                            a.get(1, "std").map_or(expr.span, |e| e.span),
                        ));
                    }
                    Init::Normal {
                        mean: a.number(0, "mean", 0.0)?,
                        std,
                    }
                }
                "uniform" => {
                    let a = Args::new(name, expr.span, args, 0, 2, &["lo", "hi"])?;
                    let (lo, hi) = (a.number(0, "lo", 0.0)?, a.number(1, "hi", 1.0)?);
                    if lo > hi {
                        return Err(Diagnostic::new(
                            format!("`uniform({lo}, {hi})` has its bounds reversed"),
                            expr.span,
                        )
                        .label("expected lo <= hi"));
                    }
                    Init::Uniform { lo, hi }
                }
                _ => return Err(unknown(expr)),
            }
        }
        ExprKind::List(_) => {
            let (values, literal_shape) = literal(expr)?;
            if literal_shape != shape {
                return Err(Diagnostic::new(format!("the literal has shape {literal_shape:?} but the parameter has shape {shape:?}"), expr.span)
                    .label(format!("this literal is {literal_shape:?}")));
            }
            Init::Values(values)
        }
        _ => match expr.constant() {
            Some(v) if v.is_finite() => Init::Constant(v),
            _ => return Err(unknown(expr)),
        },
    };
    let text = match &expr.kind {
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(_) => "literal".into(),
        _ => init.to_string(),
    };
    Ok((init, text))
}

fn unknown(expr: &Expr) -> Diagnostic {
    let name = match &expr.kind {
        ExprKind::Name(n) | ExprKind::Call(crate::ast::Ident { name: n, .. }, _) => n.as_str(),
        _ => "",
    };
    let known = NAMED.into_iter().chain(["constant", "normal", "uniform"]);
    Diagnostic::new("unknown initialiser", expr.span)
        .label("expected an initialiser")
        .suggesting(name, known)
        .note(format!("initialisers: {}, constant(v), normal(mean, std), uniform(lo, hi), a number, or a nested list of numbers", NAMED.join(", ")))
}

/// A nested list of numbers: its values row-major and its shape. Every row must have the same
/// length.
pub fn literal(expr: &Expr) -> Result<(Vec<f64>, Vec<usize>), Diagnostic> {
    match &expr.kind {
        ExprKind::List(items) => {
            let mut values = Vec::new();
            let mut inner: Option<Vec<usize>> = None;
            for item in items {
                let (v, s) = literal(item)?;
                match &inner {
                    Some(first) if *first != s => {
                        return Err(Diagnostic::new(
                            format!(
                                "ragged list: this element has shape {s:?}, the first has {first:?}"
                            ),
                            item.span,
                        )
                        .label("every row must have the same length"));
                    }
                    _ => inner = Some(s),
                }
                values.extend(v);
            }
            let mut shape = vec![items.len()];
            shape.extend(inner.unwrap_or_default());
            Ok((values, shape))
        }
        _ => {
            let v = number(expr, "a list element")?;
            Ok((vec![v], Vec::new()))
        }
    }
}
