//! Tokens to syntax tree, by recursive descent. Never panics and never recurses without bound:
//! nesting deeper than [`MAX_DEPTH`] is an error. After an error inside a model or train block
//! the parser skips to the next line, so one run reports every syntax error it can.

use crate::ast::*;
use crate::diagnostic::Diagnostic;
use crate::lexer::{Tok, Token};

/// How deeply expressions may nest (parentheses, calls, lists, unary minus, powers, and
/// one level per precedence of an operator chain, however long).
pub const MAX_DEPTH: usize = 256;

/// Parses a whole file.
pub fn parse_file(tokens: &[Token]) -> (File, Vec<Diagnostic>) {
    let mut p = Parser {
        tokens,
        pos: 0,
        errors: Vec::new(),
        depth: 0,
    };
    let mut file = File::default();
    loop {
        p.skip_newlines();
        let result = match p.peek() {
            Tok::Eof => break,
            Tok::Ident(k) if k == "fn" => p.function().map(|f| file.functions.push(f)),
            Tok::Ident(k) if k == "model" => p.model().map(|m| file.models.push(m)),
            Tok::Ident(k) if k == "train" => p.train().map(|t| file.trains.push(t)),
            _ => Err(p.expected("`model`, `fn` or `train`")),
        };
        if let Err(e) = result {
            p.errors.push(e);
            p.skip_to_top_level();
        }
    }
    (file, p.errors)
}

/// Parses a lone expression (for `nabla diff`).
pub fn parse_expr(tokens: &[Token]) -> Result<Expr, Diagnostic> {
    let mut p = Parser {
        tokens,
        pos: 0,
        errors: Vec::new(),
        depth: 0,
    };
    p.skip_newlines();
    let e = p.expr()?;
    p.skip_newlines();
    if *p.peek() != Tok::Eof {
        return Err(p.expected("an operator or the end of the expression"));
    }
    Ok(e)
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    errors: Vec<Diagnostic>,
    depth: usize,
}

