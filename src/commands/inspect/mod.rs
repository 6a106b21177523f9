//! `nabla inspect FILE [-o report.html]`: one self-contained HTML page (no network: it opens
//! from a laptop offline) that shows a model at every stage of the compiler, linked to its
//! source: the forward graph, the gradients, the simplified graph, the kernels it was fused
//! into with their Cranelift IR and machine code, per-stage counts, with `--profile` each
//! kernel's measured time, and with `--log` a training run's curves.
//!
//! The data is gathered here ([`report`]); the page ([`page`]) is static HTML, CSS and
//! JavaScript embedded in the binary, with dagre (the layered graph layout TensorBoard's graph
//! view uses) to draw the graphs, layers collapsed until opened.

mod page;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use nabla_compiler::codegen::jit::Listing;
use nabla_compiler::programs::{Inspection, ModelPrograms};
use nabla_runtime::{Alone, Elem, files};
use serde_json::{Value, json};

use super::{Failure, Loaded, Outcome, PassFlags, first_train, load_file};

#[derive(clap::Args)]
#[command(arg_required_else_help = true)]
pub struct Args {
    /// The model file (`.nn`).
    file: Option<PathBuf>,
    /// A metrics log written by `nabla train --log`, drawn as curves on the page.
    #[arg(long)]
    log: Option<PathBuf>,
    /// The page to write (default: the model's or the log's name with `.html`, in the current
    /// directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Bind the batch to this size (default: the train block's).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=nabla_runtime::train::MAX_BATCH as u64))]
    batch: Option<usize>,
    /// Also time every kernel over this many train steps on synthetic data (as `nabla bench
    /// --profile`) and show each kernel's share of the step.
    #[arg(long, num_args = 0..=1, default_missing_value = "20", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    profile: Option<usize>,
    #[command(flatten)]
    passes: PassFlags,
}

pub fn run(args: Args) -> Outcome {
    let started = Instant::now();
    let Some(named) = args.file.as_ref().or(args.log.as_ref()) else {
        return Err(Failure::Message(
            "give a model file, `--log LOG`, or both".into(),
        ));
    };
    let output = args.output.clone().unwrap_or_else(|| default_output(named));
    files::check_writable(&output, "the page", false).map_err(Failure::Message)?;
    let mut data = json!({ "nabla": env!("CARGO_PKG_VERSION") });
    if let Some(file) = &args.file {
        let loaded = load_file(file)?;
        data["model"] = model(&loaded, &args)?;
    }
    if let Some(log) = &args.log {
        let (file, _) =
            files::open_limited(log, "metrics log", 1 << 30).map_err(Failure::Message)?;
        let metrics = super::plot::log::read(log, file).map_err(Failure::Message)?;
        data["log"] = report::log_json(&log.display().to_string(), &metrics);
    }
    let html = page::render(&data);
    files::write_atomically(&output, html.as_bytes()).map_err(Failure::Message)?;
    out!(
        "wrote {} ({}) in {:.2} s",
        output.display(),
        super::bytes(html.len() as u64),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `examples/mnist_mlp.nn` → `mnist_mlp.html`.
fn default_output(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or("inspect".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from(format!("{stem}.html"))
}

/// Everything the page shows of a model.
fn model(loaded: &Loaded, args: &Args) -> Result<Value, Failure> {
    let compiled = &loaded.compiled;
    let (optimizer, train_batch) = first_train(compiled);
    let batch = args.batch.unwrap_or(train_batch);
    let mut programs = ModelPrograms::new(compiled.model.clone(), optimizer, Elem::F32);
    programs.passes = args.passes.passes();
    programs.threads = args.passes.threads();
    let inspection = programs
        .inspect(batch, Listing::Clif)
        .map_err(Failure::Message)?;
    let machine = programs
        .inspect(batch, Listing::Machine)
        .map_err(Failure::Message)?;
    let titles = |i: &Inspection| -> Vec<String> {
        i.trace
            .plan
            .kernels
            .iter()
            .map(|k| k.title.clone())
            .collect()
    };
    if titles(&inspection) != titles(&machine) {
        return Err(Failure::Message(
            "internal error: two compilations of the train step gave different kernels".into(),
        ));
    }
    let seconds = match args.profile {
        Some(steps) => Some(kernel_seconds(
            loaded,
            args,
            batch,
            steps,
            &titles(&inspection),
        )?),
        None => None,
    };
    let (kernels_of, kernels) = report::kernels(
        loaded,
        &inspection,
        (&inspection.listing, &machine.listing),
        seconds.as_deref(),
    )
    .map_err(Failure::Message)?;
    let stages = report::stages(&inspection);
    let mut stage_values = Vec::new();
    for stage in &stages {
        let fused = (stage.key == "simplified").then_some(&kernels_of);
        stage_values.push(report::stage_json(loaded, stage, fused).map_err(Failure::Message)?);
    }
    let trace = &inspection.trace;
    Ok(json!({
        "name": compiled.model.name,
        "file": loaded.path.display().to_string(),
        "source": loaded.source,
        "bindings": compiled.binding_spans.iter().map(|(name, span)| {
            let line = loaded.source[..span.start.min(loaded.source.len())].matches('\n').count() + 1;
            json!({"name": name, "line": line})
        }).collect::<Vec<_>>(),
        "batch": batch,
        "threads": programs.threads,
        "stages": stage_values,
        "fused": report::fused_counts(&inspection),
        "kernels": kernels,
        "rules": report::rules(&inspection),
        "compile_ms": {
            "autodiff": inspection.autodiff_ms,
            "simplify": trace.simplify_ms,
            "fuse_schedule": trace.schedule_ms,
            "codegen": trace.codegen_ms,
        },
        "profiled_steps": args.profile,
    }))
}

/// Each kernel's mean seconds per train step, timed one by one over `steps` steps on synthetic
/// data, in program order; `titles` are the inspected kernels', which the timed program must
/// have too.
fn kernel_seconds(
    loaded: &Loaded,
    args: &Args,
    batch: usize,
    steps: usize,
    titles: &[String],
) -> Result<Vec<f64>, Failure> {
    let (_, timing) = super::bench::time(
        loaded,
        batch,
        (&args.passes, args.passes.threads()),
        (super::bench::WARMUP, steps),
        true,
        &Alone,
    )?;
    let kernels = timing.kernels.unwrap_or_default();
    let timed: Vec<&String> = kernels.iter().map(|(note, _)| &note.title).collect();
    if timed.len() != titles.len() || timed.iter().zip(titles).any(|(a, b)| *a != b) {
        return Err(Failure::Message(
            "internal error: the timed train step has other kernels than the inspected one".into(),
        ));
    }
    Ok(kernels.into_iter().map(|(_, s)| s).collect())
}
