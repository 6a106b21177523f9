//! Where a value of the graph comes from in the model's source. The compiler keeps names, not
//! spans, on its nodes (`h1`, `h1.w`, `grad h1`, `grad c.2.w`), since the e-graph and fusion
//! carry names over; the CLI maps a name back to the binding or parameter that the DSL located.

use nabla_dsl::ast::Span;

use super::Loaded;

/// The binding or parameter a name comes from, and where it is written.
pub struct Origin<'a> {
    /// The binding (`h1`) or, for a parameter declared on its own, the parameter (`w`).
    pub name: &'a str,
    /// Where that binding's name or that parameter is written.
    pub span: Span,
}

impl Origin<'_> {
    /// The 1-based line of the span's start.
    pub fn line(&self, loaded: &Loaded) -> usize {
        let start = self.span.start.min(loaded.source.len());
        loaded.source[..start].matches('\n').count() + 1
    }
}

/// The origin of a node's name: a binding (`h1`), a parameter (`h1.w`, declared or created by
/// its layer's call), or a gradient of either (`grad h1.w`). A name is shortened one dotted part
/// at a time until it names a binding or a declared parameter, so that a layer's parameters
/// (`h1.w`, `c.2.w`) belong to the binding that called the layer (`h1`, `c`).
pub fn origin<'a>(loaded: &'a Loaded, label: &str) -> Option<Origin<'a>> {
    let compiled = &loaded.compiled;
    let mut name = label.strip_prefix("grad ").unwrap_or(label);
    let full = name;
    loop {
        if let Some((binding, span)) = compiled.binding_spans.iter().find(|(n, _)| n == name) {
            return Some(Origin {
                name: binding,
                span: *span,
            });
        }
        match name.rfind('.') {
            Some(dot) => name = &name[..dot],
            None => break,
        }
    }
    let (param, span) = compiled
        .model
        .params
        .iter()
        .zip(&compiled.param_spans)
        .find(|(p, _)| p.name == full)?;
    Some(Origin {
        name: &param.name,
        span: *span,
    })
}

/// The source line a node's name comes from (see [`origin`]).
pub fn source_line(loaded: &Loaded, label: &str) -> Option<usize> {
    origin(loaded, label).map(|o| o.line(loaded))
}

/// The source lines of a kernel's names, ascending and once each.
pub fn source_lines(loaded: &Loaded, labels: &[String]) -> Vec<usize> {
    let mut lines: Vec<usize> = labels
        .iter()
        .filter_map(|label| source_line(loaded, label))
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines
}
