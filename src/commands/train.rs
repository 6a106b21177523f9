//! `nabla train FILE`: trains with natively compiled steps, printing one line (or JSON object)
//! per epoch, and saves the parameters.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use nabla_runtime::train::{self, Progress, Report, Settings};
use nabla_runtime::{Elem, Schedule, checkpoint};
use serde_json::json;

use super::session::open;
use super::{DEFAULT_BATCH, Failure, Outcome, PassFlags, count, group, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// The `train` block to use (default: the first).
    #[arg(long)]
    config: Option<String>,
    /// Passes over the training data (1 to 16,777,216).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    epochs: Option<u64>,
    /// Total steps instead of epochs (1 to 2^40).
    #[arg(long, conflicts_with = "epochs", value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    steps: Option<u64>,
    /// Examples per step (1 to 16,777,216).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    batch: Option<u64>,
    /// Base learning rate (a number of 0 or more); not with a `piecewise` schedule, whose values
    /// are the learning rates.
    #[arg(long, value_parser = parse_lr)]
    lr: Option<f64>,
    /// Seed for initialisation and shuffling (0 to 4,294,967,295).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=u32::MAX as u64))]
    seed: Option<u64>,
    /// Write the trained parameters here (safetensors, atomically).
    #[arg(long)]
    save: Option<PathBuf>,
    /// One JSON object per line instead of text and a progress bar.
    #[arg(long)]
    json: bool,
    /// Print an epoch line only every N epochs (the first and last always).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    log_every: Option<u64>,
    /// No epoch lines and no progress bar: only the header and the final line.
    #[arg(long, conflicts_with = "log_every")]
    quiet: bool,
    #[command(flatten)]
    passes: PassFlags,
}

fn parse_lr(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected a finite number of 0 or more, got `{text}`"
        )),
    }
}

pub fn run(args: Args) -> Outcome {
    let mut session = open(&args.file, args.config.as_deref())?;
    session.programs.passes = args.passes.passes();
    session.programs.threads = args.passes.threads();
    let spec = &session.spec;
    if let (Some(_), Schedule::Piecewise { .. }) = (args.lr, &spec.schedule) {
        return Err(Failure::Message(format!(
            "`--lr` has no effect with train block `{}`: its schedule `{}` gives the learning rates themselves; edit its values instead",
            spec.name, spec.schedule
        )));
    }
    let settings = Settings {
        batch: args
            .batch
            .map(|b| b as usize)
            .or(spec.batch)
            .unwrap_or(DEFAULT_BATCH),
        epochs: args
            .epochs
            .map(|e| e as usize)
            .or(spec.epochs)
            .unwrap_or(10),
        steps: if args.epochs.is_some() {
            None
        } else {
            args.steps.map(|s| s as usize).or(spec.steps)
        },
        seed: args.seed.or(spec.seed).unwrap_or(0),
        lr: args.lr.unwrap_or(spec.optimizer.lr),
        schedule: spec.schedule.clone(),
        elem: Elem::F32,
    };
    session.check_memory(settings.batch)?;
    let train_data = session.train_data()?;
    let test_data = session.test_data()?;
    let total_steps = train::total_steps(&settings, train_data.rows).map_err(Failure::Message)?;
    let mut store =
        train::init_store(&session.info, settings.seed, settings.elem).map_err(Failure::Message)?;
    let mut optimizer = session.spec.optimizer.clone();
    optimizer.lr = settings.lr;
    let total_epochs = match settings.steps {
        Some(_) => total_steps.div_ceil(train_data.rows.div_ceil(settings.batch)),
        None => settings.epochs,
    };
    if !args.json {
        let schedule = match settings.schedule {
            Schedule::Constant => String::new(),
            ref s => format!(", schedule {s}"),
        };
        out!(
            "training {} on {}{}: {optimizer}{schedule}, batch {}, {}",
            session.loaded.compiled.model.name,
            count(train_data.rows, "example"),
            test_data
                .as_ref()
                .map_or(String::new(), |t| format!(" (test: {})", group(t.rows))),
            settings.batch,
            match settings.steps {
                Some(s) => count(s, "step"),
                None => count(settings.epochs, "epoch"),
            }
        );
    }
    let bar = (!args.json && !args.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
                .expect("a valid template"),
        );
        bar
    });
    let log_every = args.log_every.unwrap_or(1) as usize;
    let show_lr = settings.schedule != Schedule::Constant;
    let epoch_width = total_epochs.to_string().len();
    let mut last_line = String::new();
    let mut on_report = |r: &Report| {
        if args.json {
            print_json(&json!({
                "epoch": r.epoch, "step": r.step, "loss": r.loss, "accuracy": r.accuracy,
                "test_loss": r.test_loss, "test_accuracy": r.test_accuracy, "lr": r.lr, "seconds": r.seconds,
            }));
            return;
        }
        let line = epoch_line(r, total_epochs, epoch_width, show_lr);
        let wanted = r.epoch <= 1 || r.epoch.is_multiple_of(log_every) || r.epoch == total_epochs;
        if args.quiet || !wanted {
            last_line = line;
            return;
        }
        last_line.clear();
        match &bar {
            Some(b) => b.println(line),
            None => out!("{line}"),
        }
    };
    let mut last_draw = Instant::now();
    let mut on_batch = |p: &Progress| {
        let Some(b) = &bar else { return };
        b.set_position(p.step as u64);
        if last_draw.elapsed().as_millis() >= 100 || p.step == p.total {
            last_draw = Instant::now();
            let eta = p.seconds / p.step as f64 * (p.total - p.step) as f64;
            b.set_message(format!("loss {:.4}  eta {}", p.running_loss, seconds(eta)));
        }
    };
    let result = train::train(
        &session.info,
        &settings,
        &mut session.programs,
        &mut store,
        train::Data {
            train: &train_data,
            test: test_data.as_ref(),
        },
        train::Hooks {
            on_report: &mut on_report,
            on_batch: &mut on_batch,
        },
    );
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    result.map_err(Failure::Message)?;
    if !last_line.is_empty() {
        out!("{last_line}");
    }
    if let Some(path) = &args.save {
        checkpoint::save(path, &session.tensors(&store)).map_err(Failure::Message)?;
        if !args.json {
            out!(
                "saved {} to {}",
                count(session.loaded.compiled.model.param_count(), "parameter"),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One epoch's line, under 80 columns: `epoch  3/10  loss 0.123456  acc 96.20%  test 0.149770
/// 95.10%  2.9s` (the learning rate too when a schedule changes it).
fn epoch_line(r: &Report, total: usize, width: usize, show_lr: bool) -> String {
    let percent = |a: Option<f64>| a.map_or(String::new(), |a| format!(" {:.2}%", 100.0 * a));
    let mut line = format!(
        "epoch {:>width$}/{total}  loss {:.6}{}",
        r.epoch,
        r.loss,
        r.accuracy
            .map_or(String::new(), |a| format!("  acc{}", percent(Some(a))))
    );
    if let Some(l) = r.test_loss {
        line += &format!("  test {l:.6}{}", percent(r.test_accuracy));
    }
    if show_lr {
        let short = r.lr.to_string();
        let lr = if short.len() <= 7 {
            short
        } else {
            format!("{:.2e}", r.lr)
        };
        line += &format!("  lr {lr}");
    }
    line + &format!("  {}", seconds(r.seconds))
}

/// `2.9s`, `1m05s`, `2h03m`.
fn seconds(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        _ if s < 60.0 => format!("{s:.1}s"),
        0..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}
