//! Scalar graphs printed as readable infix formulas (`2*x + 3*y`), for `nabla diff`.
//!
//! Printing is canonical rather than literal: constant factors are written first, sums are
//! flattened and their terms ordered by the variables they mention, and only the parentheses
//! that precedence needs are written.

use super::{BinaryOp, Graph, NodeId, Op, UnaryOp};

/// Binding strength: sums < products < unary minus < powers < atoms.
const SUM: u8 = 1;
const PRODUCT: u8 = 2;
const PREFIX: u8 = 3;
const POWER: u8 = 4;
const ATOM: u8 = 5;

/// The formula `root` computes.
pub fn to_formula(graph: &Graph, root: NodeId) -> String {
    render(graph, root).0
}

/// The text of a node and how strongly it binds.
fn render(graph: &Graph, id: NodeId) -> (String, u8) {
    let x = graph.operands(id);
    match graph.op(id) {
        Op::Input { name, .. } | Op::Param { name, .. } => (name.clone(), ATOM),
        Op::Const(c) => number(c.get()),
        Op::Binary(BinaryOp::Add | BinaryOp::Sub) => sum(graph, id),
        Op::Binary(BinaryOp::Mul) => product(graph, id),
        Op::Binary(BinaryOp::Div) => {
            let a = wrap(graph, x[0], PRODUCT);
            let b = wrap(graph, x[1], PRODUCT + 1);
            (format!("{a}/{b}"), PRODUCT)
        }
        Op::Binary(BinaryOp::Pow) => {
            let a = wrap(graph, x[0], ATOM);
            let b = wrap(graph, x[1], POWER);
            (format!("{a}^{b}"), POWER)
        }
        Op::Binary(cmp @ (BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Eq)) => {
            let symbol = match cmp {
                BinaryOp::Lt => "<",
                BinaryOp::Gt => ">",
                BinaryOp::Le => "<=",
                _ => "==",
            };
            let a = wrap(graph, x[0], SUM);
            let b = wrap(graph, x[1], SUM);
            (format!("{a} {symbol} {b}"), 0)
        }
        Op::Unary(UnaryOp::Neg) => (format!("-{}", wrap(graph, x[0], POWER)), PREFIX),
        Op::Unary(UnaryOp::Recip) => (format!("1/{}", wrap(graph, x[0], PRODUCT + 1)), PRODUCT),
        Op::Broadcast(_) | Op::Reshape(_) if graph.shape(x[0]).numel() == Some(1) => {
            render(graph, x[0])
        }
        op => {
            let args: Vec<String> = x.iter().map(|&o| render(graph, o).0).collect();
            (format!("{}({})", op.name(), args.join(", ")), ATOM)
        }
    }
}

/// A node's text, parenthesised when it binds less strongly than `needed`.
fn wrap(graph: &Graph, id: NodeId, needed: u8) -> String {
    let (text, strength) = render(graph, id);
    if strength < needed {
        format!("({text})")
    } else {
        text
    }
}

fn number(v: f64) -> (String, u8) {
    let text = if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    };
    let strength = if v < 0.0 { PREFIX } else { ATOM };
    (text, strength)
}

/// A flattened sum: added terms before subtracted ones, each ordered by the variables they
/// mention (constants last), so `1 - sigmoid(x)` rather than `-sigmoid(x) + 1`.
fn sum(graph: &Graph, id: NodeId) -> (String, u8) {
    let mut terms = Vec::new();
    collect_terms(graph, id, true, &mut terms);
    terms.sort_by_key(|&(positive, term)| {
        let vars = variables(graph, term);
        (!positive, vars.is_empty(), vars)
    });
    let mut out = String::new();
    for (i, &(positive, term)) in terms.iter().enumerate() {
        let text = wrap(graph, term, if positive { SUM } else { PRODUCT });
        match (i, positive) {
            (0, true) => out.push_str(&text),
            (0, false) => out.push_str(&format!("-{text}")),
            (_, true) => out.push_str(&format!(" + {text}")),
            (_, false) => out.push_str(&format!(" - {text}")),
        }
    }
    (out, SUM)
}

fn collect_terms(graph: &Graph, id: NodeId, positive: bool, terms: &mut Vec<(bool, NodeId)>) {
    let x = graph.operands(id);
    match graph.op(id) {
        Op::Binary(BinaryOp::Add) => {
            collect_terms(graph, x[0], positive, terms);
            collect_terms(graph, x[1], positive, terms);
        }
        Op::Binary(BinaryOp::Sub) => {
            collect_terms(graph, x[0], positive, terms);
            collect_terms(graph, x[1], !positive, terms);
        }
        _ => terms.push((positive, id)),
    }
}

/// A flattened product with constant factors first.
fn product(graph: &Graph, id: NodeId) -> (String, u8) {
    let mut factors = Vec::new();
    collect_factors(graph, id, &mut factors);
    factors.sort_by_key(|&f| !matches!(graph.op(f), Op::Const(_)));
    let text: Vec<String> = factors.iter().map(|&f| wrap(graph, f, PRODUCT)).collect();
    (text.join("*"), PRODUCT)
}

fn collect_factors(graph: &Graph, id: NodeId, factors: &mut Vec<NodeId>) {
    match graph.op(id) {
        Op::Binary(BinaryOp::Mul) => {
            for &operand in graph.operands(id) {
                collect_factors(graph, operand, factors);
            }
        }
        _ => factors.push(id),
    }
}

/// The sorted names of the inputs and parameters a node depends on.
fn variables(graph: &Graph, id: NodeId) -> Vec<String> {
    let mut names: Vec<String> = graph
        .ancestors(&[id])
        .into_iter()
        .filter_map(|a| match graph.op(a) {
            Op::Input { name, .. } | Op::Param { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Shape;

    #[test]
    fn prints_with_minimal_parentheses() {
        let mut g = Graph::new();
        let x = g.input("x", Shape::scalar()).unwrap();
        let y = g.input("y", Shape::scalar()).unwrap();
        let three = g.constant(3.0);
        let y3 = g.mul(y, three).unwrap();
        let two = g.constant(2.0);
        let x2 = g.mul(two, x).unwrap();
        let s = g.add(y3, x2).unwrap();
        assert_eq!(to_formula(&g, s), "2*x + 3*y");
        let d = g.sub(x, y).unwrap();
        let p = g.binary(BinaryOp::Pow, d, two).unwrap();
        assert_eq!(to_formula(&g, p), "(x - y)^2");
        let n = g.unary(UnaryOp::Neg, p).unwrap();
        let e = g.unary(UnaryOp::Exp, n).unwrap();
        assert_eq!(to_formula(&g, e), "exp(-(x - y)^2)");
    }
}
