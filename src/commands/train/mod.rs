//! `nabla train FILE`: trains with natively compiled steps, printing one line (or JSON object)
//! per epoch, and saves the parameters; checkpoints, resumes, stops early, guards against
//! divergence, saves on Ctrl-C, logs metrics and draws them.
//!
//! A run is a few named steps ([`run`]): its settings from the flags and the train block,
//! restored from a checkpoint or initialised, its data, the loop with its hooks, and what it
//! leaves behind. [`report`] is what the hooks show and write as the loop goes.

mod outputs;
mod report;
mod resumed;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use nabla_runtime::data::Dataset;
use nabla_runtime::resume::{self, Run};
use nabla_runtime::text::VOCABULARY_KEY;
use nabla_runtime::train::{self, Finish, NonFinite, Report, Settings, State, Store, TrainError};
use nabla_runtime::{Collective, Elem, Schedule, checkpoint};

use super::distributed;
use super::session::{Session, open};
use super::{DEFAULT_BATCH, Failure, Outcome, PassFlags, count, group, plot};
use outputs::{check_outputs, check_overwrites};
use report::{BatchProgress, EpochReports};
use resumed::{adopt, checkpoint_file, position};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// The `train` block to use (default: the first).
    #[arg(long)]
    config: Option<String>,
    /// Passes over the training data (1 to 16,777,216).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=train::MAX_EPOCHS as u64))]
    epochs: Option<u64>,
    /// Total steps instead of epochs (1 to 2^40).
    #[arg(long, conflicts_with = "epochs", value_parser = clap::value_parser!(u64).range(1..=train::MAX_STEPS as u64))]
    steps: Option<u64>,
    /// Examples per step (1 to 16,777,216).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=train::MAX_BATCH as u64))]
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
    /// Replace a `--save` file, a `--checkpoint` directory's checkpoint or a `--log` file that
    /// is not this model's (without it, such files are refused).
    #[arg(long)]
    overwrite: bool,
    /// Keep training through a non-finite loss or parameter instead of stopping.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Train data-parallel over the ranks of an MPI job (`mpirun -n N nabla train FILE
    /// --distributed`): `--batch` examples per rank each step, one all-reduce of the gradients;
    /// rank 0 prints and writes every file. Needs a build with `--features mpi`.
    #[arg(long)]
    distributed: bool,
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
    let ranks = distributed::ranks(args.distributed)?;
    let args = if distributed::leads() {
        args
    } else {
        Args {
            json: false,
            quiet: true,
            log_every: None,
            checkpoint: None,
            every: None,
            save: None,
            log: None,
            plot: None,
            ..args
        }
    };
    train_on(args, &*ranks).map_err(|failure| distributed::fail(&*ranks, failure))
}

/// [`run`] on `ranks`.
fn train_on(args: Args, ranks: &dyn Collective) -> Outcome {
    check_outputs(&args)?;
    let mut session = open(&args.file, args.config.as_deref())?;
    check_overwrites(&args, &session)?;
    session.programs.passes = args.passes.passes();
    session.programs.threads = distributed::threads(ranks, &args.passes);
    let mut settings = settings(&args, &session)?;
    session.check_memory(settings.batch)?;
    let planned_batch = settings.batch;
    let (mut store, mut state, resumed) = restore_or_initialise(&args, &session, &mut settings)?;
    if settings.batch != planned_batch {
        session.check_memory(settings.batch)?;
    }
    distributed::check_agreement(ranks, &session.loaded, &settings, &session.info, &store)?;
    let data = RunData::load(&session, &settings, &state, resumed.as_ref(), ranks.size())?;
    let run = Run {
        model: session.loaded.compiled.model.name.clone(),
        optimizer: session.spec.optimizer.describe(settings.lr),
        seed: settings.seed,
        batch: settings.batch,
        lr: settings.lr,
        epochs: settings.steps.is_none().then_some(settings.epochs),
        steps: settings.steps,
    };
    if !args.json && distributed::leads() {
        header(&args, &session, &settings, &data, &state, ranks.size());
    }
    let (finish, records) = train_with_hooks(
        &args,
        &mut session,
        &settings,
        &data,
        &run,
        (&mut store, &mut state),
        ranks,
    )?;
    if finish == Finish::Interrupted {
        return interrupted_run(
            &args,
            &session,
            &store,
            (&state, &run, data.metadata),
            (data.total_steps, ranks.size()),
        );
    }
    conclude(
        &args,
        &mut session,
        &settings,
        &store,
        finish,
        &records,
        data.metadata,
    )
}

