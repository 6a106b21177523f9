//! `nabla check FILE`: a torchsummary-style summary of a model.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_compiler::model::{Role, ValueKind};
use nabla_compiler::programs::ModelPrograms;
use nabla_runtime::Elem;
use serde_json::json;

use super::{
    Failure, Outcome, bytes, first_train, group, load_file, memory_diagnostic, print_json,
};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    let loaded = load_file(&args.file)?;
    let compiled = &loaded.compiled;
    let model = &compiled.model;
    let g = &model.graph;
    let (optimizer, batch) = first_train(compiled);
    let memory = ModelPrograms::new(model.clone(), optimizer, Elem::F32)
        .memory(batch)
        .map_err(Failure::Message)?;
    let what = format!("training at batch {batch}");
    if let Some(warning) = memory_diagnostic(&loaded, &memory, &what, true) {
        eprint!("{}", loaded.render(&[warning]));
    }
    let shape = |id| {
        json!(
            g.shape(id)
                .dims()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        )
    };
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
                "shape": shape(i.node), "kind": kind(i.kind),
            })).collect::<Vec<_>>(),
            "bindings": model.bindings.iter().map(|b| json!({"name": b.name, "shape": shape(b.node)})).collect::<Vec<_>>(),
            "dropouts": model.dropouts.iter().map(|d| json!({"name": d.name, "shape": shape(d.node), "p": d.p})).collect::<Vec<_>>(),
            "states": model.states.iter().map(|st| json!({"name": st.name, "shape": shape(st.node), "init": st.init})).collect::<Vec<_>>(),
            "params": model.params.iter().map(|p| json!({
                "name": p.name, "shape": shape(p.node),
                "count": g.shape(p.node).numel(), "init": p.init_name,
            })).collect::<Vec<_>>(),
            "total_params": model.param_count(),
            "memory": {"batch": batch, "params": memory.params, "optimizer_state": memory.state, "step": memory.step, "total": memory.total()},
            "train": compiled.trains.iter().map(|t| json!({
                "name": t.name, "optimizer": t.optimizer.to_string(), "schedule": t.schedule.to_string(),
                "clip_grad_norm": t.optimizer.clip_grad_norm,
            })).collect::<Vec<_>>(),
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
    for st in &model.states {
        rows.push([
            st.name.clone(),
            "state".into(),
            g.shape(st.node).to_string(),
            format!(
                "starts at {}, updated by every training step, saved with the parameters",
                st.init
            ),
        ]);
    }
    for d in &model.dropouts {
        rows.push([
            d.name.clone(),
            "dropout".into(),
            g.shape(d.node).to_string(),
            format!("p = {}, a fresh mask every training step", d.p),
        ]);
    }
    for p in &model.params {
        let count = g.shape(p.node).numel().unwrap_or(0);
        rows.push([
            p.name.clone(),
            "param".into(),
            g.shape(p.node).to_string(),
            format!("{}, {}", super::count(count, "param"), p.init_name),
        ]);
    }
    out!("model {}", model.name);
    print_table(&["name", "kind", "shape", "notes"], &rows);
    out!("total params: {}", group(model.param_count()));
    out!(
        "memory at batch {batch}: {} (parameters {}, optimizer state {}, step buffers {})",
        bytes(memory.total()),
        bytes(memory.params),
        bytes(memory.state),
        bytes(memory.step)
    );
    for t in &compiled.trains {
        let schedule = super::schedule_and_clipping(&t.schedule, &t.optimizer);
        out!("train {}: {}{schedule}", t.name, t.optimizer);
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
