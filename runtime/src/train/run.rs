//! The loop: epochs of shuffled mini-batches from a [`State`], reporting through [`Hooks`],
//! with validation, early stopping and the divergence guard.

use std::time::Instant;

use super::contract::{Compile, ModelInfo};
use super::metrics::{Report, Tally, evaluate_with};
use super::programs::Runners;
use super::replay::Replay;
use super::settings::{
    EarlyStopping, Settings, check_batch, check_early_stopping, epoch_batches, steps_per_epoch,
    total_steps,
};
use super::step::Stepper;
use super::store::{Store, feed_step_scalars, first_non_finite, insert_step_scalars, snapshot};
use crate::Rng;
use crate::collective::Collective;
use crate::data::Dataset;

/// Training data, and the data evaluated after every epoch.
pub struct Data<'a> {
    /// Examples to train on.
    pub train: &'a Dataset,
    /// Held-out examples for `val_loss` and early stopping.
    pub validation: Option<&'a Dataset>,
    /// Examples to report on (never used to make a decision).
    pub test: Option<&'a Dataset>,
    /// The processes sharing the work: each trains on its shard of every batch and evaluates
    /// its shard of the held-out sets ([`crate::Alone`]: one process).
    pub ranks: &'a dyn Collective,
}

/// Where training stands after a step, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Steps in the whole run.
    pub total: usize,
    /// Mean training loss of the current epoch so far.
    pub running_loss: f64,
    /// Seconds since training started, test evaluations included.
    pub seconds: f64,
}

/// What the caller hears during training, and how it ends it.
pub struct Hooks<'a> {
    /// Called after the first step (epoch 0) and after every epoch.
    pub on_report: &'a mut dyn FnMut(&Report),
    /// Called after every step.
    pub on_batch: &'a mut dyn FnMut(&Progress),
    /// Called at the end of every epoch, after `on_report`, with what a checkpoint needs and
    /// whether it is the run's last epoch; an error ends training with that error.
    pub on_epoch: &'a mut dyn FnMut(&State, &Store, bool) -> Result<(), String>,
    /// Asked after every step: `true` ends training there with [`Finish::Interrupted`].
    pub stop: &'a dyn Fn() -> bool,
}

/// Where a run stands: everything besides parameters and optimizer state that a resumed run
/// needs to go on exactly as the uninterrupted run would. The shuffle of epoch `e` is a
/// function of the seed and `e` alone, so no generator state is kept.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed.
    pub step: usize,
    /// The current epoch's sums so far.
    pub tally: Tally,
    /// Seconds spent training so far, across resumptions.
    pub seconds: f64,
    /// Early stopping: the best value of the watched metric so far.
    pub best: Option<f64>,
    /// Early stopping: the epoch that reached it.
    pub best_epoch: usize,
    /// Early stopping: epochs since the last improvement.
    pub wait: usize,
    /// The ranks of the data-parallel run that wrote it (1: one process; 0 in a position no
    /// run has set yet).
    #[serde(default = "one")]
    pub ranks: usize,
}

/// Checkpoints written before data-parallel training came from one process.
fn one() -> usize {
    1
}

/// A run's state: its position and, with early stopping's `restore_best`, the best epoch's
/// parameters.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Where the run stands.
    pub position: Position,
    /// The parameters at the end of epoch `position.best_epoch`.
    pub best_params: Option<Store>,
}

/// How a training run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Every epoch or step asked for was trained.
    Completed,
    /// Early stopping ended it after `epoch`; the best epoch was `best_epoch`.
    EarlyStopped {
        /// The last epoch trained.
        epoch: usize,
        /// The epoch with the best watched value.
        best_epoch: usize,
    },
    /// [`Hooks::stop`] asked to stop.
    Interrupted,
}

/// The divergence in (0-based) `epoch` at (0-based) `step`.
fn diverged(epoch: usize, step: usize, first: NonFinite, lr: f64) -> TrainError {
    TrainError::Diverged(Divergence {
        epoch: epoch + 1,
        step: step + 1,
        first,
        lr,
    })
}

