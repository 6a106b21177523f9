//! The training loop: mini-batches, shuffling, metrics, test evaluation.
//!
//! It knows nothing of models or graphs. It receives plain data (which buffers to feed, which to
//! initialise, how to read predictions) and a [`Compile`] implementation that hands it a
//! program per batch size; programs are compiled once per size and cached, so the last partial
//! batch of an epoch is trained, not dropped, at the cost of one extra compilation. Inside the
//! step loop nothing is allocated: batches are copied into buffers made once per batch size.

use std::collections::HashMap;
use std::time::Instant;

use crate::data::Dataset;
use crate::{Buffer, Elem, Executable, Init, Program, Rng, Schedule};

/// How the model's prediction is read for accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionKind {
    /// Logits over classes (last axis); accuracy by argmax against class labels.
    Classes,
    /// One logit per example; positive means class 1.
    Logit,
    /// One probability per example; above 0.5 means class 1.
    Probability,
    /// Real values; no accuracy.
    Regression,
}

impl PredictionKind {
    /// The class one example's prediction stands for (`None` for regression), reading its
    /// `len` values through `value`.
    pub fn class_of(self, len: usize, value: impl Fn(usize) -> f64) -> Option<usize> {
        match self {
            PredictionKind::Classes => {
                Some((0..len).fold(0, |best, i| if value(i) > value(best) { i } else { best }))
            }
            PredictionKind::Logit => Some(usize::from(value(0) > 0.0)),
            PredictionKind::Probability => Some(usize::from(value(0) > 0.5)),
            PredictionKind::Regression => None,
        }
    }
}

/// A tensor the data feeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Feed {
    /// Its name (a dataset column of the same name feeds it).
    pub name: String,
    /// Values per example.
    pub row_len: usize,
    /// For class targets, the number of classes.
    pub classes: Option<usize>,
    /// Whether it is a target (not needed for prediction).
    pub target: bool,
}

/// Everything the loop needs to know about the model, as plain data.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Inputs and targets.
    pub feeds: Vec<Feed>,
    /// Parameters, in the model's order.
    pub params: Vec<ParamInfo>,
    /// Optimizer state buffers: name and shape (zero-initialised).
    pub states: Vec<(String, Vec<usize>)>,
    /// How to read the `prediction` output.
    pub prediction: PredictionKind,
    /// The buffer names and betas of bias corrections, when the optimizer has them.
    pub bias_correction: Option<BiasCorrection>,
    /// The name of the learning-rate input.
    pub lr_name: String,
    /// Dropout masks the train step needs, refilled every step.
    pub masks: Vec<Mask>,
}

impl ModelInfo {
    /// Predictions one example makes: one per position of a class target (a class at every
    /// step of a sequence), else one.
    pub fn predictions_per_example(&self) -> usize {
        match (self.prediction, self.feeds.iter().find(|f| f.target)) {
            (PredictionKind::Classes, Some(t)) if t.classes.is_some() => t.row_len.max(1),
            _ => 1,
        }
    }
}

/// A dropout mask: `row_len` values per example, each `1 / (1 - p)` with probability `1 - p`
/// and 0 otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    /// The input it feeds.
    pub name: String,
    /// Values per example.
    pub row_len: usize,
    /// The probability of a zero.
    pub p: f64,
}

/// The stream tag of dropout masks, apart from every epoch's shuffle.
const MASK_STREAM: u64 = 0x6d61_736b;

/// Fills the masks of `info` for step `step` of a run seeded with `seed`: mask `k` draws from
/// `Rng::stream(seed, [tag, k, step])`, so a step's masks never depend on earlier steps.
fn fill_masks(info: &ModelInfo, seed: u64, step: usize, inputs: &mut Store) {
    for (k, mask) in info.masks.iter().enumerate() {
        let mut rng = Rng::stream(seed, &[MASK_STREAM, k as u64, step as u64]);
        let kept = 1.0 / (1.0 - mask.p);
        let mut draw = || {
            if rng.uniform(0.0, 1.0) >= mask.p {
                kept
            } else {
                0.0
            }
        };
        let buffer = inputs
            .get_mut(&mask.name)
            .expect("allocated with the program");
        match buffer.elem() {
            Elem::F32 => buffer
                .f32s_mut()
                .iter_mut()
                .for_each(|v| *v = draw() as f32),
            Elem::F64 => buffer.f64s_mut().iter_mut().for_each(|v| *v = draw()),
        }
    }
}

