//! Located errors and their rendering (`file:line:col`, the source line, a caret and what was
//! expected), via `codespan-reporting`.

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Config};

use crate::ast::Span;

/// An error in a `.nn` source.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The headline.
    pub message: String,
    /// Where the error is.
    pub span: Span,
    /// What is wrong at `span` (or what was expected there).
    pub label: String,
    /// Other places that explain the error.
    pub secondary: Vec<(Span, String)>,
    /// Extra explanation after the snippet.
    pub notes: Vec<String>,
    /// A warning rather than an error: reported, but nothing fails.
    pub warning: bool,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn new(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span,
            label: String::new(),
            secondary: Vec::new(),
            notes: Vec::new(),
            warning: false,
        }
    }

    /// Makes it a warning.
    pub fn as_warning(mut self) -> Diagnostic {
        self.warning = true;
        self
    }

    /// Sets the primary label.
    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    /// Adds a secondary label.
    pub fn secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

/// The candidate closest to a misspelt `name`, as rustc suggests one: equal but for case, or
/// within an edit distance of a third of the name's length (at least 1).
pub fn suggest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            let distance = if c.eq_ignore_ascii_case(name) {
                0
            } else {
                strsim::damerau_levenshtein(name, c)
            };
            (distance, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

impl Diagnostic {
    /// Adds `did you mean ...?` when a candidate is close to the misspelt `name`.
    pub fn suggesting<'c>(
        self,
        name: &str,
        candidates: impl IntoIterator<Item = &'c str>,
    ) -> Diagnostic {
        match suggest(name, candidates) {
            Some(close) => self.note(format!("did you mean `{close}`?")),
            None => self,
        }
    }
}

/// Renders diagnostics as rustc-style text: `error: ...` then `┌─ file:line:col` and the
/// source lines with carets.
pub fn render(diagnostics: &[Diagnostic], file_name: &str, source: &str) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = Config::default();
    let clamp = |span: Span| {
        let end = span.end.min(source.len());
        let start = span.start.min(end);
        // Keep spans on character boundaries so the renderer can slice the line.
        let start = (0..=start)
            .rev()
            .find(|&i| source.is_char_boundary(i))
            .unwrap_or(0);
        let end = (end..=source.len())
            .find(|&i| source.is_char_boundary(i))
            .unwrap_or(source.len());
        start..end
    };
    let mut out = String::new();
    for d in diagnostics {
        let mut labels = vec![Label::primary((), clamp(d.span)).with_message(&d.label)];
        labels.extend(
            d.secondary
                .iter()
                .map(|(s, l)| Label::secondary((), clamp(*s)).with_message(l)),
        );
        let report = if d.warning {
            Report::warning()
        } else {
            Report::error()
        };
        let report = report
            .with_message(&d.message)
            .with_labels(labels)
            .with_notes(d.notes.clone());
        match term::emit_into_string(&config, &file, &report) {
            Ok(text) => out.push_str(&text),
            Err(_) => out.push_str(&format!(
                "{}: {}\n  at {file_name} byte {}\n",
                if d.warning { "warning" } else { "error" },
                d.message,
                d.span.start
            )),
        }
    }
    out
}