type PResult<T> = Result<T, Diagnostic>;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn span(&self) -> Span {
        self.tokens[self.pos].span
    }

    fn bump(&mut self) -> &Token {
        let t = &self.tokens[self.pos];
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn at(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn eat(&mut self, p: &str) -> bool {
        let found = self.at(p);
        if found {
            self.bump();
        }
        found
    }

    fn describe(tok: &Tok) -> String {
        match tok {
            Tok::Ident(n) => format!("`{n}`"),
            Tok::Number(v) => format!("the number `{v}`"),
            Tok::Str(s) => format!("the string \"{s}\""),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Newline => "the end of the line".into(),
            Tok::Eof => "the end of the file".into(),
        }
    }

    fn expected(&self, what: &str) -> Diagnostic {
        Diagnostic::new(
            format!("expected {what}, found {}", Self::describe(self.peek())),
            self.span(),
        )
        .label(format!("expected {what}"))
    }

    fn expect(&mut self, p: &str) -> PResult<Span> {
        if self.at(p) {
            Ok(self.bump().span)
        } else {
            Err(self.expected(&format!("`{p}`")))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match self.peek().clone() {
            Tok::Ident(name) => {
                let span = self.bump().span;
                Ok(Ident { name, span })
            }
            _ => Err(self.expected(what)),
        }
    }

    fn skip_newlines(&mut self) {
        while matches!(self.peek(), Tok::Newline) || self.at(";") {
            self.bump();
        }
    }

    /// Skips the rest of a line (error recovery inside a block).
    fn skip_line(&mut self) {
        while !matches!(self.peek(), Tok::Newline | Tok::Eof) && !self.at("}") {
            self.bump();
        }
    }

    /// Skips to the next top-level keyword (error recovery between blocks).
    fn skip_to_top_level(&mut self) {
        loop {
            self.bump();
            match self.peek() {
                Tok::Eof => return,
                Tok::Ident(k)
                    if ["model", "fn", "train"].contains(&k.as_str()) && self.line_start() =>
                {
                    return;
                }
                _ => {}
            }
        }
    }

    fn line_start(&self) -> bool {
        self.pos == 0
            || matches!(
                self.tokens[self.pos - 1].tok,
                Tok::Newline | Tok::Punct("}")
            )
    }

    /// The end of an item: a newline, `;`, or the block's `}` (left for the caller).
    fn end_item(&mut self) -> PResult<()> {
        match self.peek() {
            Tok::Newline | Tok::Eof => Ok(()),
            Tok::Punct(";") | Tok::Punct("}") => Ok(()),
            _ => Err(self.expected("an operator or the end of the line")),
        }
    }

    /// Parses `{ item* }` with per-item recovery.
    fn block<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> PResult<T>,
    ) -> PResult<(Vec<T>, Span)> {
        let open = self.expect("{")?;
        let mut items = Vec::new();
        loop {
            self.skip_newlines();
            if self.at("}") {
                let close = self.bump().span;
                return Ok((items, open.to(close)));
            }
            if *self.peek() == Tok::Eof {
                return Err(Diagnostic::new("unclosed `{`", open)
                    .label("this block is never closed")
                    .secondary(self.span(), "expected `}` before the end of the file"));
            }
            match item(self).and_then(|i| self.end_item().map(|_| i)) {
                Ok(i) => items.push(i),
                Err(e) => {
                    self.errors.push(e);
                    self.skip_line();
                }
            }
        }
    }

    fn function(&mut self) -> PResult<Function> {
        self.bump();
        let name = self.ident("a function name")?;
        self.expect("(")?;
        let mut params = Vec::new();
        while !self.at(")") {
            params.push(self.ident("a parameter name")?);
            if !self.eat(",") {
                break;
            }
        }
        self.expect(")")?;
        if self.eat("=") {
            let body = self.expr()?;
            return Ok(Function {
                name,
                params,
                bindings: Vec::new(),
                body,
            });
        }
        let (mut lines, span) = self.block(|p| {
            let first = p.expr()?;
            if p.eat("=") {
                let Some(n) = first.as_name() else {
                    return Err(Diagnostic::new("only a name can be bound", first.span)
                        .label("expected a name before `=`"));
                };
                let binding = Ident {
                    name: n.to_string(),
                    span: first.span,
                };
                Ok((Some(binding), p.expr()?))
            } else {
                Ok((None, first))
            }
        })?;
        let Some((None, body)) = lines.pop() else {
            return Err(
                Diagnostic::new(format!("function `{}` has no result", name.name), span)
                    .label("expected an expression as the last line of the body"),
            );
        };
        let mut bindings = Vec::new();
        for (binding, value) in lines {
            match binding {
                Some(b) => bindings.push((b, value)),
                None => {
                    return Err(Diagnostic::new(
                        "only the last line of a function body may be a bare expression",
                        value.span,
                    )
                    .label("bind this to a name, or move it last"));
                }
            }
        }
        Ok(Function {
            name,
            params,
            bindings,
            body,
        })
    }

    fn model(&mut self) -> PResult<ModelDef> {
        self.bump();
        let name = self.ident("a model name")?;
        let (items, _) = self.block(Self::item)?;
        Ok(ModelDef { name, items })
    }

    fn item(&mut self) -> PResult<Item> {
        let keyword = match self.peek() {
            Tok::Ident(k) if matches!(k.as_str(), "input" | "target" | "param") => Some(k.clone()),
            _ => None,
        };
        let Some(keyword) =
            keyword.filter(|_| !matches!(self.tokens[self.pos + 1].tok, Tok::Punct("=")))
        else {
            let name = self.ident("`input`, `target`, `param` or a binding `name = ...`")?;
            self.expect("=")?;
            return Ok(Item::Binding {
                name,
                value: self.expr()?,
            });
        };
        self.bump();
        let name = self.ident(&format!("the {keyword}'s name"))?;
        let dims = self.dims()?;
        if keyword == "param" {
            let init = if self.eat("=") {
                Some(self.expr()?)
            } else {
                None
            };
            return Ok(Item::Param { name, dims, init });
        }
        let annotation = if self.eat(":") {
            let kind = self.ident("`class` or `index`")?;
            match kind.name.as_str() {
                "class" => Annotation::Class,
                "index" => Annotation::Index,
                _ => {
                    return Err(Diagnostic::new(
                        format!("unknown annotation `{}`", kind.name),
                        kind.span,
                    )
                    .label("expected `class` or `index`"));
                }
            }
        } else {
            Annotation::Real
        };
        Ok(Item::Data {
            target: keyword == "target",
            name,
            dims,
            annotation,
        })
    }

    fn dims(&mut self) -> PResult<Vec<Expr>> {
        self.expect("[")?;
        let mut dims = Vec::new();
        while !self.at("]") {
            dims.push(self.expr()?);
            if !self.eat(",") {
                break;
            }
        }
        self.expect("]")?;
        Ok(dims)
    }

    fn train(&mut self) -> PResult<TrainDef> {
        let start = self.bump().span;
        let name = self.ident("a name for the training configuration")?;
        let (settings, span) = self.block(|p| {
            let key = p.ident("a setting name (`data`, `optimizer`, `epochs`, ...)")?;
            p.expect("=")?;
            Ok((key, p.expr()?))
        })?;
        Ok(TrainDef {
            name,
            settings,
            span: start.to(span),
        })
    }

    // ---- Expressions ----

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Diagnostic::new(
                format!("expression nested too deeply (more than {MAX_DEPTH} levels)"),
                self.span(),
            )
            .label("nesting limit reached here")
            .note("split the expression into several bindings"));
        }
        Ok(())
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let result = self.range();
        self.depth -= 1;
        result
    }

    fn range(&mut self) -> PResult<Expr> {
        let lo = self.binary(0)?;
        if self.eat("..") {
            let hi = self.binary(0)?;
            let span = lo.span.to(hi.span);
            return Ok(Expr {
                kind: ExprKind::Range(Box::new(lo), Box::new(hi)),
                span,
            });
        }
        Ok(lo)
    }

    /// Left-associative levels: 0 is `+ -`, 1 is `* / @`. A chain of one level's operators is
    /// one flat [`ExprKind::Chain`], so it adds no nesting however long it is.
    fn binary(&mut self, level: usize) -> PResult<Expr> {
        let operand = |p: &mut Self| if level == 0 { p.binary(1) } else { p.unary() };
        let first = operand(self)?;
        let mut rest = Vec::new();
        loop {
            let op = match (level, self.peek()) {
                (0, Tok::Punct("+")) => BinOp::Add,
                (0, Tok::Punct("-")) => BinOp::Sub,
                (1, Tok::Punct("*")) => BinOp::Mul,
                (1, Tok::Punct("/")) => BinOp::Div,
                (1, Tok::Punct("@")) => BinOp::MatMul,
                _ => break,
            };
            self.bump();
            rest.push((op, operand(self)?));
        }
        let Some((_, last)) = rest.last() else {
            return Ok(first);
        };
        let span = first.span.to(last.span);
        Ok(Expr {
            kind: ExprKind::Chain(Box::new(first), rest),
            span,
        })
    }

    /// `-x` binds looser than `^`: `-x^2` is `-(x^2)`.
    fn unary(&mut self) -> PResult<Expr> {
        if self.at("-") {
            let start = self.bump().span;
            self.enter()?;
            let operand = self.unary()?;
            self.depth -= 1;
            let span = start.to(operand.span);
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(operand)),
                span,
            });
        }
        self.power()
    }

    /// `a ^ b` is right-associative and its exponent may be negative: `2^-1`.
    fn power(&mut self) -> PResult<Expr> {
        let base = self.atom()?;
        if self.eat("^") {
            self.enter()?;
            let exponent = self.unary()?;
            self.depth -= 1;
            let span = base.span.to(exponent.span);
            return Ok(Expr {
                kind: ExprKind::Binary(BinOp::Pow, Box::new(base), Box::new(exponent)),
                span,
            });
        }
        Ok(base)
    }

    fn atom(&mut self) -> PResult<Expr> {
        let span = self.span();
        match self.peek().clone() {
            Tok::Number(v) => {
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Number(v),
                    span,
                })
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Str(s),
                    span,
                })
            }
            Tok::Ident(name) => {
                self.bump();
                if !self.at("(") {
                    return Ok(Expr {
                        kind: ExprKind::Name(name),
                        span,
                    });
                }
                self.bump();
                let args = self.args()?;
                let close = self.expect(")")?;
                Ok(Expr {
                    kind: ExprKind::Call(Ident { name, span }, args),
                    span: span.to(close),
                })
            }
            Tok::Punct("(") => {
                self.bump();
                let inner = self.expr()?;
                let close = self.expect(")")?;
                Ok(Expr {
                    kind: inner.kind,
                    span: span.to(close),
                })
            }
            Tok::Punct("[") => {
                self.bump();
                let mut items = Vec::new();
                while !self.at("]") {
                    items.push(self.expr()?);
                    if !self.eat(",") {
                        break;
                    }
                }
                let close = self.expect("]")?;
                Ok(Expr {
                    kind: ExprKind::List(items),
                    span: span.to(close),
                })
            }
            _ => Err(self.expected("an expression")),
        }
    }

    fn args(&mut self) -> PResult<Vec<Arg>> {
        let mut args = Vec::new();
        while !self.at(")") {
            let named = matches!(self.peek(), Tok::Ident(_))
                && matches!(self.tokens[self.pos + 1].tok, Tok::Punct("="));
            let name = if named {
                let n = self.ident("an argument name")?;
                self.bump();
                Some(n)
            } else {
                None
            };
            args.push(Arg {
                name,
                value: self.expr()?,
            });
            if !self.eat(",") {
                break;
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::lex;

    fn expr(src: &str) -> Expr {
        parse_expr(&lex(src).unwrap()).unwrap()
    }

    #[test]
    fn precedence_and_associativity() {
        let e = expr("-x^2 + 3*x*y - 1");
        let ExprKind::Chain(first, rest) = e.kind else {
            panic!("{e:?}")
        };
        assert!(matches!(first.kind, ExprKind::Neg(_)));
        assert_eq!(
            rest.iter().map(|(op, _)| *op).collect::<Vec<_>>(),
            [BinOp::Add, BinOp::Sub]
        );
        let ExprKind::Chain(_, product) = &rest[0].1.kind else {
            panic!()
        };
        assert_eq!(product.len(), 2);
        assert_eq!(expr("2^3^2").constant(), Some(512.0));
        assert_eq!(expr("10 - 4 - 3").constant(), Some(3.0));
        assert_eq!(expr("12 / 2 / 3").constant(), Some(2.0));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(
            parse_expr(&lex(&src).unwrap())
                .unwrap_err()
                .message
                .contains("nested too deeply")
        );
        let chain = vec!["x"; 100_000].join(" + ");
        let ExprKind::Chain(_, rest) = parse_expr(&lex(&chain).unwrap()).unwrap().kind else {
            panic!("a sum is a chain")
        };
        assert_eq!(rest.len(), 99_999);
    }

    #[test]
    fn recovers_to_report_several_errors() {
        let src = "model m {\n  a = 1 +\n  b = * 2\n  loss = a\n}\n";
        let (file, errors) = parse_file(&lex(src).unwrap());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(file.models.len(), 1);
    }
}