/// A parameter as the loop sees it.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Its buffer name (`w1`, `h2.w`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// How it is initialised.
    pub init: Init,
}

/// Element count of a shape (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Adam-style bias corrections fed each step: `1 / (1 - beta^t)` into the named scalars.
#[derive(Clone, Debug)]
pub struct BiasCorrection {
    /// `(buffer name, beta)` pairs.
    pub terms: Vec<(String, f64)>,
}

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

/// Builds programs for a batch size. Implemented by the compiler; the loop only calls it.
pub trait Compile {
    /// Forward, backward and update: outputs `loss` (before the update) and `prediction`.
    fn train_step(&mut self, batch: usize) -> Result<Program, String>;
    /// Forward only: outputs `loss` and `prediction`.
    fn evaluate(&mut self, batch: usize) -> Result<Program, String>;
    /// Forward without targets: output `prediction`.
    fn predict(&mut self, batch: usize) -> Result<Program, String>;
    /// Forward and backward without an update: outputs `loss` and, per parameter `p`, its
    /// gradient as [`gradient_name`]`(p)`.
    fn gradients(&mut self, batch: usize) -> Result<Program, String>;
}

/// The output name of parameter `param`'s gradient in [`Compile::gradients`] programs.
pub fn gradient_name(param: &str) -> String {
    format!("gradient of {param}")
}

/// One line of progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Epochs completed (0: before any update).
    pub epoch: usize,
    /// Steps completed.
    pub step: usize,
    /// Mean training loss over the epoch (the first batch's loss for epoch 0).
    pub loss: f64,
    /// Training accuracy over the epoch, when the prediction has one.
    pub accuracy: Option<f64>,
    /// Test loss, with test data.
    pub test_loss: Option<f64>,
    /// Test accuracy, with test data.
    pub test_accuracy: Option<f64>,
    /// Validation loss, with validation data.
    pub val_loss: Option<f64>,
    /// Validation accuracy, with validation data.
    pub val_accuracy: Option<f64>,
    /// The learning rate used in the epoch.
    pub lr: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// Parameters, optimizer state and scalar inputs, by buffer name. Hashed with FxHash: every
/// step binds each of them by name, and SipHash's resistance to chosen keys buys nothing for
/// names the model itself declares.
pub type Store = HashMap<String, Buffer, rustc_hash::FxBuildHasher>;

/// Initialises every parameter from its initialiser (in order, from `seed`) and zeroes the
/// optimizer state; an error when the memory cannot be had.
pub fn init_store(info: &ModelInfo, seed: u64, elem: Elem) -> Result<Store, String> {
    let mut rng = Rng::seeded(seed);
    let mut store = Store::default();
    for p in &info.params {
        let buffer = Buffer::try_from_fn(numel(&p.shape), elem, |i| p.init.draw(i, &mut rng))
            .map_err(|e| format!("parameter `{}`: {e}", p.name))?;
        store.insert(p.name.clone(), buffer);
    }
    for (name, shape) in &info.states {
        let buffer = Buffer::try_zeros(numel(shape), elem)
            .map_err(|e| format!("optimizer state `{name}`: {e}"))?;
        store.insert(name.clone(), buffer);
    }
    Ok(store)
}

