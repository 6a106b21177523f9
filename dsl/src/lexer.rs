//! Text to tokens. Newlines are tokens (they end items) except inside `(...)` and `[...]`,
//! where expressions may span lines. Never panics; bad characters become diagnostics.

use crate::ast::Span;
use crate::diagnostic::Diagnostic;

/// A token kind with its payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A name or keyword.
    Ident(String),
    /// A number literal (its text is kept for integer checks and messages).
    Number(f64),
    /// A double-quoted string.
    Str(String),
    /// One of `( ) [ ] { } , = : + - * / ^ @ ; ..`
    Punct(&'static str),
    /// End of a line outside brackets.
    Newline,
    /// End of input.
    Eof,
}

/// A token and where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// Where it is.
    pub span: Span,
}

const PUNCTUATION: [&str; 17] = [
    "..", "(", ")", "[", "]", "{", "}", ",", "=", ":", "+", "-", "*", "/", "^", "@", ";",
];

/// Splits `source` into tokens, ending with [`Tok::Eof`].
pub fn lex(source: &str) -> Result<Vec<Token>, Diagnostic> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'\n' => {
                i += 1;
                if depth == 0 {
                    tokens.push(Token {
                        tok: Tok::Newline,
                        span: Span::new(start, i),
                    });
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                // Layer parameters have dotted names (`h2.w`, `out.2.b`).
                let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
                while i < bytes.len()
                    && (name_char(bytes[i])
                        || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(|&b| name_char(b))))
                {
                    i += 1;
                }
                tokens.push(Token {
                    tok: Tok::Ident(source[start..i].to_string()),
                    span: Span::new(start, i),
                });
            }
            c if c.is_ascii_digit()
                || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i = number_end(bytes, i);
                let text = &source[start..i];
                let value: f64 = text.parse().map_err(|_| {
                    Diagnostic::new(
                        format!("`{text}` is not a valid number"),
                        Span::new(start, i),
                    )
                    .label("expected digits, optionally with `.` and an exponent like `1e-3`")
                })?;
                if !value.is_finite() {
                    return Err(Diagnostic::new(
                        format!("the number `{text}` is out of range"),
                        Span::new(start, i),
                    )
                    .label(format!(
                        "numbers must have a magnitude below {:e}",
                        f64::MAX
                    )));
                }
                tokens.push(Token {
                    tok: Tok::Number(value),
                    span: Span::new(start, i),
                });
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] != b'"' {
                    return Err(Diagnostic::new("unterminated string", Span::new(start, i))
                        .label("expected a closing `\"` on this line"));
                }
                i += 1;
                tokens.push(Token {
                    tok: Tok::Str(source[start + 1..i - 1].to_string()),
                    span: Span::new(start, i),
                });
            }
            _ => {
                let Some(p) = PUNCTUATION.iter().find(|p| source[i..].starts_with(**p)) else {
                    let ch = source[i..].chars().next().unwrap_or('?');
                    return Err(Diagnostic::new(
                        format!("unexpected character `{ch}`"),
                        Span::new(i, i + ch.len_utf8()),
                    )
                    .label("not part of the language"));
                };
                i += p.len();
                match *p {
                    "(" | "[" => depth += 1,
                    ")" | "]" => depth = depth.saturating_sub(1),
                    _ => {}
                }
                tokens.push(Token {
                    tok: Tok::Punct(p),
                    span: Span::new(start, i),
                });
            }
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: Span::new(source.len(), source.len()),
    });
    Ok(tokens)
}

/// The end of a number starting at `i`: digits, one fraction, one exponent. A `..` range
/// operator right after digits is not a fraction.
fn number_end(bytes: &[u8], mut i: usize) -> usize {
    let digits = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
        i += 1;
        digits(&mut i);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            i = j;
            digits(&mut i);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn newlines_count_only_outside_brackets() {
        let toks = kinds("a = f(1,\n 2)\nb");
        assert_eq!(toks.iter().filter(|t| **t == Tok::Newline).count(), 1);
    }

    #[test]
    fn dotted_names_are_one_token() {
        assert_eq!(kinds("h2.w")[0], Tok::Ident("h2.w".into()));
        assert_eq!(kinds("a..b")[1], Tok::Punct(".."));
    }

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(
            kinds("0..2")[..3],
            [Tok::Number(0.0), Tok::Punct(".."), Tok::Number(2.0)]
        );
        assert_eq!(
            kinds("1e-3 .5 2.")[..3],
            [Tok::Number(1e-3), Tok::Number(0.5), Tok::Number(2.0)]
        );
    }

    #[test]
    fn bad_characters_are_located() {
        let err = lex("a = $").unwrap_err();
        assert_eq!(err.span, Span::new(4, 5));
        assert!(lex("\"open").is_err());
    }
}
