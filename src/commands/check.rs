//! `nabla check FILE`: a torchsummary-style summary of a model.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_compiler::model::{Role, ValueKind};
use serde_json::json;

use super::{Outcome, load, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    let compiled = load(&args.file)?;
    let model = &compiled.model;
    let g = &model.graph;
    let kind = |k: ValueKind| match k {
        ValueKind::Real => "real".to_string(),
        ValueKind::Class { classes: Some(c) } => format!("class ({c} classes)"),
        ValueKind::Class { classes: None } => "class".to_string(),
    };
    if args.json {
        print_json(&json!({
            "model": model.name,
            "inputs": model.inputs.iter().map(|i| json!({
                "name": i.name, "role": if i.role == Role::Target { "target" } else { "input" },
                "shape": g.shape(i.node).to_string(), "kind": kind(i.kind),
            })).collect::<Vec<_>>(),
            "bindings": model.bindings.iter().map(|b| json!({"name": b.name, "shape": g.shape(b.node).to_string()})).collect::<Vec<_>>(),
            "params": model.params.iter().map(|p| json!({
                "name": p.name, "shape": g.shape(p.node).to_string(),
                "count": g.shape(p.node).numel(), "init": p.init_name,
            })).collect::<Vec<_>>(),
            "total_params": model.param_count(),
            "train": compiled.trains.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<[String; 4]> = Vec::new();
    for i in &model.inputs {
        let role = if i.role == Role::Target {
            "target"
        } else {
            "input"
        };
        rows.push([
            i.name.clone(),
            role.into(),
            g.shape(i.node).to_string(),
            kind(i.kind),
        ]);
    }
    for b in &model.bindings {
        rows.push([
            b.name.clone(),
            "binding".into(),
            g.shape(b.node).to_string(),
            String::new(),
        ]);
    }
    for p in &model.params {
        let count = g.shape(p.node).numel().unwrap_or(0);
        rows.push([
            p.name.clone(),
            "param".into(),
            g.shape(p.node).to_string(),
            format!("{} params, {}", group(count), p.init_name),
        ]);
    }
    out!("model {}", model.name);
    print_table(&["name", "kind", "shape", "notes"], &rows);
    out!("total params: {}", group(model.param_count()));
    for t in &compiled.trains {
        out!(
            "train {}: optimizer {} (lr {})",
            t.name,
            t.optimizer.kind,
            t.optimizer.lr
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints rows under a header with columns padded to their widest cell.
fn print_table(header: &[&str; 4], rows: &[[String; 4]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out!("  {}", padded.join("  ").trim_end());
    };
    line(*header);
    line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
}

/// `535818` as `535,818`.
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
