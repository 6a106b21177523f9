//! `nabla train FILE`: trains with natively compiled steps, printing one line (or JSON object)
//! per epoch, and saves the parameters.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use nabla_runtime::train::{self, Report, Settings};
use nabla_runtime::{Elem, checkpoint};
use serde_json::json;

use super::session::open;
use super::{Failure, Outcome, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// The `train` block to use (default: the first).
    #[arg(long)]
    config: Option<String>,
    /// Passes over the training data.
    #[arg(long)]
    epochs: Option<usize>,
    /// Total steps instead of epochs.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    /// Examples per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed for initialisation and shuffling.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the trained parameters here (safetensors, atomically).
    #[arg(long)]
    save: Option<PathBuf>,
    /// One JSON object per line instead of text and a progress bar.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    let mut session = open(&args.file, args.config.as_deref())?;
    let spec = &session.spec;
    let settings = Settings {
        batch: args.batch.or(spec.batch).unwrap_or(32),
        epochs: args.epochs.or(spec.epochs).unwrap_or(10),
        steps: if args.epochs.is_some() {
            None
        } else {
            args.steps.or(spec.steps)
        },
        seed: args.seed.or(spec.seed).unwrap_or(0),
        lr: args.lr.unwrap_or(spec.optimizer.lr),
        schedule: spec.schedule.clone(),
        elem: Elem::F32,
    };
    if settings.batch == 0 || !(settings.lr >= 0.0 && settings.lr.is_finite()) {
        return Err(Failure::Message(
            "`--batch` must be at least 1 and `--lr` a non-negative number".into(),
        ));
    }
    let train_data = session.train_data()?;
    let test_data = session.test_data()?;
    let mut store = train::init_store(&session.info, settings.seed, settings.elem);
    if !args.json {
        out!(
            "training {} on {} examples{}: {} (lr {}), batch {}, {}",
            session.compiled.model.name,
            train_data.rows,
            test_data
                .as_ref()
                .map_or(String::new(), |t| format!(" (test: {})", t.rows)),
            session.spec.optimizer.kind,
            settings.lr,
            settings.batch,
            settings
                .steps
                .map_or(format!("{} epochs", settings.epochs), |s| format!(
                    "{s} steps"
                ))
        );
    }
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed} (eta {eta})")
                .expect("a valid template"),
        );
        bar
    });
    let json_mode = args.json;
    let mut on_report = |r: &Report| {
        if json_mode {
            print_json(&json!({
                "epoch": r.epoch, "step": r.step, "loss": r.loss, "accuracy": r.accuracy,
                "test_loss": r.test_loss, "test_accuracy": r.test_accuracy, "lr": r.lr, "seconds": r.seconds,
            }));
            return;
        }
        let mut line = format!(
            "epoch {:>3}  step {:>6}  loss {:.6}",
            r.epoch, r.step, r.loss
        );
        if let Some(a) = r.accuracy {
            line += &format!("  accuracy {:>6.2}%", 100.0 * a);
        }
        if let Some(l) = r.test_loss {
            line += &format!("  test_loss {l:.6}");
        }
        if let Some(a) = r.test_accuracy {
            line += &format!("  test_accuracy {:>6.2}%", 100.0 * a);
        }
        line += &format!("  lr {:.3e}  {:.1}s", r.lr, r.seconds);
        match &bar {
            Some(b) => b.println(line),
            None => out!("{line}"),
        }
    };
    let mut on_batch = |done: usize, total: usize| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
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
    if let Some(path) = &args.save {
        checkpoint::save(path, &session.tensors(&store)).map_err(Failure::Message)?;
        if !args.json {
            out!(
                "saved {} parameters to {}",
                session.compiled.model.param_count(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
