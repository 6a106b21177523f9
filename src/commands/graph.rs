//! `nabla graph FILE`: the forward graph, or the graph with its gradient nodes, as text, dot or
//! JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use nabla_compiler::egraph::{self, Limits};
use nabla_compiler::ir::{Graph, NodeId, text};
use nabla_compiler::optim::{Optimizer, OptimizerKind};
use nabla_compiler::pipeline::ModelPrograms;
use nabla_runtime::Elem;

use super::{Failure, Outcome, load, print_json};

#[derive(Clone, Copy, ValueEnum)]
enum Stage {
    /// The model as written, lowered to primitives.
    Forward,
    /// The forward graph plus the gradient of the loss for every parameter, simplified.
    Grad,
    /// The Cranelift IR of every kernel of the compiled train step (at `--batch`, default 1).
    Clif,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One node per line.
    Text,
    /// Graphviz (`dot -Tsvg`).
    Dot,
    /// One JSON object.
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Which graph to print.
    #[arg(long, value_enum, default_value = "forward")]
    stage: Stage,
    /// Output format (`clif` prints text only).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Bind every symbolic dimension (the batch) to this size before printing (1 to
    /// 16,777,216).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 24))]
    batch: Option<usize>,
    /// Print the gradient graph as autodiff emits it, without e-graph simplification.
    #[arg(long)]
    no_simplify: bool,
}

pub fn run(args: Args) -> Outcome {
    if let Stage::Clif = args.stage {
        if let Some(Format::Dot | Format::Json) = args.format {
            return Err(Failure::Message(
                "`--stage clif` prints Cranelift IR as text; it has no `--format dot` or `json`"
                    .into(),
            ));
        }
        return clif(&args);
    }
    let mut model = load(&args.file)?.model;
    if let Some(b) = args.batch {
        model
            .bind(&|_| Some(b))
            .map_err(|e| Failure::Message(e.0))?;
    }
    let (graph, roots, note): (Graph, Vec<NodeId>, Option<String>) = match args.stage {
        Stage::Forward | Stage::Clif => (model.graph.clone(), vec![model.loss], None),
        Stage::Grad => {
            let (graph, loss, grads) = model
                .gradient_graph()
                .map_err(|e| Failure::Message(e.to_string()))?;
            let roots: Vec<NodeId> = std::iter::once(loss).chain(grads).collect();
            if args.no_simplify {
                (graph, roots, None)
            } else {
                let s = egraph::simplify(&graph, &roots, &Limits::default())
                    .map_err(|e| Failure::Message(e.0))?;
                let note = format!(
                    "simplified {} nodes to {} ({})",
                    s.nodes_before,
                    s.graph.ancestors(&s.roots).len(),
                    s.report
                );
                (s.graph, s.roots, Some(note))
            }
        }
    };
    match args.format.unwrap_or(Format::Text) {
        Format::Text => {
            if let Some(note) = note {
                out!("# {note}");
            }
            out!("{}", text::to_text(&graph, &roots).trim_end());
        }
        Format::Dot => out!("{}", text::to_dot(&graph, &roots).trim_end()),
        Format::Json => print_json(&text::to_json(&graph, &roots)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints each kernel of the train step (with the file's first optimizer, else plain SGD).
fn clif(args: &Args) -> Outcome {
    let compiled = load(&args.file)?;
    let optimizer = compiled.trains.first().map_or_else(
        || Optimizer::defaults(OptimizerKind::Sgd),
        |t| t.optimizer.clone(),
    );
    let programs = ModelPrograms::new(compiled.model, optimizer, Elem::F32);
    let kernels = programs
        .train_step_clif(args.batch.unwrap_or(1))
        .map_err(Failure::Message)?;
    for (i, text) in kernels.iter().enumerate() {
        out!("; kernel {i}\n{}", text.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