/// The first non-finite value of a diverging run.
#[derive(Clone, Debug, PartialEq)]
pub enum NonFinite {
    /// The loss.
    Loss(f64),
    /// An element of a parameter's gradient.
    Gradient {
        /// The parameter.
        param: String,
        /// The element's flat index.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// An element of a layer's state (batch normalisation's running statistics) after the
    /// step, the loss and every gradient being finite.
    LayerState {
        /// The state.
        name: String,
        /// The element's flat index.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// An element of a parameter or optimizer-state buffer after the update.
    Buffer {
        /// The buffer.
        name: String,
        /// The element's flat index.
        index: usize,
        /// Its value.
        value: f64,
    },
}

/// Training produced a non-finite value.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The epoch it happened in (from 1).
    pub epoch: usize,
    /// The step that produced it (from 1).
    pub step: usize,
    /// The first non-finite value, in the order loss, gradients, updated buffers.
    pub first: NonFinite,
    /// The learning rate of that step.
    pub lr: f64,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training diverged in epoch {}, step {}: ",
            self.epoch, self.step
        )?;
        match &self.first {
            NonFinite::Loss(v) => write!(f, "the loss is {v}"),
            NonFinite::Gradient {
                param,
                index,
                value,
            } => {
                write!(f, "the gradient of `{param}` is {value} at element {index}")
            }
            NonFinite::LayerState { name, index, value }
            | NonFinite::Buffer { name, index, value } => {
                write!(
                    f,
                    "`{name}` became {value} at element {index} in the update"
                )
            }
        }
    }
}

/// Why training failed.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainError {
    /// A non-finite loss, gradient or parameter (with the divergence guard on).
    Diverged(Divergence),
    /// Anything else: bad settings, compilation, memory, a failing hook.
    Failed(String),
}

impl From<String> for TrainError {
    fn from(message: String) -> TrainError {
        TrainError::Failed(message)
    }
}

/// The order of the examples in epoch `epoch`: a permutation that depends on `seed` and
/// `epoch` only.
pub(super) fn epoch_order(seed: u64, epoch: usize, rows: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    Rng::stream(seed, &[epoch as u64]).shuffle(&mut order);
    order
}

