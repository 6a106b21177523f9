//! Checking a call's arguments against what the callee accepts, with errors that list what was
//! expected. Shared by built-in functions, initialisers and `train` settings.

use crate::ast::{Arg, Expr, Ident, Span};
use crate::diagnostic::Diagnostic;

/// A call's arguments, split into positional and named.
pub struct Args<'a> {
    /// The callee's name (for messages).
    pub callee: &'a str,
    /// The whole call.
    pub span: Span,
    /// Positional arguments in order.
    pub positional: Vec<&'a Expr>,
    /// Named arguments in order.
    pub named: Vec<(&'a Ident, &'a Expr)>,
}

impl<'a> Args<'a> {
    /// Splits `args` and checks counts and names: between `min` and `max` positional arguments,
    /// named ones only from `names` (a name may also fill a positional slot, as in Python).
    pub fn new(
        callee: &'a str,
        span: Span,
        args: &'a [Arg],
        min: usize,
        max: usize,
        names: &[&str],
    ) -> Result<Args<'a>, Diagnostic> {
        let mut positional = Vec::new();
        let mut named: Vec<(&Ident, &Expr)> = Vec::new();
        for arg in args {
            match &arg.name {
                None if !named.is_empty() => {
                    return Err(Diagnostic::new(
                        "positional argument after a named one",
                        arg.value.span,
                    )
                    .label("move it before the named arguments"));
                }
                None => positional.push(&arg.value),
                Some(name) => {
                    if !names.contains(&name.name.as_str()) {
                        let expected = if names.is_empty() {
                            "it takes no named arguments".to_string()
                        } else {
                            format!("expected one of: {}", names.join(", "))
                        };
                        return Err(Diagnostic::new(
                            format!("`{callee}` has no argument named `{}`", name.name),
                            name.span,
                        )
                        .label(expected)
                        .suggesting(&name.name, names.iter().copied()));
                    }
                    if let Some((first, _)) = named.iter().find(|(n, _)| n.name == name.name) {
                        return Err(Diagnostic::new(
                            format!("argument `{}` given twice", name.name),
                            name.span,
                        )
                        .secondary(first.span, "first given here"));
                    }
                    named.push((name, &arg.value));
                }
            }
        }
        if positional.len() > max || positional.len() + named.len() < min {
            let count = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            let plural = if max == 1 && min == 1 { "" } else { "s" };
            return Err(Diagnostic::new(
                format!(
                    "`{callee}` takes {count} positional argument{plural}, got {}",
                    positional.len()
                ),
                span,
            )
            .label(format!("expected {count} argument{plural}")));
        }
        Ok(Args {
            callee,
            span,
            positional,
            named,
        })
    }

    /// The argument at position `i`, or the one named `name`.
    pub fn get(&self, i: usize, name: &str) -> Option<&'a Expr> {
        self.positional.get(i).copied().or_else(|| self.named(name))
    }

    /// The argument named `name`.
    pub fn named(&self, name: &str) -> Option<&'a Expr> {
        self.named
            .iter()
            .find(|(n, _)| n.name == name)
            .map(|(_, e)| *e)
    }

    /// A required argument.
    pub fn required(&self, i: usize, name: &str) -> Result<&'a Expr, Diagnostic> {
        self.get(i, name).ok_or_else(|| {
            Diagnostic::new(
                format!("`{}` needs the argument `{name}`", self.callee),
                self.span,
            )
            .label(format!("`{name}` is missing"))
        })
    }

    /// A number argument, with a default.
    pub fn number(&self, i: usize, name: &str, default: f64) -> Result<f64, Diagnostic> {
        match self.get(i, name) {
            None => Ok(default),
            Some(e) => number(e, name),
        }
    }

    /// A named true/false argument, with a default.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, Diagnostic> {
        match self.named(name) {
            None => Ok(default),
            Some(e) => match e.as_name() {
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                _ => Err(
                    Diagnostic::new(format!("`{name}` must be `true` or `false`"), e.span)
                        .label("expected `true` or `false`"),
                ),
            },
        }
    }
}

/// A constant number.
pub fn number(e: &Expr, what: &str) -> Result<f64, Diagnostic> {
    e.constant().filter(|v| v.is_finite()).ok_or_else(|| {
        Diagnostic::new(format!("`{what}` must be a constant number"), e.span)
            .label("expected a number")
    })
}

/// A constant whole number in `min..=max`.
pub fn integer(e: &Expr, what: &str, min: u64, max: u64) -> Result<u64, Diagnostic> {
    whole(number(e, what)?, e.span, what, (min, max))
}

/// `v` if it is a whole number in `min..=max`, or an error at `span` naming `what`.
pub fn whole(v: f64, span: Span, what: &str, (min, max): (u64, u64)) -> Result<u64, Diagnostic> {
    if v.fract() != 0.0 || v < min as f64 || v > max as f64 {
        return Err(Diagnostic::new(
            format!("`{what}` must be a whole number from {min} to {max}, got {v}"),
            span,
        )
        .label(format!("expected a whole number from {min} to {max}")));
    }
    Ok(v as u64)
}

/// A string literal.
pub fn string<'e>(e: &'e Expr, what: &str) -> Result<&'e str, Diagnostic> {
    match &e.kind {
        crate::ast::ExprKind::Str(s) => Ok(s),
        _ => Err(
            Diagnostic::new(format!("`{what}` must be a string"), e.span)
                .label("expected a string like \"data/file.csv\""),
        ),
    }
}
