//! `nabla graph FILE`: the model at every stage of the pipeline (as written, after autodiff and
//! the optimizer, simplified, fused into kernels, as Cranelift IR) as text, dot or JSON, and
//! `--stats`, what each pass did to the train step.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::ValueEnum;
use nabla_compiler::codegen::jit::Listing;
use nabla_compiler::egraph::Simplified;
use nabla_compiler::egraph::{RuleSet, rules};
use nabla_compiler::fusion;
use nabla_compiler::ir::{Graph, NodeId, text};
use nabla_compiler::pipeline::{self, Passes, Request};
use nabla_compiler::programs::{Inspection, ModelPrograms};
use nabla_runtime::Elem;
use serde_json::json;

use super::{Failure, Outcome, PassFlags, first_train, load_file, print_json};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Stage {
    /// The model as written, lowered to primitives.
    Forward,
    /// The train step as autodiff and the optimizer emit it: forward, gradients, updates.
    Grad,
    /// The train step after e-graph simplification.
    Simplified,
    /// The train step's kernels, each listing the ops it computes.
    Fused,
    /// The Cranelift IR of every kernel, each headed by what it computes.
    Clif,
    /// The machine code of every kernel (Cranelift's disassembly), each headed by what it
    /// computes.
    Asm,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    /// The model as the train step computes it (dropout draws its masks).
    Train,
    /// The model as evaluation and prediction compute it (dropout is the identity).
    Eval,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    /// One node per line.
    Text,
    /// Graphviz (`dot -Tsvg`); kernels are clusters.
    Dot,
    /// One JSON object.
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Which stage to print.
    #[arg(long, value_enum, default_value = "forward")]
    stage: Stage,
    /// Which program's model: training's or evaluation's (`eval` shows the forward stage).
    #[arg(long, value_enum, default_value = "train")]
    mode: Mode,
    /// Output format (`clif` and `asm` print text only).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Bind every symbolic dimension (the batch) to this size (1 to 16,777,216); `fused`,
    /// `clif`, `asm` and `--stats` default to the train block's batch.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=nabla_runtime::train::MAX_BATCH as u64))]
    batch: Option<usize>,
    #[command(flatten)]
    passes: PassFlags,
    /// Print what each pass did to the train step instead of a graph.
    #[arg(long)]
    stats: bool,
    /// With `--stats`: one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    let format = args.format.unwrap_or(Format::Text);
    let listing = match args.stage {
        Stage::Clif => Listing::Clif,
        Stage::Asm => Listing::Machine,
        _ => Listing::None,
    };
    if listing != Listing::None && format != Format::Text {
        return Err(Failure::Message(
            "`--stage clif` and `--stage asm` print code as text; they have no `--format dot` or `json`".into(),
        ));
    }
    if args.mode == Mode::Eval && (args.stage != Stage::Forward || args.stats) {
        return Err(Failure::Message(
            "`--mode eval` shows the forward graph that evaluation and prediction compute; the train step and its stages exist only in `--mode train`".into(),
        ));
    }
    let started = Instant::now();
    let loaded = load_file(&args.file)?;
    let parse_ms = started.elapsed().as_secs_f64() * 1e3;
    let compiled = &loaded.compiled;
    let (optimizer, train_batch) = first_train(compiled);
    let passes = args.passes.passes();
    if args.stats || args.stage == Stage::Fused || listing != Listing::None {
        let batch = args.batch.unwrap_or(train_batch);
        let mut programs = ModelPrograms::new(compiled.model.clone(), optimizer, Elem::F32);
        programs.passes = passes;
        programs.threads = args.passes.threads();
        let inspection = programs
            .inspect(batch, if args.stats { Listing::None } else { listing })
            .map_err(Failure::Message)?;
        if args.stats {
            let saved = savings(&inspection, programs.passes, programs.threads)
                .map_err(Failure::Message)?;
            stats(&inspection, &saved, batch, parse_ms, args.json);
        } else if listing != Listing::None {
            for (i, (kernel, text)) in inspection
                .trace
                .plan
                .kernels
                .iter()
                .zip(&inspection.listing)
                .enumerate()
            {
                out!("; kernel {i}: {}\n{}", kernel.title, text.trim_end());
            }
        } else {
            fused(&inspection, format);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut model = match args.mode {
        Mode::Train => compiled.model.clone(),
        Mode::Eval => compiled.eval_model.clone(),
    };
    if let Some(b) = args.batch {
        model = pipeline::bind(&model, b).map_err(|e| Failure::Message(e.to_string()))?;
    }
    let (graph, roots, note): (Graph, Vec<NodeId>, Option<String>) = match args.stage {
        Stage::Forward => (model.graph.clone(), vec![model.loss], None),
        _ => {
            let step = pipeline::train_step(&model, &optimizer)
                .map_err(|e| Failure::Message(e.to_string()))?;
            let roots = step.roots();
            if args.stage == Stage::Grad || !passes.simplify {
                (step.graph, roots, None)
            } else {
                let s = pipeline::simplify(&step.graph, &roots, passes)
                    .map_err(|e| Failure::Message(e.to_string()))?;
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
    match format {
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

/// The kernels of the train step as groups of the simplified graph's ops.
fn fused(inspection: &Inspection, format: Format) {
    let Simplified { graph, roots, .. } = &inspection.trace.simplified;
    let fusion = &inspection.trace.fusion;
    let kernels: Vec<(String, Vec<NodeId>)> = fusion
        .groups
        .iter()
        .map(|g| {
            let ops = fusion.ops(graph, g);
            (fusion::title(graph, g, ops.len()), ops)
        })
        .collect();
    match format {
        Format::Text => {
            out!(
                "# {} kernels for {} ops",
                kernels.len(),
                graph.ancestors(roots).len()
            );
            for (i, (title, ops)) in kernels.iter().enumerate() {
                out!("kernel {i}: {title}");
                for line in text::to_text_nodes(graph, ops).lines() {
                    out!("  {line}");
                }
            }
        }
        Format::Dot => out!("{}", dot_clusters(graph, roots, &kernels).trim_end()),
        Format::Json => {
            let mut value = text::to_json(graph, roots);
            value["kernels"] = json!(
                kernels
                    .iter()
                    .map(|(title, ops)| json!({
                        "title": title,
                        "ops": ops.iter().map(|o| o.index()).collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>()
            );
            print_json(&value);
        }
    }
}

/// The graph as dot with one cluster per kernel (an inline value recomputed by several
/// kernels is drawn in the first).
fn dot_clusters(graph: &Graph, roots: &[NodeId], kernels: &[(String, Vec<NodeId>)]) -> String {
    let plain = text::to_dot(graph, roots);
    let mut lines: Vec<String> = plain.lines().map(str::to_string).collect();
    let closing = lines.pop().unwrap_or_default();
    let mut drawn = std::collections::HashSet::new();
    for (i, (title, ops)) in kernels.iter().enumerate() {
        lines.push(format!(
            "  subgraph cluster_{i} {{ label=\"kernel {i}: {}\"; style=rounded;",
            title.replace('"', "'")
        ));
        for op in ops.iter().filter(|o| drawn.insert(**o)) {
            lines.push(format!("    n{};", op.index()));
        }
        lines.push("  }".into());
    }
    lines.push(closing);
    lines.join("\n") + "\n"
}

/// What a pass saved on the train step: FLOPs and bytes moved per step (estimated), as the step
/// planned without it less the step as compiled (negative where it costs).
struct Saved {
    /// The rule, or `fusion`.
    what: String,
    flops: i128,
    bytes: i128,
}

/// What each rule that fired saved (the step planned with that rule left out), and what fusion
/// saved (the simplified step planned with every op its own kernel).
fn savings(inspection: &Inspection, passes: Passes, threads: usize) -> Result<Vec<Saved>, String> {
    let step = &inspection.step;
    let plan = |passes: Passes| -> Result<(i128, i128), String> {
        let request = Request {
            graph: &step.graph,
            outputs: step.outputs.clone(),
            assignments: step.assignments.clone(),
            elem: Elem::F32,
            listing: Listing::None,
            passes,
            threads,
            packing: None,
        };
        let trace = pipeline::plan(&request).map_err(|e| e.to_string())?;
        let (flops, bytes) = trace.plan.work(4);
        Ok((flops.into(), bytes.into()))
    };
    let (flops, bytes) = inspection.trace.plan.work(4);
    let (flops, bytes) = (i128::from(flops), i128::from(bytes));
    let rule_set = if passes.fast_math {
        RuleSet::FastMath
    } else {
        RuleSet::Ieee
    };
    let mut saved = Vec::new();
    for (fired, _) in &inspection.trace.simplified.rules_fired {
        let Some(rule) = rules::all(rule_set)
            .iter()
            .map(|r| r.name.as_str())
            .find(|name| name == fired)
        else {
            continue;
        };
        let (f, b) = plan(Passes {
            leave_out: Some(rule),
            ..passes
        })?;
        saved.push(Saved {
            what: fired.clone(),
            flops: f - flops,
            bytes: b - bytes,
        });
    }
    if passes.fuse {
        let (f, b) = plan(Passes {
            fuse: false,
            ..passes
        })?;
        saved.push(Saved {
            what: "fusion".into(),
            flops: f - flops,
            bytes: b - bytes,
        });
    }
    Ok(saved)
}

/// `1.2 MFLOP and 3.4 MiB`, or `-2 kFLOP and -64 B` for a cost.
fn saved_text(s: &Saved) -> String {
    let sign = |n: i128| if n < 0 { "-" } else { "" };
    format!(
        "{}: {}{} FLOP and {}{}",
        s.what,
        sign(s.flops),
        super::group(s.flops.unsigned_abs() as usize),
        sign(s.bytes),
        super::bytes(s.bytes.unsigned_abs() as u64)
    )
}

/// `--stats`: op and kernel counts, estimated bytes moved, what the e-graph did and what each
/// rule and fusion saved, and the time of every stage from parsing to native code.
fn stats(inspection: &Inspection, saved: &[Saved], batch: usize, parse_ms: f64, as_json: bool) {
    let t = &inspection.trace;
    let step = &inspection.step;
    let ops_autodiff = step.graph.ancestors(&step.roots()).len();
    let ops_simplified = t.simplified.graph.ancestors(&t.simplified.roots).len();
    let kernels = t.plan.kernels.len();
    let bytes_after = t.plan.bytes_moved(4);
    let stages = [
        ("parse", parse_ms),
        ("autodiff", inspection.autodiff_ms),
        ("simplify", t.simplify_ms),
        ("fuse_schedule", t.schedule_ms),
        ("codegen", t.codegen_ms),
    ];
    let total: f64 = stages.iter().map(|(_, ms)| ms).sum();
    if as_json {
        let mut compile_ms = serde_json::Map::new();
        for (name, ms) in stages {
            compile_ms.insert(name.into(), json!(ms));
        }
        compile_ms.insert("total".into(), json!(total));
        let rules: serde_json::Map<String, serde_json::Value> = t
            .simplified
            .rules_fired
            .iter()
            .map(|(r, n)| (r.clone(), json!(n)))
            .collect();
        print_json(&json!({
            "batch": batch,
            "ops_autodiff": ops_autodiff,
            "ops_simplified": ops_simplified,
            "kernels": kernels,
            "bytes_moved_before": inspection.bytes_unfused,
            "bytes_moved_after": bytes_after,
            "temporary_bytes": t.plan.temporary_bytes(4),
            "rules_fired": rules,
            "saved": saved.iter().map(|s| json!({"by": s.what, "flops": s.flops as f64, "bytes": s.bytes as f64})).collect::<Vec<_>>(),
            "stop_reason": t.simplified.stop_reason,
            "compile_ms": compile_ms,
        }));
        return;
    }
    out!("train step at batch {batch}");
    out!("  ops after autodiff    {ops_autodiff}");
    out!("  ops after simplify    {ops_simplified}");
    out!(
        "  kernels               {kernels} ({:.0}% of the ops)",
        100.0 * kernels as f64 / ops_autodiff.max(1) as f64
    );
    out!(
        "  bytes moved per step  {} before simplification and fusion, {} after (estimated)",
        super::bytes(inspection.bytes_unfused),
        super::bytes(bytes_after)
    );
    out!(
        "  temporaries           {} planned (buffers shared where lifetimes allow)",
        super::bytes(t.plan.temporary_bytes(4))
    );
    out!("  e-graph stopped       {}", t.simplified.stop_reason);
    let fired: Vec<String> = t
        .simplified
        .rules_fired
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    out!(
        "  rules fired           {}",
        if fired.is_empty() {
            "none".to_string()
        } else {
            fired.join(", ")
        }
    );
    if !saved.is_empty() {
        let parts: Vec<String> = saved.iter().map(saved_text).collect();
        out!(
            "  saved per step        {} (the step planned without each)",
            parts.join("; ")
        );
    }
    let timings: Vec<String> = stages
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.1}"))
        .collect();
    out!(
        "  compile ms            {total:.1} ({})",
        timings.join(", ")
    );
}
