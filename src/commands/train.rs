//! `nabla train FILE`: trains with natively compiled steps, printing one line (or JSON object)
//! per epoch, and saves the parameters; checkpoints, resumes, stops early, guards against
//! divergence, saves on Ctrl-C, logs metrics and draws them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};

use console::Term;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use nabla_runtime::resume::{self, Run};
use nabla_runtime::text::VOCABULARY_KEY;
use nabla_runtime::train::{self, Finish, Progress, Report, Settings, State, Store, TrainError};
use nabla_runtime::{Elem, Schedule, checkpoint, files};
use serde_json::json;

use super::session::{Session, open};
use super::{DEFAULT_BATCH, Failure, Outcome, PassFlags, count, group, plot, print_json};

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
    /// Write a checkpoint (parameters, optimizer state, position) to DIR/last.safetensors after
    /// every `--every` epochs, at the end, and on Ctrl-C; with early stopping, the best
    /// epoch's parameters to DIR/best.safetensors.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Epochs between checkpoints.
    #[arg(long, value_name = "N", requires = "checkpoint", value_parser = clap::value_parser!(u64).range(1..))]
    every: Option<u64>,
    /// Continue the run saved in a checkpoint (a `--checkpoint` directory or its file), bit for
    /// bit as if it had not stopped.
    #[arg(long, value_name = "PATH", conflicts_with = "weights")]
    resume: Option<PathBuf>,
    /// Start from these saved parameters instead of the initialisers (fine-tuning); the
    /// optimizer state starts at zero.
    #[arg(long, value_name = "PATH")]
    weights: Option<PathBuf>,
    /// Write every epoch's metrics, one JSON object per line (as `--json` prints them).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Draw the loss and accuracy curves (and, for 2-D inputs, the decision boundary) into DIR
    /// at the end.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Keep training through a non-finite loss or parameter instead of stopping.
    #[arg(long)]
    allow_nonfinite: bool,
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

/// The checkpoint file inside a `--checkpoint` directory.
const LAST: &str = "last.safetensors";
/// The best epoch's parameters inside a `--checkpoint` directory (with early stopping).
const BEST: &str = "best.safetensors";