/// A run's settings: the flags over the train block over the defaults. A piecewise schedule
/// gives the learning rates itself, so `--lr` is refused with it.
fn settings(args: &Args, session: &Session) -> Result<Settings, Failure> {
    let spec = &session.spec;
    if let (Some(_), Schedule::Piecewise { .. }) = (args.lr, &spec.schedule) {
        return Err(Failure::Message(format!(
            "`--lr` has no effect with train block `{}`: its schedule `{}` gives the learning rates themselves; edit its values instead",
            spec.name, spec.schedule
        )));
    }
    Ok(Settings {
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
    })
}

/// The buffers and position to start from: a checkpoint's (`--resume`, which also fixes the
/// seed, batch and learning rate), or fresh ones from the seed (with `--weights`' parameters).
/// A resumed run comes with its file and its settings as saved.
fn restore_or_initialise(
    args: &Args,
    session: &Session,
    settings: &mut Settings,
) -> Result<(Store, State, Option<Resumed>), Failure> {
    match &args.resume {
        Some(path) => {
            let path = checkpoint_file(path);
            let (store, state, run) =
                resume::load(&path, &session.info, Elem::F32).map_err(Failure::Message)?;
            adopt(args, session, settings, &run, &path)?;
            Ok((store, state, Some((path, run))))
        }
        None => {
            let mut store = train::init_store(&session.info, settings.seed, settings.elem)
                .map_err(Failure::Message)?;
            if let Some(path) = &args.weights {
                store.extend(session.load_weights(path)?);
            }
            Ok((store, State::default(), None))
        }
    }
}

/// A resumed run: its checkpoint file and the settings saved in it.
type Resumed = (PathBuf, Run);

/// A run's data and how long it runs.
struct RunData {
    train: Dataset,
    validation: Option<Dataset>,
    test: Option<Dataset>,
    /// What every saved file carries: a text model's vocabulary, for `nabla generate`.
    metadata: HashMap<String, String>,
    total_steps: usize,
    total_epochs: usize,
}

impl RunData {
    /// Loads the data and counts the steps (of `settings.batch` examples on each of `ranks`),
    /// refusing a run with none left and a resumed position that this data cannot reach.
    fn load(
        session: &Session,
        settings: &Settings,
        state: &State,
        resumed: Option<&Resumed>,
        ranks: usize,
    ) -> Result<RunData, Failure> {
        let (train, validation) = session.train_and_validation_data(settings.seed)?;
        let metadata = train
            .vocabulary
            .iter()
            .map(|v| (VOCABULARY_KEY.to_string(), v.to_metadata()))
            .collect();
        let test = session.test_data()?;
        let (batch, min_batch) = (settings.batch * ranks, session.info.min_batch * ranks);
        let per_epoch = train::steps_per_epoch(train.rows, batch, min_batch);
        if per_epoch == 0 {
            return Err(Failure::Message(format!(
                "{} has {} training example{}, too few for batch normalisation over features, which needs {min_batch} per step",
                train.origin,
                train.rows,
                if train.rows == 1 { "" } else { "s" }
            )));
        }
        let left_out = train.rows % batch;
        if left_out > 0 && left_out < min_batch && batch >= min_batch && distributed::leads() {
            eprintln!(
                "note: each epoch's last batch would hold {left_out} example, too few for batch normalisation over features (its unbiased variance is undefined); it is left out of every epoch, a different one each time (PyTorch stops with an error)"
            );
        }
        let total_steps = train::total_steps(settings, per_epoch).map_err(Failure::Message)?;
        if let Some((path, run)) = resumed {
            resume::check_position(path, &state.position, (run, &session.info), train.rows)
                .map_err(Failure::Message)?;
        }
        if state.position.step >= total_steps {
            let (asked, flag, done) = match settings.steps {
                Some(s) => (count(s, "step"), "--steps", state.position.step),
                None => (
                    count(settings.epochs, "epoch"),
                    "--epochs",
                    state.position.epoch,
                ),
            };
            return Err(Failure::Message(format!(
                "nothing left to train: the checkpoint's run stands {}, the end of the {asked} asked for; train it further with `{flag} N`, N above {}",
                position(&state.position),
                group(done),
            )));
        }
        let total_epochs = match settings.steps {
            Some(_) => total_steps.div_ceil(per_epoch),
            None => settings.epochs,
        };
        Ok(RunData {
            train,
            validation,
            test,
            metadata,
            total_steps,
            total_epochs,
        })
    }
}