/// Checks that `data` feeds every input (and every target, unless `inputs_only`) with rows of
/// the right size and valid class labels.
pub fn validate(info: &ModelInfo, data: &Dataset, inputs_only: bool) -> Result<(), String> {
    for feed in info.feeds.iter().filter(|f| !(inputs_only && f.target)) {
        if let (Some(v), Some(classes)) = (&data.vocabulary, feed.classes)
            && v.tokens.len() > classes
        {
            return Err(format!(
                "{} has {} distinct tokens, but `{}` takes indices in 0..{classes}: give the model's embedding (and its output layer) {} rows",
                data.origin,
                v.tokens.len(),
                feed.name,
                v.tokens.len()
            ));
        }
        let column = data
            .column(&feed.name)
            .ok_or_else(|| format!("{} has no values for `{}`", data.origin, feed.name))?;
        if column.row_len != feed.row_len {
            return Err(format!(
                "{} gives `{}` {} value{} per example, but the model needs {}",
                data.origin,
                feed.name,
                column.row_len,
                if column.row_len == 1 { "" } else { "s" },
                feed.row_len
            ));
        }
        if let Some(classes) = feed.classes
            && let Some((i, v)) = column
                .values
                .iter()
                .enumerate()
                .find(|(_, v)| v.fract() != 0.0 || **v < 0.0 || **v >= classes as f32)
        {
            let (row, at) = (i / feed.row_len.max(1), i % feed.row_len.max(1));
            let position = if feed.row_len > 1 {
                format!(", position {at}")
            } else {
                String::new()
            };
            return Err(format!(
                "{}: `{}` value {v} of example {row}{position} is not an index in 0..{classes}",
                data.origin, feed.name
            ));
        }
    }
    if data.rows == 0 {
        return Err(format!("{} has no examples", data.origin));
    }
    Ok(())
}

/// Programs of one kind and their input buffers, one set per batch size.
struct Runner {
    kind: ProgramKind,
    elem: Elem,
    programs: HashMap<usize, (Executable, Store)>,
}

#[derive(Clone, Copy, PartialEq)]
enum ProgramKind {
    Train,
    Evaluate,
    Predict,
    Gradients,
}

impl Runner {
    fn new(kind: ProgramKind, elem: Elem) -> Runner {
        Runner {
            kind,
            elem,
            programs: HashMap::new(),
        }
    }

    /// Compiles the program for `batch` and makes its input buffers, once per batch size.
    fn compile(
        &mut self,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        batch: usize,
    ) -> Result<(), String> {
        if self.programs.contains_key(&batch) {
            return Ok(());
        }
        let program = match self.kind {
            ProgramKind::Train => compile.train_step(batch),
            ProgramKind::Evaluate => compile.evaluate(batch),
            ProgramKind::Predict => compile.predict(batch),
            ProgramKind::Gradients => compile.gradients(batch),
        }?;
        let masked = matches!(self.kind, ProgramKind::Train | ProgramKind::Gradients);
        let masks = info.masks.iter().filter(|_| masked);
        let fed = info.feeds.iter().map(|f| (&f.name, f.row_len));
        let inputs = fed
            .chain(masks.map(|m| (&m.name, m.row_len)))
            .map(|(name, row_len)| {
                let buffer = Buffer::try_zeros(batch * row_len, self.elem);
                buffer.map(|b| (name.clone(), b)).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let exe = Executable::new(program).map_err(|e| e.to_string())?;
        self.programs.insert(batch, (exe, inputs));
        Ok(())
    }

    /// Copies the examples `rows` into the batch buffers, draws the dropout masks of step
    /// `draw = (seed, step)` (train and gradient programs), and runs the program (compiled on
    /// first use of this batch size).
    fn run(
        &mut self,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        data: &Dataset,
        rows: &[usize],
        store: &mut Store,
        draw: Option<(u64, usize)>,
    ) -> Result<&Executable, String> {
        let batch = rows.len();
        self.compile(compile, info, batch)?;
        let (exe, inputs) = self.programs.get_mut(&batch).expect("compiled above");
        if let Some((seed, step)) = draw {
            fill_masks(info, seed, step, inputs);
        }
        for feed in &info.feeds {
            let (Some(column), Some(buffer)) =
                (data.column(&feed.name), inputs.get_mut(&feed.name))
            else {
                continue;
            };
            let n = feed.row_len;
            for (slot, &row) in rows.iter().enumerate() {
                let src = &column.values[row * n..(row + 1) * n];
                match self.elem {
                    Elem::F32 => buffer.f32s_mut()[slot * n..(slot + 1) * n].copy_from_slice(src),
                    Elem::F64 => buffer.f64s_mut()[slot * n..(slot + 1) * n]
                        .iter_mut()
                        .zip(src)
                        .for_each(|(d, &s)| *d = s as f64),
                }
            }
        }
        exe.run(&mut [inputs, store]).map_err(|e| e.to_string())?;
        Ok(exe)
    }
}

/// Running sums of loss and correct predictions.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Sum of per-batch mean losses weighted by batch size.
    pub loss: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Examples seen.
    pub examples: usize,
}

impl Tally {
    fn add(&mut self, info: &ModelInfo, exe: &Executable, data: &Dataset, rows: &[usize]) {
        if let Some(loss) = exe.output("loss") {
            self.loss += loss.get(0) * rows.len() as f64;
        }
        if let Some(prediction) = exe.output("prediction") {
            self.correct += correct(info, prediction, data, rows);
        }
        self.examples += rows.len();
    }