pub fn run(args: Args) -> Outcome {
    check_outputs(&args)?;
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
    let mut settings = Settings {
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
        early_stopping: spec.early_stopping,
        guard: !args.allow_nonfinite,
    };
    session.check_memory(settings.batch)?;
    let planned_batch = settings.batch;
    let mut optimizer = session.spec.optimizer.clone();
    let (mut store, mut state) = match &args.resume {
        Some(path) => {
            let path = checkpoint_file(path);
            let (store, state, run) =
                resume::load(&path, &session.info, Elem::F32).map_err(Failure::Message)?;
            adopt(&args, &session, &mut settings, &run, &path)?;
            (store, state)
        }
        None => {
            let mut store = train::init_store(&session.info, settings.seed, settings.elem)
                .map_err(Failure::Message)?;
            if let Some(path) = &args.weights {
                store.extend(session.load_weights(path)?);
            }
            (store, State::default())
        }
    };
    optimizer.lr = settings.lr;
    if settings.batch != planned_batch {
        session.check_memory(settings.batch)?;
    }
    let (train_data, validation) = session.train_and_validation_data(settings.seed)?;
    // A text model's vocabulary goes into every file it saves, for `nabla generate`.
    let metadata: HashMap<String, String> = train_data
        .vocabulary
        .iter()
        .map(|v| (VOCABULARY_KEY.to_string(), v.to_metadata()))
        .collect();
    let test_data = session.test_data()?;
    let total_steps = train::total_steps(&settings, train_data.rows).map_err(Failure::Message)?;
    if state.position.step >= total_steps {
        return Err(Failure::Message(format!(
            "nothing left to train: the checkpoint has trained {} of the {} asked for; ask for more with `--epochs`",
            count(state.position.step, "step"),
            group(total_steps)
        )));
    }
    let total_epochs = match settings.steps {
        Some(_) => total_steps.div_ceil(train_data.rows.div_ceil(settings.batch)),
        None => settings.epochs,
    };
    let run = Run {
        model: session.loaded.compiled.model.name.clone(),
        optimizer: optimizer.to_string(),
        seed: settings.seed,
        batch: settings.batch,
        lr: settings.lr,
    };
    if !args.json {
        header(
            &args,
            &session,
            &settings,
            &optimizer,
            &train_data,
            validation.as_ref(),
            test_data.as_ref(),
            &state,
        );
    }
    let interrupted = interrupt_flag();
    let bar = (!args.json && !args.quiet && std::io::stderr().is_terminal()).then(|| {
        let target =
            ProgressDrawTarget::term_like_with_hz(Box::new(Margin(Term::buffered_stderr())), 20);
        let bar = ProgressBar::with_draw_target(Some(total_steps as u64), target);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
                .expect("a valid template"),
        );
        bar.set_position(state.position.step as u64);
        bar
    });
    let mut log = match &args.log {
        Some(path) => Some(MetricsLog::open(
            path,
            args.resume.is_some(),
            state.position.epoch,
        )?),
        None => None,
    };
    let mut records = Vec::new();
    let log_every = args.log_every.unwrap_or(1) as usize;
    let show_lr = settings.schedule != Schedule::Constant;
    let epoch_width = total_epochs.to_string().len();
    let mut last_line = String::new();
    let mut log_error = None;
    let mut on_report = |r: &Report| {
        let record = record(r);
        if let Some(log) = &mut log
            && let Err(e) = log.push(&record)
        {
            log_error.get_or_insert(e);
        }
        records.push(record.clone());
        if args.json {
            print_json(&record);
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
            Some(b) => b.suspend(|| out!("{line}")),
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
    let every = args.every.unwrap_or(1) as usize;
    let mut on_epoch = |state: &State, store: &Store, last: bool| -> Result<(), String> {
        let Some(dir) = &args.checkpoint else {
            return Ok(());
        };
        let p = &state.position;
        if settings.early_stopping.is_some() && p.best_epoch == p.epoch {
            let params = resume::parameters(&session.info, store);
            checkpoint::save(&dir.join(BEST), &params, metadata.clone())?;
        }
        if p.epoch.is_multiple_of(every) || last {
            resume::save(
                &dir.join(LAST),
                &session.info,
                store,
                (state, &run),
                metadata.clone(),
            )?;
        }
        Ok(())
    };
    let stop = || interrupted.load(Ordering::SeqCst);
    let result = train::train(
        &session.info,
        &settings,
        &mut session.programs,
        &mut store,
        train::Data {
            train: &train_data,
            validation: validation.as_ref(),
            test: test_data.as_ref(),
        },
        &mut state,
        train::Hooks {
            on_report: &mut on_report,
            on_batch: &mut on_batch,
            on_epoch: &mut on_epoch,
            stop: &stop,
        },
    );
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(e) = log_error {
        return Err(Failure::Message(e));
    }
    let finish = match result {
        Ok(finish) => finish,
        Err(TrainError::Failed(e)) => return Err(Failure::Message(e)),
        Err(TrainError::Diverged(d)) => return Err(Failure::Message(diverged(&args, &d))),
    };
    if !last_line.is_empty() {
        out!("{last_line}");
    }
    if finish == Finish::Interrupted {
        return interrupted_run(
            &args,
            &session,
            &store,
            (&state, &run, metadata),
            total_steps,
        );
    }
    if let Finish::EarlyStopped { epoch, best_epoch } = finish
        && !args.json
    {
        let es = settings
            .early_stopping
            .expect("early stopping stopped the run");
        out!(
            "early stopping after epoch {epoch}: `{}` has not improved for {} since epoch {best_epoch}{}",
            es.monitor.name(),
            count(es.patience, "epoch"),
            if es.restore_best {
                format!("; keeping epoch {best_epoch}'s parameters")
            } else {
                String::new()
            }
        );
    }
    if let Some(path) = &args.save {
        let params = resume::parameters(&session.info, &store);
        checkpoint::save(path, &params, metadata).map_err(Failure::Message)?;
        if !args.json {
            out!(
                "saved {} to {}",
                count(session.loaded.compiled.model.param_count(), "parameter"),
                path.display()
            );
        }
    }
    if let Some(dir) = &args.plot {
        let written = plot::after_training(&mut session, &store, &records, dir)?;
        if !args.json {
            out!("plotted {}", written.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails before any work when an output path cannot be written.
fn check_outputs(args: &Args) -> Result<(), Failure> {
    let check = || -> Result<(), String> {
        if let Some(path) = &args.save {
            files::check_writable(path, "--save")?;
        }
        if let Some(path) = &args.log {
            files::check_writable(path, "--log")?;
        }
        if let Some(dir) = &args.checkpoint {
            files::prepare_directory(dir, "--checkpoint")?;
        }
        if let Some(dir) = &args.plot {
            files::prepare_directory(dir, "--plot")?;
        }
        Ok(())
    };
    check().map_err(Failure::Message)
}

/// The checkpoint file `path` names: `DIR/last.safetensors` for a directory.
fn checkpoint_file(path: &std::path::Path) -> PathBuf {
    if path.is_dir() {
        path.join(LAST)
    } else {
        path.to_path_buf()
    }
}

/// Takes a resumed run's settings, refusing flags that would make it a different run.
fn adopt(
    args: &Args,
    session: &Session,
    settings: &mut Settings,
    run: &Run,
    path: &std::path::Path,
) -> Result<(), Failure> {
    let model = &session.loaded.compiled.model.name;
    let shown = path.display();
    if run.model != *model {
        return Err(Failure::Message(format!(
            "`{shown}` is a checkpoint of model `{}`, not of `{model}`",
            run.model
        )));
    }
    let mut optimizer = session.spec.optimizer.clone();
    optimizer.lr = run.lr;
    if optimizer.to_string() != run.optimizer {
        return Err(Failure::Message(format!(
            "`{shown}` was trained with `{}`, but train block `{}` uses `{optimizer}`; resume with the optimizer the run started with",
            run.optimizer, session.spec.name
        )));
    }
    let differs = |flag: &str, given: String, saved: String| {
        Failure::Message(format!(
            "`{flag} {given}` differs from the checkpoint's {saved}; a resumed run keeps its seed, batch and learning rate so that it goes on as the same run"
        ))
    };
    if let Some(seed) = args.seed.filter(|s| *s != run.seed) {
        return Err(differs(
            "--seed",
            seed.to_string(),
            format!("seed {}", run.seed),
        ));
    }
    if let Some(batch) = args.batch.filter(|b| *b as usize != run.batch) {
        return Err(differs(
            "--batch",
            batch.to_string(),
            format!("batch {}", run.batch),
        ));
    }
    if let Some(lr) = args.lr.filter(|l| *l != run.lr) {
        return Err(differs(
            "--lr",
            lr.to_string(),
            format!("learning rate {}", run.lr),
        ));
    }
    settings.seed = run.seed;
    settings.batch = run.batch;
    settings.lr = run.lr;
    Ok(())
}

/// The first line: what is trained on what, and from where.
#[allow(clippy::too_many_arguments)]
fn header(
    args: &Args,
    session: &Session,
    settings: &Settings,
    optimizer: &nabla_compiler::optim::Optimizer,
    train_data: &nabla_runtime::data::Dataset,
    validation: Option<&nabla_runtime::data::Dataset>,
    test_data: Option<&nabla_runtime::data::Dataset>,
    state: &State,
) {
    let schedule = match settings.schedule {
        Schedule::Constant => String::new(),
        ref s => format!(", schedule {s}"),
    };
    let mut held = Vec::new();
    if let Some(v) = validation {
        held.push(format!("validation: {}", group(v.rows)));
    }
    if let Some(t) = test_data {
        held.push(format!("test: {}", group(t.rows)));
    }
    out!(
        "training {} on {}{}: {optimizer}{schedule}, batch {}, {}",
        session.loaded.compiled.model.name,
        count(train_data.rows, "example"),
        if held.is_empty() {
            String::new()
        } else {
            format!(" ({})", held.join(", "))
        },
        settings.batch,
        match settings.steps {
            Some(s) => count(s, "step"),
            None => count(settings.epochs, "epoch"),
        }
    );
    if let Some(path) = &args.resume {
        out!(
            "resuming {} at epoch {}, step {}",
            path.display(),
            state.position.epoch,
            group(state.position.step)
        );
    }
    if let Some(path) = &args.weights {
        out!("starting from the parameters in {}", path.display());
    }
}

/// The terminal as the progress bar sees it: a few columns narrower. indicatif pads its line
/// to the terminal's width, leaving the cursor at the last column, so the `^C` a terminal echoes
/// on Ctrl-C would wrap onto a line of its own, and clearing the bar would clear that line and
/// leave the bar on screen.
#[derive(Debug)]
struct Margin(Term);

impl TermLike for Margin {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(4).max(1)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A flag set by the first Ctrl-C, so that training stops after the current step; a second
/// Ctrl-C exits at once with code 130.
fn interrupt_flag() -> &'static AtomicBool {
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not save the run: {e}");
    }
    &INTERRUPTED
}

/// Saves an interrupted run where the user asked for output, says so, and exits 130.
fn interrupted_run(
    args: &Args,
    session: &Session,
    store: &Store,
    (state, run, metadata): (&State, &Run, HashMap<String, String>),
    total_steps: usize,
) -> Outcome {
    let p = &state.position;
    let at = format!(
        "interrupted in epoch {}, after step {} of {}",
        p.epoch + 1,
        group(p.step),
        group(total_steps)
    );
    let target = args
        .checkpoint
        .as_ref()
        .map(|d| (d.join(LAST), d.clone()))
        .or_else(|| args.save.as_ref().map(|s| (s.clone(), s.clone())));
    match target {
        Some((path, resume_from)) => {
            resume::save(&path, &session.info, store, (state, run), metadata)
                .map_err(Failure::Message)?;
            eprintln!(
                "{at}: saved the run to {}; continue it with `nabla train {} --resume {}`",
                path.display(),
                args.file.display(),
                resume_from.display()
            );
        }
        None => eprintln!(
            "{at}: nothing saved (give --checkpoint DIR or --save PATH to keep interrupted work)"
        ),
    }
    Ok(ExitCode::from(130))
}

/// The divergence guard's message: what went non-finite, where, and what to do.
fn diverged(args: &Args, d: &train::Divergence) -> String {
    let mut message = format!(
        "{d}\n  the learning rate was {}; a lower one (e.g. `--lr {}`) often helps, and `--allow-nonfinite` trains on regardless",
        d.lr,
        d.lr / 10.0
    );
    if let Some(dir) = &args.checkpoint {
        let last = dir.join(LAST);
        if last.exists() {
            message += &format!("\n  the last good checkpoint is kept in {}", last.display());
        }
    }
    message
}

/// One report as the JSON object `--json` prints and `--log` writes.
fn record(r: &Report) -> serde_json::Value {
    json!({
        "epoch": r.epoch, "step": r.step, "loss": r.loss, "accuracy": r.accuracy,
        "val_loss": r.val_loss, "val_accuracy": r.val_accuracy,
        "test_loss": r.test_loss, "test_accuracy": r.test_accuracy, "lr": r.lr, "seconds": r.seconds,
    })
}

/// `--log FILE`: one JSON line per report, appended and flushed as it comes, so earlier lines
/// are never at risk. A resumed run first rewrites the file (atomically) to the lines of the
/// epochs its checkpoint had trained, so that the log reads as one uninterrupted run.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &std::path::Path, resumed: bool, epoch: usize) -> Result<MetricsLog, Failure> {
        let mut kept = String::new();
        if resumed && path.exists() {
            let old = files::read_limited(path, "--log file", 1 << 30).map_err(Failure::Message)?;
            for line in String::from_utf8_lossy(&old).lines() {
                let trained = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["epoch"].as_u64())
                    .is_some_and(|e| e as usize <= epoch);
                if trained {
                    kept += line;
                    kept.push('\n');
                }
            }
        }
        files::write_atomically(path, kept.as_bytes()).map_err(Failure::Message)?;
        let file = files::open_append(path).map_err(Failure::Message)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    fn push(&mut self, record: &serde_json::Value) -> Result<(), String> {
        use std::io::Write;
        writeln!(self.file, "{record}")
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("cannot write `{}`: {e}", self.path.display()))
    }
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
    if let Some(l) = r.val_loss {
        line += &format!("  val {l:.6}{}", percent(r.val_accuracy));
    }
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