/// The loop, with its hooks: epoch lines or JSON and the `--log` file, the progress bar,
/// checkpoints after epochs, and Ctrl-C. Returns how the loop ended and every epoch's record.
fn train_with_hooks(
    args: &Args,
    session: &mut Session,
    settings: &Settings,
    data: &RunData,
    run: &Run,
    (store, state): (&mut Store, &mut State),
    ranks: &dyn Collective,
) -> Result<(Finish, Vec<serde_json::Value>), Failure> {
    let interrupted = interrupt_flag();
    super::stop_when_unread(interrupted);
    let bar = report::progress_bar(args, data.total_steps, state.position.step);
    let mut reports = EpochReports::new(args, settings, data.total_epochs, state, bar.as_ref())?;
    let mut progress = BatchProgress::new(bar.as_ref());
    let every = args.every.unwrap_or(1) as usize;
    let info = &session.info;
    let mut on_epoch = |state: &State, store: &Store, last: bool| -> Result<(), String> {
        let Some(dir) = &args.checkpoint else {
            return Ok(());
        };
        let p = &state.position;
        if settings.early_stopping.is_some() && p.best_epoch == p.epoch {
            let params = resume::parameters(info, store);
            checkpoint::save(&dir.join(BEST), &params, data.metadata.clone())?;
        }
        if p.epoch.is_multiple_of(every) || last {
            resume::save(
                &dir.join(LAST),
                info,
                store,
                (state, run),
                data.metadata.clone(),
            )?;
        }
        Ok(())
    };
    let stop = || interrupted.load(Ordering::SeqCst);
    let result = train::train(
        &session.info,
        settings,
        &mut session.programs,
        store,
        train::Data {
            train: &data.train,
            validation: data.validation.as_ref(),
            test: data.test.as_ref(),
            ranks,
        },
        state,
        train::Hooks {
            on_report: &mut |r: &Report| reports.report(r),
            on_batch: &mut |p| progress.batch(p),
            on_epoch: &mut on_epoch,
            stop: &stop,
        },
    );
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let (records, last_line) = reports.finish()?;
    let finish = match result {
        Ok(finish) => finish,
        Err(TrainError::Failed(e)) => return Err(Failure::Message(e)),
        Err(TrainError::Diverged(d)) => return Err(Failure::Message(diverged(args, &d))),
    };
    if !last_line.is_empty() {
        out!("{last_line}");
    }
    Ok((finish, records))
}