    fn loss(&self) -> f64 {
        self.loss / self.examples.max(1) as f64
    }

    fn accuracy(&self, info: &ModelInfo) -> Option<f64> {
        let predictions = self.examples * info.predictions_per_example();
        (info.prediction != PredictionKind::Regression)
            .then(|| self.correct as f64 / predictions.max(1) as f64)
    }
}

/// How many predictions in the batch match their targets; a model predicting a class at every
/// position of a sequence makes one prediction per position.
fn correct(info: &ModelInfo, prediction: &Buffer, data: &Dataset, rows: &[usize]) -> usize {
    let Some(target) = info
        .feeds
        .iter()
        .find(|f| f.target)
        .and_then(|f| data.column(&f.name))
    else {
        return 0;
    };
    let positions = info.predictions_per_example();
    let per_row = prediction.len() / (rows.len() * positions).max(1);
    let mut correct = 0;
    for (slot, &row) in rows.iter().enumerate() {
        for at in 0..positions {
            let label = target.values[row * target.row_len + at];
            let expected = match info.prediction {
                PredictionKind::Classes => label as usize,
                _ => usize::from(label > 0.5),
            };
            let first = (slot * positions + at) * per_row;
            let predicted = info
                .prediction
                .class_of(per_row, |i| prediction.get(first + i));
            correct += usize::from(predicted == Some(expected));
        }
    }
    correct
}

/// Training data, and the data evaluated after every epoch.
pub struct Data<'a> {
    /// Examples to train on.
    pub train: &'a Dataset,
    /// Held-out examples for `val_loss` and early stopping.
    pub validation: Option<&'a Dataset>,
    /// Examples to report on (never used to make a decision).
    pub test: Option<&'a Dataset>,
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
            NonFinite::Buffer { name, index, value } => {
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

/// The number of steps `settings` asks for on `rows` examples, or why it is out of range.
pub fn total_steps(settings: &Settings, rows: usize) -> Result<usize, String> {
    let batches_per_epoch = rows.div_ceil(settings.batch.max(1));
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

/// The order of the examples in epoch `epoch`: a permutation that depends on `seed` and
/// `epoch` only.
fn epoch_order(seed: u64, epoch: usize, rows: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    Rng::stream(seed, &[epoch as u64]).shuffle(&mut order);
    order
}

/// Checks that early stopping can read what it watches.
fn check_early_stopping(info: &ModelInfo, settings: &Settings, data: &Data) -> Result<(), String> {
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
    let Hooks {
        on_report,
        on_batch,
        on_epoch,
        stop,
    } = hooks;
    let rows = data.train.rows;
    let batch = settings.batch.max(1);
    let per_epoch = rows.div_ceil(batch);
    let total = total_steps(settings, rows)?;
    let started = Instant::now();
    let earlier_seconds = state.position.seconds;
    let seconds = || earlier_seconds + started.elapsed().as_secs_f64();
    let mut runners = Runners::new(settings.elem);
    let mut epoch_start = Store::default();
    insert_step_scalars(info, settings.elem, store);
    while state.position.step < total {
        let epoch = state.position.epoch;
        let lr = settings.schedule.rate(settings.lr, epoch);
        let order = epoch_order(settings.seed, epoch, rows);
        if settings.guard {
            snapshot(info, store, &mut epoch_start)?;
        }
        let replay = Replay {
            seed: settings.seed,
            from: state.position.step,
            snapshot: &epoch_start,
            epoch,
            lr,
        };
        let first_step = epoch * per_epoch;
        for chunk in order.chunks(batch).skip(state.position.step - first_step) {
            if state.position.step == total {
                break;
            }
            let step = state.position.step;
            feed_step_scalars(info, lr, step, store);
            let draw = Some((settings.seed, step));
            let exe = runners
                .train
                .run(compile, info, data.train, chunk, store, draw)?;
            let loss = exe.output("loss").map(|l| l.get(0));
            if step == 0 {
                let mut first = Tally::default();
                first.add(info, exe, data.train, chunk);
                on_report(&Report {
                    epoch: 0,
                    step: 0,
                    loss: first.loss(),
                    accuracy: first.accuracy(info),
                    test_loss: None,
                    test_accuracy: None,
                    val_loss: None,
                    val_accuracy: None,
                    lr,
                    seconds: seconds(),
                });
            }
            state.position.tally.add(info, exe, data.train, chunk);
            state.position.step += 1;
            if settings.guard && loss.is_some_and(|l| !l.is_finite()) {
                let chunks = order.chunks(batch).skip(replay.from - first_step);
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
            if stop() {
                state.position.seconds = seconds();
                return Ok(Finish::Interrupted);
            }
        }
        if settings.guard && first_non_finite(info, store).is_some() {
            let chunks = order.chunks(batch).skip(replay.from - first_step);
            let last = state.position.step - 1;
            return Err(replay.run(info, compile, &mut runners, data.train, chunks, last, store));
        }
        let mut evaluate = |set: Option<&Dataset>| -> Result<(Option<f64>, Option<f64>), String> {
            match set {
                Some(set) => {
                    let (l, a) = evaluate_with(&mut runners.evaluate, compile, info, store, set)?;
                    Ok((Some(l), a))
                }
                None => Ok((None, None)),
            }
        };
        let (val_loss, val_accuracy) = evaluate(data.validation)?;
        let (test_loss, test_accuracy) = evaluate(data.test)?;
        let tally = std::mem::take(&mut state.position.tally);
        state.position.epoch += 1;
        state.position.seconds = seconds();
        let report = Report {
            epoch: state.position.epoch,
            step: state.position.step,
            loss: tally.loss(),
            accuracy: tally.accuracy(info),
            test_loss,
            test_accuracy,
            val_loss,
            val_accuracy,
            lr,
            seconds: state.position.seconds,
        };
        on_report(&report);
        let stopped = match &settings.early_stopping {
            Some(es) => watch(es, &report, info, store, state),
            None => None,
        };
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
fn watch(
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
fn restore_best(info: &ModelInfo, store: &mut Store, state: &State) {
    if let Some(best) = &state.best_params {
        for p in &info.params {
            store.insert(p.name.clone(), best[&p.name].clone());
        }
    }
}

/// The train-step programs, and the evaluation and gradient programs, each cached by batch size.
struct Runners {
    train: Runner,
    evaluate: Runner,
    gradients: Runner,
}

impl Runners {
    fn new(elem: Elem) -> Runners {
        Runners {
            train: Runner::new(ProgramKind::Train, elem),
            evaluate: Runner::new(ProgramKind::Evaluate, elem),
            gradients: Runner::new(ProgramKind::Gradients, elem),
        }
    }
}

/// Copies every parameter and optimizer-state buffer into `snapshot`, allocating its buffers
/// on first use only.
fn snapshot(info: &ModelInfo, store: &Store, snapshot: &mut Store) -> Result<(), String> {
    let names = info
        .params
        .iter()
        .map(|p| &p.name)
        .chain(info.states.iter().map(|s| &s.0));
    for name in names {
        let buffer = &store[name];
        if !snapshot.contains_key(name) {
            let copy = Buffer::try_zeros(buffer.len(), buffer.elem())
                .map_err(|e| format!("a snapshot of `{name}` for the divergence guard: {e}"))?;
            snapshot.insert(name.clone(), copy);
        }
        snapshot
            .get_mut(name)
            .expect("inserted above")
            .copy_from(buffer);
    }
    Ok(())
}

/// The first non-finite element of a parameter or optimizer-state buffer: name, index, value.
fn first_non_finite(info: &ModelInfo, store: &Store) -> Option<(String, usize, f64)> {
    let names = info
        .params
        .iter()
        .map(|p| &p.name)
        .chain(info.states.iter().map(|s| &s.0));
    names.into_iter().find_map(|name| {
        let b = &store[name];
        b.first_non_finite().map(|i| (name.clone(), i, b.get(i)))
    })
}

/// What it takes to find the first non-finite tensor of an epoch: the buffers as they were at
/// step `from`, and that epoch's learning rate.
struct Replay<'s> {
    seed: u64,
    from: usize,
    snapshot: &'s Store,
    epoch: usize,
    lr: f64,
}

impl Replay<'_> {
    /// Restores the snapshot and re-runs steps `from..=failed` (bit for bit what ran before),
    /// checking the loss, then every gradient, then every updated buffer, before each step's
    /// update; the first non-finite value found is the divergence.
    #[allow(clippy::too_many_arguments)]
    fn run<'c>(
        self,
        info: &ModelInfo,
        compile: &mut dyn Compile,
        runners: &mut Runners,
        data: &Dataset,
        chunks: impl Iterator<Item = &'c [usize]>,
        failed: usize,
        store: &mut Store,
    ) -> TrainError {
        for (name, buffer) in self.snapshot {
            store
                .get_mut(name)
                .expect("snapshot of a store buffer")
                .copy_from(buffer);
        }
        let diverged = |step: usize, first: NonFinite| {
            TrainError::Diverged(Divergence {
                epoch: self.epoch + 1,
                step: step + 1,
                first,
                lr: self.lr,
            })
        };
        for (step, chunk) in (self.from..=failed).zip(chunks) {
            let draw = Some((self.seed, step));
            let exe = match runners
                .gradients
                .run(compile, info, data, chunk, store, draw)
            {
                Ok(exe) => exe,
                Err(e) => return TrainError::Failed(e),
            };
            if let Some(loss) = exe.output("loss").map(|l| l.get(0))
                && !loss.is_finite()
            {
                return diverged(step, NonFinite::Loss(loss));
            }
            for p in &info.params {
                let Some(g) = exe.output(&gradient_name(&p.name)) else {
                    continue;
                };
                if let Some(index) = g.first_non_finite() {
                    let value = g.get(index);
                    let param = p.name.clone();
                    return diverged(
                        step,
                        NonFinite::Gradient {
                            param,
                            index,
                            value,
                        },
                    );
                }
            }
            feed_step_scalars(info, self.lr, step, store);
            if let Err(e) = runners.train.run(compile, info, data, chunk, store, draw) {
                return TrainError::Failed(e);
            }
            if let Some((name, index, value)) = first_non_finite(info, store) {
                return diverged(step, NonFinite::Buffer { name, index, value });
            }
        }
        let loss = f64::NAN;
        diverged(failed, NonFinite::Loss(loss))
    }
}

/// Adds the scalar inputs of a train step (learning rate, bias corrections) to the store.
fn insert_step_scalars(info: &ModelInfo, elem: Elem, store: &mut Store) {
    store.insert(info.lr_name.clone(), Buffer::zeros(1, elem));
    if let Some(bc) = &info.bias_correction {
        for (name, _) in &bc.terms {
            store.insert(name.clone(), Buffer::zeros(1, elem));
        }
    }
}

/// Writes step `step`'s learning rate and bias corrections `1 / (1 - beta^(step + 1))`.
fn feed_step_scalars(info: &ModelInfo, lr: f64, step: usize, store: &mut Store) {
    let mut set = |name: &str, value: f64| {
        store
            .get_mut(name)
            .expect("inserted by insert_step_scalars")
            .write_f64(&[value]);
    };
    set(&info.lr_name, lr);
    if let Some(bc) = &info.bias_correction {
        for (name, beta) in &bc.terms {
            set(
                name,
                1.0 / (1.0 - beta.powi((step + 1).min(i32::MAX as usize) as i32)),
            );
        }
    }
}

/// `rows` examples of random data of the model's shapes, for benchmarks: standard normal
/// inputs, uniform targets in [0, 1), class labels drawn uniformly (0 when the class count is
/// not declared).
pub fn synthetic(info: &ModelInfo, rows: usize, seed: u64) -> Dataset {
    let mut rng = Rng::seeded(seed);
    let columns = info
        .feeds
        .iter()
        .map(|f| {
            let values = (0..rows * f.row_len)
                .map(|_| match (f.classes, f.target) {
                    (Some(c), _) if c < usize::MAX => rng.below(c) as f32,
                    (Some(_), _) => 0.0,
                    (None, true) => rng.uniform(0.0, 1.0) as f32,
                    (None, false) => rng.normal(0.0, 1.0) as f32,
                })
                .collect();
            crate::data::Column {
                name: f.name.clone(),
                row_len: f.row_len,
                values,
            }
        })
        .collect();
    Dataset {
        columns,
        rows,
        origin: "synthetic data".into(),
        vocabulary: None,
    }
}

/// Times training steps for benchmarks: `warmup` untimed steps, then `steps` timed ones, all
/// on the first `settings.batch` examples of `data` (no shuffling, no metrics). Returns the
/// compilation's seconds and each timed step's.
pub fn time_steps(
    info: &ModelInfo,
    settings: &Settings,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: &Dataset,
    warmup: usize,
    steps: usize,
) -> Result<(f64, Vec<f64>), String> {
    let mut trainer = Runner::new(ProgramKind::Train, settings.elem);
    insert_step_scalars(info, settings.elem, store);
    let rows: Vec<usize> = (0..settings.batch.min(data.rows)).collect();
    let started = Instant::now();
    trainer.compile(compile, info, rows.len())?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    for step in 0..warmup + steps {
        feed_step_scalars(info, settings.lr, step, store);
        let started = Instant::now();
        trainer.run(
            compile,
            info,
            data,
            &rows,
            store,
            Some((settings.seed, step)),
        )?;
        if step >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok((compile_seconds, times))
}

/// Examples per evaluation batch.
const EVAL_BATCH: usize = 1000;

/// Mean loss and accuracy of the stored parameters on `data`.
pub fn evaluate(
    info: &ModelInfo,
    elem: Elem,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: &Dataset,
) -> Result<(f64, Option<f64>), String> {
    let mut runner = Runner::new(ProgramKind::Evaluate, elem);
    evaluate_with(&mut runner, compile, info, store, data)
}

/// [`evaluate`] with programs cached in `runner`.
fn evaluate_with(
    runner: &mut Runner,
    compile: &mut dyn Compile,
    info: &ModelInfo,
    store: &mut Store,
    data: &Dataset,
) -> Result<(f64, Option<f64>), String> {
    let rows: Vec<usize> = (0..data.rows).collect();
    let mut tally = Tally::default();
    for chunk in rows.chunks(EVAL_BATCH) {
        let exe = runner.run(compile, info, data, chunk, store, None)?;
        tally.add(info, exe, data, chunk);
    }
    Ok((tally.loss(), tally.accuracy(info)))
}

/// The prediction for every example of `data` (inputs only), row by row.
pub fn predict(
    info: &ModelInfo,
    elem: Elem,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: &Dataset,
) -> Result<Vec<Vec<f64>>, String> {
    let mut runner = Runner::new(ProgramKind::Predict, elem);
    let rows: Vec<usize> = (0..data.rows).collect();
    let mut out = Vec::with_capacity(data.rows);
    for chunk in rows.chunks(EVAL_BATCH) {
        let exe = runner.run(compile, info, data, chunk, store, None)?;
        let prediction = exe
            .output("prediction")
            .ok_or("the model has no prediction")?;
        let per_row = prediction.len() / chunk.len();
        for slot in 0..chunk.len() {
            out.push(
                (0..per_row)
                    .map(|i| prediction.get(slot * per_row + i))
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(epoch: usize, val_loss: f64) -> Report {
        Report {
            epoch,
            step: epoch,
            loss: 0.0,
            accuracy: None,
            test_loss: None,
            test_accuracy: None,
            val_loss: Some(val_loss),
            val_accuracy: None,
            lr: 0.1,
            seconds: 0.0,
        }
    }

    /// A model with nothing but `masks`.
    fn bare_info(masks: Vec<Mask>) -> ModelInfo {
        ModelInfo {
            feeds: vec![],
            params: vec![],
            states: vec![],
            prediction: PredictionKind::Regression,
            bias_correction: None,
            lr_name: "lr".into(),
            masks,
        }
    }

    /// The epoch at which Keras' `EarlyStopping` would stop on this sequence, and its best.
    fn stops(es: &EarlyStopping, values: &[f64]) -> Option<Finish> {
        let info = bare_info(vec![]);
        let mut state = State::default();
        values
            .iter()
            .enumerate()
            .find_map(|(i, &v)| watch(es, &report(i + 1, v), &info, &Store::default(), &mut state))
    }

    #[test]
    fn early_stopping_follows_keras() {
        let es = EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 3,
            min_delta: 0.0,
            restore_best: false,
        };
        // Best at epoch 2; epochs 3, 4, 5 do not improve: stop after epoch 5.
        assert_eq!(
            stops(&es, &[1.0, 0.9, 0.95, 0.92, 0.91, 0.5]),
            Some(Finish::EarlyStopped {
                epoch: 5,
                best_epoch: 2
            })
        );
        // An improvement resets the count.
        assert_eq!(stops(&es, &[1.0, 0.99, 0.98, 0.97, 0.96, 0.95]), None);
        // With min_delta, improvements smaller than it do not count (Keras: current + delta < best).
        let coarse = EarlyStopping {
            min_delta: 0.05,
            ..es
        };
        assert_eq!(
            stops(&coarse, &[1.0, 0.99, 0.98, 0.97, 0.5]),
            Some(Finish::EarlyStopped {
                epoch: 4,
                best_epoch: 1
            })
        );
        // Patience 0 stops at the first epoch without improvement; NaN never improves.
        let eager = EarlyStopping { patience: 0, ..es };
        assert_eq!(
            stops(&eager, &[1.0, f64::NAN]),
            Some(Finish::EarlyStopped {
                epoch: 2,
                best_epoch: 1
            })
        );
        // Accuracies are maximised.
        let acc = EarlyStopping {
            monitor: Monitor::ValAccuracy,
            ..es
        };
        assert!(acc.improves(0.9, Some(0.8)) && !acc.improves(0.8, Some(0.9)));
    }

    #[test]
    fn dropout_masks_are_inverted_and_drawn_per_layer_and_step() {
        let mask = |name: &str| Mask {
            name: name.into(),
            row_len: 100,
            p: 0.25,
        };
        let info = bare_info(vec![mask("dropout#1"), mask("dropout#2")]);
        let draw = |seed, step| {
            let mut inputs: Store = info
                .masks
                .iter()
                .map(|m| (m.name.clone(), Buffer::zeros(1000 * m.row_len, Elem::F32)))
                .collect();
            fill_masks(&info, seed, step, &mut inputs);
            (inputs["dropout#1"].to_f64(), inputs["dropout#2"].to_f64())
        };
        let (a, b) = draw(1, 7);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!(
            (zeros - 0.25).abs() < 0.01,
            "{zeros} of the elements are dropped"
        );
        let kept = (1.0f32 / 0.75) as f64;
        assert!(
            a.iter().all(|&v| v == 0.0 || v == kept),
            "kept elements are scaled by 1/(1-p)"
        );
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!(
            (mean - 1.0).abs() < 0.01,
            "the expectation is the identity: {mean}"
        );
        assert_ne!(a, b, "each layer draws its own mask");
        assert_eq!(draw(1, 7).0, a, "a function of seed, layer and step");
        assert_ne!(draw(1, 8).0, a);
        assert_ne!(draw(2, 7).0, a);
    }

    #[test]
    fn each_epoch_shuffles_independently_of_the_others() {
        let a = epoch_order(7, 3, 100);
        assert_eq!(a, epoch_order(7, 3, 100), "a function of seed and epoch");
        assert_ne!(a, epoch_order(7, 4, 100));
        assert_ne!(a, epoch_order(8, 3, 100));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "a permutation");
    }
}
