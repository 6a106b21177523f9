//! `nabla graph FILE`: the forward graph, or the graph with its gradient nodes, as text, dot or
//! JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use nabla_compiler::egraph::{self, Limits};
use nabla_compiler::ir::{Graph, NodeId, text};

use super::{Failure, Outcome, load, print_json};

#[derive(Clone, Copy, ValueEnum)]
enum Stage {
    /// The model as written, lowered to primitives.
    Forward,
    /// The forward graph plus the gradient of the loss for every parameter, simplified.
    Grad,
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
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Bind every symbolic dimension (the batch) to this size before printing.
    #[arg(long)]
    batch: Option<usize>,
    /// Print the gradient graph as autodiff emits it, without e-graph simplification.
    #[arg(long)]
    no_simplify: bool,
}

pub fn run(args: Args) -> Outcome {
    let mut model = load(&args.file)?.model;
    if let Some(b) = args.batch {
        model
            .bind(&|_| Some(b))
            .map_err(|e| Failure::Message(e.0))?;
    }
    let (graph, roots, note): (Graph, Vec<NodeId>, Option<String>) = match args.stage {
        Stage::Forward => (model.graph.clone(), vec![model.loss], None),
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
    match args.format {
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