/// Trains from `state` (the default state for a new run, or a checkpoint's), calling the hooks
/// as they say. Steps run in epochs of shuffled mini-batches; after each epoch the validation
/// and test sets are evaluated and early stopping decides. With `settings.guard`, a non-finite
/// loss (checked every step) or parameter (checked every epoch) ends training with the first
/// non-finite tensor, found by replaying the epoch from a snapshot.
pub fn train(
    info: &ModelInfo,
    settings: &Settings,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: Data,
    state: &mut State,
    hooks: Hooks,
) -> Result<Finish, TrainError> {
    check_early_stopping(info, settings, &data)?;
    let ranks = data.ranks;
    let size = ranks.size();
    if state.position.step > 0 && state.position.ranks.max(1) != size {
        return Err(TrainError::Failed(format!(
            "the checkpoint was written by a run on {} rank(s) and this run has {size}: resume it on {0} (each rank's share of every batch, and so every step, depends on the number of ranks)",
            state.position.ranks.max(1)
        )));
    }
    state.position.ranks = size;
    let Hooks {
        on_report,
        on_batch,
        on_epoch,
        stop,
    } = hooks;
    let rows = data.train.rows;
    check_batch(settings.batch.max(1), info)?;
    // With several ranks, `batch` is each rank's: the global batch is `size` times larger, and
    // a last partial batch is trained when every rank gets at least `min_batch` of it.
    let batch = settings.batch.max(1) * size;
    let min_batch = info.min_batch * size;
    let per_epoch = steps_per_epoch(rows, batch, min_batch);
    let total = total_steps(settings, per_epoch)?;
    let started = Instant::now();
    let earlier_seconds = state.position.seconds;
    let seconds = || earlier_seconds + started.elapsed().as_secs_f64();
    let mut runners = Runners::new(settings.elem);
    let mut stepper = Stepper::new(ranks, info, settings.elem, store)?;
    let mut epoch_start = Store::default();
    insert_step_scalars(info, settings.elem, store);
    while state.position.step < total {
        // The pass over the data that `step` is in: the epoch reported so far, except after a
        // run that a step count ended mid-epoch, which reported that epoch as its last and is
        // now resumed with more steps (its next step is still in that pass's order).
        let epoch = state.position.step / per_epoch;
        let rate = move |step: usize| settings.schedule.rate(settings.lr, epoch, step);
        let order = epoch_order(settings.seed, epoch, rows);
        if settings.guard {
            snapshot(info, store, &mut epoch_start)?;
        }
        let replay = Replay {
            seed: settings.seed,
            from: state.position.step,
            snapshot: &epoch_start,
            epoch,
            rate: &rate,
        };
        let first_step = epoch * per_epoch;
        for chunk in epoch_batches(&order, batch, min_batch).skip(state.position.step - first_step)
        {
            if state.position.step == total {
                break;
            }
            let step = state.position.step;
            let lr = rate(step);
            feed_step_scalars(info, lr, step, store);
            let outcome = stepper.step(
                &mut runners.train,
                compile,
                info,
                data.train,
                chunk,
                store,
                (settings.seed, step),
                stop,
            )?;
            if step == 0 {
                on_report(&Report {
                    epoch: 0,
                    step: 0,
                    loss: outcome.tally.loss(),
                    accuracy: outcome.tally.accuracy(info),
                    test_loss: None,
                    test_accuracy: None,
                    val_loss: None,
                    val_accuracy: None,
                    lr,
                    seconds: seconds(),
                    best_epoch: None,
                });
            }
            state.position.tally.merge(&outcome.tally);
            state.position.step += 1;
            if settings.guard && outcome.loss.is_some_and(|l| !l.is_finite()) {
                if stepper.is_parallel() {
                    let first = NonFinite::Loss(outcome.loss.unwrap_or(f64::NAN));
                    return Err(diverged(epoch, step, first, lr));
                }
                let chunks = epoch_batches(&order, batch, min_batch).skip(replay.from - first_step);
                return Err(replay.run(
                    info,
                    compile,
                    &mut runners,
                    data.train,
                    chunks,
                    step,
                    store,
                ));
            }
            on_batch(&Progress {
                step: state.position.step,
                total,
                running_loss: state.position.tally.loss(),
                seconds: seconds(),
            });
            if outcome.stop {
                state.position.seconds = seconds();
                return Ok(Finish::Interrupted);
            }
        }
        if settings.guard
            && let Some((name, index, value)) = first_non_finite(info, store)
        {
            if stepper.is_parallel() {
                let first = NonFinite::Buffer { name, index, value };
                let last = state.position.step - 1;
                return Err(diverged(epoch, last, first, rate(last)));
            }
            let chunks = epoch_batches(&order, batch, min_batch).skip(replay.from - first_step);
            let last = state.position.step - 1;
            return Err(replay.run(info, compile, &mut runners, data.train, chunks, last, store));
        }
        let mut evaluate = |set: Option<&Dataset>| -> Result<(Option<f64>, Option<f64>), String> {
            match set {
                Some(set) => {
                    let runner = &mut runners.evaluate;
                    let (l, a) = evaluate_with(runner, compile, info, store, set, ranks)?;
                    Ok((Some(l), a))
                }
                None => Ok((None, None)),
            }
        };
        let (val_loss, val_accuracy) = evaluate(data.validation)?;
        let (test_loss, test_accuracy) = evaluate(data.test)?;
        let tally = std::mem::take(&mut state.position.tally);
        state.position.epoch = epoch + 1;
        state.position.seconds = seconds();
        let mut report = Report {
            epoch: state.position.epoch,
            step: state.position.step,
            loss: tally.loss(),
            accuracy: tally.accuracy(info),
            test_loss,
            test_accuracy,
            val_loss,
            val_accuracy,
            // The rate of the epoch's last step.
            lr: rate(state.position.step.saturating_sub(1)),
            seconds: state.position.seconds,
            best_epoch: None,
        };
        let stopped = match &settings.early_stopping {
            Some(es) => {
                let stopped = watch(es, &report, info, store, state);
                report.best_epoch = Some(state.position.best_epoch);
                stopped
            }
            None => None,
        };
        on_report(&report);
        on_epoch(
            state,
            store,
            stopped.is_some() || state.position.step >= total,
        )?;
        if let Some(finish) = stopped {
            restore_best(info, store, state);
            return Ok(finish);
        }
    }
    restore_best(info, store, state);
    Ok(Finish::Completed)
}

/// Keras' early-stopping rule after one epoch's `report`: counts epochs without improvement,
/// keeps the best parameters when asked to, and says when to stop.
pub(super) fn watch(
    es: &EarlyStopping,
    report: &Report,
    info: &ModelInfo,
    store: &Store,
    state: &mut State,
) -> Option<Finish> {
    let p = &mut state.position;
    p.wait += 1;
    let value = es.monitor.read(report).unwrap_or(f64::NAN);
    if es.improves(value, p.best) {
        p.best = Some(value);
        p.best_epoch = report.epoch;
        p.wait = 0;
        if es.restore_best {
            state.best_params = Some(
                info.params
                    .iter()
                    .map(|p| (p.name.clone(), store[&p.name].clone()))
                    .collect(),
            );
        }
        return None;
    }
    (p.wait >= es.patience).then_some(Finish::EarlyStopped {
        epoch: report.epoch,
        best_epoch: p.best_epoch,
    })
}

/// Puts the best epoch's parameters, when kept, into `store`.
pub(super) fn restore_best(info: &ModelInfo, store: &mut Store, state: &State) {
    if let Some(best) = &state.best_params {
        for p in &info.params {
            store.insert(p.name.clone(), best[&p.name].clone());
        }
    }
}
