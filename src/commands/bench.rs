//! `nabla bench FILE`: compile time and train-step time on synthetic data of the model's
//! shapes (no data set needed), as text or one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_compiler::programs::ModelPrograms;
use nabla_runtime::train::{self, ModelInfo, Settings, Timing};
use nabla_runtime::{Buffer, Collective, Elem, Executable};
use serde_json::json;

use super::distributed;
use super::{
    Failure, Loaded, Outcome, PassFlags, first_train, load_file, memory_diagnostic, print_json,
    profile,
};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Examples per step (default: the train block's, else 32).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=nabla_runtime::train::MAX_BATCH as u64))]
    batch: Option<usize>,
    /// Timed steps (after 5 untimed ones).
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 24))]
    steps: usize,
    /// One JSON object: compile_ms, step_ms, samples_per_s, peak_rss_mb, threads, batch.
    #[arg(long)]
    json: bool,
    /// Then each kernel's share of the step, sorted by time: its FLOP/s and GB/s against this
    /// machine's measured peaks (a roofline) and the source lines it came from (as JSON lines
    /// after the summary with --json).
    #[arg(long)]
    profile: bool,
    /// Time data-parallel steps over the ranks of an MPI job (`mpirun -n N nabla bench FILE
    /// --distributed`): `--batch` examples per rank, the all-reduce's share of the step too.
    #[arg(long, conflicts_with = "profile")]
    distributed: bool,
    /// Time the prediction program (the model in eval mode, as `nabla predict` and an
    /// exported library run it) instead of train steps: each run's median, on zeros.
    #[arg(long, conflicts_with_all = ["profile", "distributed"])]
    predict: bool,
    #[command(flatten)]
    passes: PassFlags,
}

/// Steps run before timing starts (first-touch page faults, caches).
pub const WARMUP: usize = 5;

pub fn run(args: Args) -> Outcome {
    let ranks = distributed::ranks(args.distributed)?;
    bench_on(args, &*ranks).map_err(|failure| distributed::fail(&*ranks, failure))
}

/// [`run`] on `ranks`.
fn bench_on(args: Args, ranks: &dyn Collective) -> Outcome {
    let started = std::time::Instant::now();
    let loaded = load_file(&args.file)?;
    let parse_s = started.elapsed().as_secs_f64();
    let compiled = &loaded.compiled;
    let batch = args.batch.unwrap_or(first_train(compiled).1);
    let threads = distributed::threads(ranks, &args.passes);
    if args.predict {
        return time_predictions(
            &loaded,
            batch,
            (&args.passes, threads),
            args.steps,
            args.json,
        );
    }
    let (info, timing) = time(
        &loaded,
        batch,
        (&args.passes, threads),
        (WARMUP, args.steps),
        args.profile,
        ranks,
    )?;
    // Over several ranks, a step trains `batch` examples on each.
    let global = batch * ranks.size();
    let reduce = (!timing.reduce_seconds.is_empty()).then(|| {
        timing.reduce_seconds.iter().sum::<f64>() / timing.step_seconds.iter().sum::<f64>()
    });
    let (codegen_s, mut times) = (timing.compile_seconds, timing.step_seconds);
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let median = times[times.len() / 2];
    // From the file's bytes to a native train step: parsing and checking, then every pass.
    let compile_s = parse_s + codegen_s;
    let step_ms = mean * 1e3;
    let peak_rss_mb = peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64);
    if args.json {
        print_json(&json!({
            "model": compiled.model.name,
            "compile_ms": compile_s * 1e3,
            "step_ms": step_ms,
            "step_ms_median": median * 1e3,
            "step_ms_min": times[0] * 1e3,
            "samples_per_s": global as f64 / mean,
            "peak_rss_mb": peak_rss_mb,
            "threads": threads,
            "batch": batch,
            "steps": args.steps,
            "ranks": ranks.size(),
            "all_reduce_share": reduce,
        }));
    } else {
        out!(
            "{} at batch {batch}: compile {:.1} ms, step {} (median {}, min {}; {} steps), {:.0} samples/s, peak RSS {}",
            compiled.model.name,
            compile_s * 1e3,
            duration(mean),
            duration(median),
            duration(times[0]),
            args.steps,
            global as f64 / mean,
            peak_rss_mb.map_or("unknown".into(), |m| format!("{m:.0} MB"))
        );
        if let Some(share) = reduce {
            out!(
                "{} ranks x {} thread{}, {global} examples a step; the all-reduce of {} values takes {:.1}% of the step (waiting for the slowest rank included)",
                ranks.size(),
                threads,
                if threads == 1 { "" } else { "s" },
                super::group(info.reduced),
                share * 100.0
            );
        }
    }
    if let Some(kernels) = &timing.kernels {
        let peaks = nabla_kernels::peaks::measure(threads);
        let rows = profile::rows(kernels, &loaded);
        if args.json {
            profile::print_json_lines(&rows, &peaks, threads);
        } else {
            profile::print(&rows, &peaks, threads);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Times `steps` train steps of `loaded` at `batch` (after `warmup` untimed ones) on synthetic
/// data, kernel by kernel with `profile`: `nabla bench` and `nabla inspect --profile`.
pub fn time(
    loaded: &Loaded,
    batch: usize,
    (passes, threads): (&PassFlags, usize),
    (warmup, steps): (usize, usize),
    profile: bool,
    ranks: &dyn Collective,
) -> Result<(ModelInfo, Timing), Failure> {
    let (optimizer, _) = first_train(&loaded.compiled);
    let mut programs =
        ModelPrograms::new(loaded.compiled.model.clone(), optimizer.clone(), Elem::F32);
    programs.passes = passes.passes();
    programs.threads = threads;
    let memory = programs.memory(batch).map_err(Failure::Message)?;
    let what = format!("benchmarking at batch {batch}");
    if let Some(d) = memory_diagnostic(loaded, &memory, &what, false) {
        return Err(Failure::Diagnostics(loaded.render(&[d])));
    }
    let info = programs.info().map_err(Failure::Message)?;
    let settings = Settings {
        steps: Some(steps),
        ..Settings::new(batch, optimizer.lr)
    };
    let mut store = train::init_store(&info, 0, Elem::F32).map_err(Failure::Message)?;
    distributed::check_agreement(ranks, loaded, &settings, &info, &store)?;
    let data = train::synthetic(&info, batch * ranks.size(), 0);
    let timing = train::time_steps(
        &info,
        &settings,
        &mut programs,
        &mut store,
        &data,
        (warmup, steps),
        profile,
        ranks,
    )
    .map_err(Failure::Message)?;
    Ok((info, timing))
}

/// `8.846 ms`, `1.3 µs`.
pub fn duration(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.2} µs", seconds * 1e6)
    } else {
        format!("{:.3} ms", seconds * 1e3)
    }
}

