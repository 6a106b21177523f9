//! Human- and tool-readable forms of a graph: one line per node as text, Graphviz dot, and JSON.
//!
//! The text form is what `nabla graph` prints and what filetests snapshot:
//! `%3 = matmul %0, %1 : [B, 512]  # h`.

use std::fmt::Write;

use serde_json::json;

use super::{Graph, NodeId, Op};

/// The graph restricted to `roots`' ancestors, one node per line, operands before users.
pub fn to_text(graph: &Graph, roots: &[NodeId]) -> String {
    to_text_nodes(graph, &graph.ancestors(roots))
}

/// The given nodes, one per line, in the order given.
pub fn to_text_nodes(graph: &Graph, nodes: &[NodeId]) -> String {
    let mut out = String::new();
    for &id in nodes {
        let node = graph.get(id);
        let operands: Vec<String> = graph
            .operands(id)
            .iter()
            .map(|o| format!("%{}", o.index()))
            .collect();
        let mut line = format!("%{} = {}", id.index(), node.op);
        if !operands.is_empty() {
            let _ = write!(line, " {}", operands.join(", "));
        }
        let _ = write!(line, " : {}", node.shape);
        match (&node.label, &node.builtin) {
            (Some(label), Some(builtin)) => {
                let _ = write!(line, "  # {label} = {builtin}(...)");
            }
            (Some(label), None) => {
                let _ = write!(line, "  # {label}");
            }
            (None, Some(builtin)) => {
                let _ = write!(line, "  # {builtin}(...)");
            }
            (None, None) => {}
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Graphviz source: a node per op labelled with op and shape, edges from operands to users.
pub fn to_dot(graph: &Graph, roots: &[NodeId]) -> String {
    let mut out = String::from(
        "digraph nabla {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for id in graph.ancestors(roots) {
        let node = graph.get(id);
        let mut label = format!("{}\\n{}", node.op, node.shape);
        if let Some(name) = &node.label {
            label = format!("{name}\\n{label}");
        }
        let style = match node.op {
            Op::Param { .. } => ", style=filled, fillcolor=\"#ffe0b0\"",
            Op::Input { .. } => ", style=filled, fillcolor=\"#c8e0ff\"",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\"{}];",
            id.index(),
            escape(&label),
            style
        );
        for (i, operand) in graph.operands(id).iter().enumerate() {
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{i}\"];",
                operand.index(),
                id.index()
            );
        }
    }
    out.push_str("}\n");
    out
}

/// A JSON object `{"nodes": [{"id", "op", "shape", "operands", "label"}]}`.
pub fn to_json(graph: &Graph, roots: &[NodeId]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = graph
        .ancestors(roots)
        .into_iter()
        .map(|id| {
            let node = graph.get(id);
            json!({
                "id": id.index(),
                "op": node.op.to_string(),
                "shape": node.shape.0.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                "operands": graph.operands(id).iter().map(|o| o.index()).collect::<Vec<_>>(),
                "label": node.label,
            })
        })
        .collect();
    json!({ "nodes": nodes })
}

/// Escapes a string for a double-quoted dot label (keeping `\n` line breaks).
fn escape(s: &str) -> String {
    s.replace('"', "\\\"")
}
