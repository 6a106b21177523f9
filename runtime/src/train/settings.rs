//! A run's settings as the loop takes them (from a `train` block and the flags), early stopping
//! with what it monitors, and the checks that settings and data agree before a step runs.

use super::contract::{ModelInfo, PredictionKind};
use super::metrics::Report;
use super::run::Data;
use crate::{Elem, Schedule};

/// Training settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Examples per step.
    pub batch: usize,
    /// Passes over the data (ignored when `steps` is set).
    pub epochs: usize,
    /// Total steps instead of epochs.
    pub steps: Option<usize>,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Base learning rate.
    pub lr: f64,
    /// Its schedule.
    pub schedule: Schedule,
    /// Element type of the compiled programs.
    pub elem: Elem,
    /// When to stop before the last epoch.
    pub early_stopping: Option<EarlyStopping>,
    /// Whether a non-finite loss or parameter stops training (the divergence guard).
    pub guard: bool,
}

impl Settings {
    /// One epoch at `batch` and learning rate `lr`, seed 0, constant rate, f32, the divergence
    /// guard on, no early stopping: a base to change with struct update syntax.
    pub fn new(batch: usize, lr: f64) -> Settings {
        Settings {
            batch,
            epochs: 1,
            steps: None,
            seed: 0,
            lr,
            schedule: Schedule::Constant,
            elem: Elem::F32,
            early_stopping: None,
            guard: true,
        }
    }
}

/// A metric early stopping can watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// The epoch's mean training loss.
    Loss,
    /// The epoch's training accuracy.
    Accuracy,
    /// The validation loss.
    ValLoss,
    /// The validation accuracy.
    ValAccuracy,
}

impl Monitor {
    /// Every metric by its name in epoch reports, as `early_stopping(monitor = ...)` takes it.
    pub const ALL: [(&'static str, Monitor); 4] = [
        ("val_loss", Monitor::ValLoss),
        ("val_accuracy", Monitor::ValAccuracy),
        ("loss", Monitor::Loss),
        ("accuracy", Monitor::Accuracy),
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        Monitor::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("", |(n, _)| n)
    }

    /// Whether larger is better (accuracies), as Keras' `mode = "auto"` decides.
    pub fn maximise(self) -> bool {
        matches!(self, Monitor::Accuracy | Monitor::ValAccuracy)
    }

    /// Whether it needs validation data.
    pub fn needs_validation(self) -> bool {
        matches!(self, Monitor::ValLoss | Monitor::ValAccuracy)
    }

    /// Its value in a report.
    pub fn read(self, r: &Report) -> Option<f64> {
        match self {
            Monitor::Loss => Some(r.loss),
            Monitor::Accuracy => r.accuracy,
            Monitor::ValLoss => r.val_loss,
            Monitor::ValAccuracy => r.val_accuracy,
        }
    }
}

/// Keras' `EarlyStopping`: stop when `monitor` has not improved by more than `min_delta` for
/// `patience` epochs; with `restore_best`, end with the best epoch's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStopping {
    /// What to watch.
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The least change that counts as an improvement.
    pub min_delta: f64,
    /// Whether training ends with the best epoch's parameters.
    pub restore_best: bool,
}

impl EarlyStopping {
    /// Whether `value` improves on `best` (always, when there is none yet).
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => !value.is_nan(),
            Some(best) if self.monitor.maximise() => value - self.min_delta > best,
            Some(best) => value + self.min_delta < best,
        }
    }
}

/// The most examples per step, epochs and steps a run may ask for: the DSL's `train` blocks,
/// the flags and a resumed checkpoint's settings are held to the same limits.
pub const MAX_BATCH: usize = 1 << 24;
/// See [`MAX_BATCH`].
pub const MAX_EPOCHS: usize = 1 << 24;
/// See [`MAX_BATCH`].
pub const MAX_STEPS: usize = 1 << 40;

/// Refuses a `batch` smaller than the model's train step can take.
pub fn check_batch(batch: usize, info: &ModelInfo) -> Result<(), String> {
    if batch < info.min_batch {
        return Err(format!(
            "a batch of {batch} is too small for batch normalisation over features, whose unbiased variance of one example is undefined: give `--batch {}` or more",
            info.min_batch
        ));
    }
    Ok(())
}

/// The steps of an epoch of `rows` examples in batches of `batch`: a last partial batch
/// counts unless it holds fewer than `min_batch` examples (see [`epoch_batches`]).
pub fn steps_per_epoch(rows: usize, batch: usize, min_batch: usize) -> usize {
    let batch = batch.max(1);
    rows / batch + usize::from(rows % batch >= min_batch.max(1))
}

/// An epoch's shuffled `order` in batches of `batch`, leaving out a last partial batch of
/// fewer than `min_batch` examples (a batch of one under batch normalisation over features,
/// where PyTorch stops with an error).
pub fn epoch_batches(
    order: &[usize],
    batch: usize,
    min_batch: usize,
) -> impl Iterator<Item = &[usize]> {
    order
        .chunks(batch.max(1))
        .filter(move |chunk| chunk.len() >= min_batch)
}

/// The number of steps `settings` asks for with `batches_per_epoch` steps an epoch, or why it
/// is out of range.
pub fn total_steps(settings: &Settings, batches_per_epoch: usize) -> Result<usize, String> {
    match settings.steps {
        Some(steps) => Ok(steps),
        None => settings
            .epochs
            .checked_mul(batches_per_epoch)
            .ok_or_else(|| {
                format!(
                    "{} epochs of {batches_per_epoch} steps is more steps than can be counted",
                    settings.epochs
                )
            }),
    }
}

/// Checks that early stopping can read what it watches.
pub(super) fn check_early_stopping(
    info: &ModelInfo,
    settings: &Settings,
    data: &Data,
) -> Result<(), String> {
    let Some(es) = &settings.early_stopping else {
        return Ok(());
    };
    let name = es.monitor.name();
    if es.monitor.needs_validation() && data.validation.is_none() {
        return Err(format!(
            "early stopping watches `{name}`, but there is no validation data; set `validation` in the train block"
        ));
    }
    if es.monitor.maximise() && info.prediction == PredictionKind::Regression {
        return Err(format!(
            "early stopping watches `{name}`, but the model's prediction is a regression, which has no accuracy; watch a loss"
        ));
    }
    Ok(())
}