/// What a finished run leaves: the early-stopping line, the saved parameters, the plots.
fn conclude(
    args: &Args,
    session: &mut Session,
    settings: &Settings,
    store: &Store,
    finish: Finish,
    records: &[serde_json::Value],
    metadata: HashMap<String, String>,
) -> Outcome {
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
        let params = resume::parameters(&session.info, store);
        checkpoint::save(path, &params, metadata).map_err(Failure::Message)?;
        if !args.json {
            out!(
                "saved {} to {}",
                count(session.loaded.compiled.model.param_count(), "parameter"),
                path.display()
            );
        }
    } else if args.checkpoint.is_none() && !args.json && distributed::leads() {
        // Nothing is written unless asked (README says why), but nothing is lost silently.
        eprintln!(
            "note: the trained parameters were not saved: give `--save PATH` (or `--checkpoint DIR`) to keep them"
        );
    }
    if let Some(dir) = &args.plot {
        let written = plot::after_training(session, store, records, dir)?;
        if !args.json {
            out!("plotted {}", written.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first line: what is trained on what (over how many ranks), and from where.
fn header(
    args: &Args,
    session: &Session,
    settings: &Settings,
    data: &RunData,
    state: &State,
    ranks: usize,
) {
    let optimizer = session.spec.optimizer.describe(settings.lr);
    let (train_data, validation, test_data) =
        (&data.train, data.validation.as_ref(), data.test.as_ref());
    let schedule = super::schedule_and_clipping(&settings.schedule, &session.spec.optimizer);
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
    if ranks > 1 {
        out!(
            "data-parallel over {ranks} ranks: batch {} per rank, {} a step",
            settings.batch,
            settings.batch * ranks
        );
    }
    if let Some(path) = &args.resume {
        out!("resuming {}, {}", path.display(), position(&state.position));
    }
    if let Some(path) = &args.weights {
        out!("starting from the parameters in {}", path.display());
    }
}

/// How long after the first Ctrl-C a second one is taken as the same: `timeout -s INT` and
/// some terminals deliver one interrupt twice, which must not skip the save.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A flag set by the first Ctrl-C, so that training stops after the current step; a second
/// Ctrl-C, after [`INTERRUPT_GRACE`], exits at once with code 130.
fn interrupt_flag() -> &'static AtomicBool {
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let installed = ctrlc::set_handler(|| {
        let first = *FIRST.get_or_init(std::time::Instant::now);
        if INTERRUPTED.swap(true, Ordering::SeqCst) && first.elapsed() > INTERRUPT_GRACE {
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
    (total_steps, ranks): (usize, usize),
) -> Outcome {
    let at = format!(
        "interrupted {} of {}",
        position(&state.position),
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
            let (launch, distributed) = match ranks {
                1 => (String::new(), ""),
                n => (format!("mpirun -n {n} "), " --distributed"),
            };
            eprintln!(
                "{at}: saved the run to {}; continue it with `{launch}nabla train {}{distributed} --resume {}`",
                path.display(),
                args.file.display(),
                resume_from.display()
            );
        }
        None if distributed::leads() => eprintln!(
            "{at}: nothing saved (give --checkpoint DIR or --save PATH to keep interrupted work)"
        ),
        None => {}
    }
    Ok(ExitCode::from(130))
}

/// The divergence guard's message: what went non-finite, where, and what to do about its
/// cause; the learning rate is blamed only where it can be the cause.
fn diverged(args: &Args, d: &train::Divergence) -> String {
    let advice = match &d.first {
        NonFinite::LayerState { .. } => "the loss and every gradient were finite, so the learning rate is not the cause: the batch's values overflow batch normalisation's running statistics".to_string(),
        NonFinite::Loss(_) if d.step == 1 => "the parameters were as initialised, so the learning rate is not the cause: the model's formula produces it on this batch (a log or division of a value that reaches 0, a square root of a negative)".to_string(),
        _ => format!(
            "the learning rate was {}; a lower one (e.g. `--lr {}`) often helps",
            d.lr,
            d.lr / 10.0
        ),
    };
    let mut message = format!("{d}\n  {advice}, and `--allow-nonfinite` trains on regardless");
    if let Some(dir) = &args.checkpoint {
        let last = dir.join(LAST);
        if last.exists() {
            message += &format!("\n  the last good checkpoint is kept in {}", last.display());
        }
    }
    message
}
