//! Located errors and their rendering (`file:line:col`, the source line, a caret and what was
//! expected), via `codespan-reporting`.

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use std::borrow::Cow;
use std::ops::Range;

use codespan_reporting::files::{self, Files};
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

/// The most diagnostics shown with the same headline, and in all: a mistake repeated on
/// thousands of lines is reported a few times and counted, as a reader can act on.
const SHOWN_PER_MESSAGE: usize = 3;
const SHOWN_IN_ALL: usize = 50;

/// Source lines longer than this many characters are shown as a window around the spans.
const EXCERPT_CHARS: usize = 120;

/// Renders diagnostics as rustc-style text: `error: ...` then `┌─ file:line:col` and the
/// source lines with carets. At most [`SHOWN_PER_MESSAGE`] with one headline and
/// [`SHOWN_IN_ALL`] in all are shown, followed by a count of the rest; a long source line is
/// cut to the [`EXCERPT_CHARS`] around its spans.
pub fn render(diagnostics: &[Diagnostic], file_name: &str, source: &str) -> String {
    let config = Config::default();
    let mut out = String::new();
    let source_lines: Vec<usize> = files::line_starts(source).collect();
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let (mut shown, mut hidden) = (0, 0);
    for d in diagnostics {
        let count = seen.entry(d.message.as_str()).or_default();
        *count += 1;
        if *count > SHOWN_PER_MESSAGE || shown == SHOWN_IN_ALL {
            hidden += 1;
            continue;
        }
        shown += 1;
        let spans: Vec<Span> = std::iter::once(d.span)
            .chain(d.secondary.iter().map(|(s, _)| *s))
            .collect();
        let excerpt = Excerpt::new(file_name, (source, &source_lines), &spans);
        let mut labels = vec![Label::primary((), excerpt.shown(d.span)).with_message(&d.label)];
        labels.extend(
            d.secondary
                .iter()
                .map(|(s, l)| Label::secondary((), excerpt.shown(*s)).with_message(l)),
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
        match term::emit_into_string(&config, &excerpt, &report) {
            Ok(text) => out.push_str(&text),
            Err(_) => out.push_str(&format!(
                "{}: {}\n  at {file_name} byte {}\n",
                if d.warning { "warning" } else { "error" },
                d.message,
                d.span.start
            )),
        }
    }
    if hidden > 0 {
        out.push_str(&format!(
            "note: {hidden} more diagnostic{} not shown (at most {SHOWN_PER_MESSAGE} with the same message and {SHOWN_IN_ALL} in all)\n\n",
            if hidden == 1 { " is" } else { "s are" }
        ));
    }
    out
}

/// A source as one diagnostic shows it: every line longer than [`EXCERPT_CHARS`] that holds
/// one of its spans is cut to a window around the first such span, marked `…` where cut.
/// Line numbers and columns stay those of the real source.
struct Excerpt<'s> {
    name: &'s str,
    source: &'s str,
    text: Cow<'s, str>,
    line_starts: Cow<'s, [usize]>,
    cuts: Vec<Cut>,
}

/// One cut line: the real bytes `line` of which `window` is shown from `shown_start`.
struct Cut {
    line: Range<usize>,
    window: Range<usize>,
    shown_start: usize,
    prefix: usize,
}