/// The process's peak resident memory (Linux's `VmHWM`), when it can be known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `--predict`: times `runs` runs of the prediction program at `batch` (after [`WARMUP`]
/// untimed ones) with initial parameters and zero inputs (class index 0), the same work as
/// with real ones.
fn time_predictions(
    loaded: &Loaded,
    batch: usize,
    (passes, threads): (&PassFlags, usize),
    runs: usize,
    json: bool,
) -> Outcome {
    let compiled = &loaded.compiled;
    let (optimizer, _) = first_train(compiled);
    let mut programs = ModelPrograms::new(compiled.model.clone(), optimizer, Elem::F32)
        .with_eval(compiled.eval_model.clone());
    programs.passes = passes.passes();
    programs.threads = threads;
    let info = programs.info().map_err(Failure::Message)?;
    let mut store = train::init_store(&info, 0, Elem::F32).map_err(Failure::Message)?;
    let started = std::time::Instant::now();
    let program = train::Compile::predict(&mut programs, batch).map_err(Failure::Message)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut exe = Executable::new(program).map_err(|e| Failure::Message(e.to_string()))?;
    let mut inputs = train::Store::default();
    for feed in info.feeds.iter().filter(|f| !f.target) {
        let buffer = Buffer::try_zeros(batch * feed.row_len, Elem::F32)
            .map_err(|e| Failure::Message(e.to_string()))?;
        inputs.insert(feed.name.clone(), buffer);
    }
    let mut times = Vec::with_capacity(runs);
    for run in 0..WARMUP + runs {
        let started = std::time::Instant::now();
        exe.run(&mut [&mut inputs, &mut store])
            .map_err(|e| Failure::Message(e.to_string()))?;
        if run >= WARMUP {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if json {
        print_json(&json!({
            "model": compiled.model.name,
            "batch": batch,
            "threads": threads,
            "compile_ms": compile_ms,
            "predict_us_median": median * 1e6,
            "predict_us_min": times[0] * 1e6,
            "runs": runs,
        }));
    } else {
        out!(
            "{} prediction at batch {batch}: median {} (min {}; {runs} runs), {threads} thread{}, compiled in {compile_ms:.1} ms",
            compiled.model.name,
            duration(median),
            duration(times[0]),
            if threads == 1 { "" } else { "s" },
        );
    }
    Ok(ExitCode::SUCCESS)
}