impl<'s> Excerpt<'s> {
    /// The excerpt of `source`, whose line starts are `source_lines`, for a diagnostic at
    /// `spans`: the source itself, borrowed, unless a line must be cut.
    fn new(
        name: &'s str,
        (source, source_lines): (&'s str, &'s [usize]),
        spans: &[Span],
    ) -> Excerpt<'s> {
        let mut windows: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        for span in spans {
            let at = floor_boundary(source, span.start.min(source.len()));
            let start = source[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = source[at..].find('\n').map_or(source.len(), |i| at + i);
            let line = start..end;
            if source[line.clone()].chars().count() <= EXCERPT_CHARS
                || windows.iter().any(|(l, _)| *l == line)
            {
                continue;
            }
            let before = source[start..at]
                .char_indices()
                .rev()
                .nth(EXCERPT_CHARS / 3 - 1);
            let from = before.map_or(start, |(i, _)| start + i);
            let to = source[from..end]
                .char_indices()
                .nth(EXCERPT_CHARS)
                .map_or(end, |(i, _)| from + i);
            windows.push((line, from..to));
        }
        windows.sort_by_key(|(line, _)| line.start);
        if windows.is_empty() {
            return Excerpt {
                name,
                source,
                text: Cow::Borrowed(source),
                line_starts: Cow::Borrowed(source_lines),
                cuts: Vec::new(),
            };
        }
        let (mut text, mut cuts, mut copied) = (String::new(), Vec::new(), 0);
        for (line, window) in windows {
            text.push_str(&source[copied..line.start]);
            let prefix = if window.start > line.start {
                "… "
            } else {
                ""
            };
            let suffix = if window.end < line.end { " …" } else { "" };
            let shown_start = text.len();
            text.push_str(prefix);
            text.push_str(&source[window.clone()]);
            text.push_str(suffix);
            copied = line.end;
            cuts.push(Cut {
                line,
                window,
                shown_start,
                prefix: prefix.len(),
            });
        }
        text.push_str(&source[copied..]);
        let line_starts = files::line_starts(&text).collect();
        Excerpt {
            name,
            source,
            text: Cow::Owned(text),
            line_starts: Cow::Owned(line_starts),
            cuts,
        }
    }

    /// Where the real `span` is in the shown text, clamped to a cut line's window.
    fn shown(&self, span: Span) -> Range<usize> {
        let end = floor_boundary(self.source, span.end.min(self.source.len()));
        let start = floor_boundary(self.source, span.start.min(end));
        let start = self.shown_byte(start);
        start..self.shown_byte(end).max(start)
    }

    fn shown_byte(&self, real: usize) -> usize {
        let mut shift: isize = 0;
        for cut in &self.cuts {
            if real < cut.line.start {
                break;
            }
            if real <= cut.line.end {
                let inside = real.clamp(cut.window.start, cut.window.end);
                return cut.shown_start + cut.prefix + (inside - cut.window.start);
            }
            let shown_len = self.shown_line_end(cut) - cut.shown_start;
            shift += shown_len as isize - cut.line.len() as isize;
        }
        (real as isize + shift) as usize
    }

    fn shown_line_end(&self, cut: &Cut) -> usize {
        self.text[cut.shown_start..]
            .find('\n')
            .map_or(self.text.len(), |i| cut.shown_start + i)
    }
}

/// The largest character boundary of `source` at or before `i`.
fn floor_boundary(source: &str, i: usize) -> usize {
    (0..=i)
        .rev()
        .find(|&i| source.is_char_boundary(i))
        .unwrap_or(0)
}

impl<'a> Files<'a> for Excerpt<'_> {
    type FileId = ();
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, (): ()) -> Result<&'a str, files::Error> {
        Ok(self.name)
    }

    fn source(&'a self, (): ()) -> Result<&'a str, files::Error> {
        Ok(&self.text)
    }

    fn line_index(&'a self, (): (), byte_index: usize) -> Result<usize, files::Error> {
        Ok(self
            .line_starts
            .binary_search(&byte_index)
            .unwrap_or_else(|next| next - 1))
    }

    fn line_range(&'a self, (): (), line_index: usize) -> Result<Range<usize>, files::Error> {
        let start = *self
            .line_starts
            .get(line_index)
            .ok_or(files::Error::LineTooLarge {
                given: line_index,
                max: self.line_starts.len() - 1,
            })?;
        let end = self
            .line_starts
            .get(line_index + 1)
            .copied()
            .unwrap_or(self.text.len());
        Ok(start..end)
    }

    /// The column in the real source, also on a cut line.
    fn column_number(
        &'a self,
        (): (),
        line_index: usize,
        byte_index: usize,
    ) -> Result<usize, files::Error> {
        let range = self.line_range((), line_index)?;
        let Some(cut) = self.cuts.iter().find(|c| c.shown_start == range.start) else {
            return Ok(files::column_index(&self.text, range, byte_index) + 1);
        };
        let offset = byte_index.saturating_sub(cut.shown_start + cut.prefix);
        let real = floor_boundary(self.source, (cut.window.start + offset).min(cut.window.end));
        Ok(files::column_index(self.source, cut.line.clone(), real) + 1)
    }
}
