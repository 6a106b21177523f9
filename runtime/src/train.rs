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
    /// Parameters: name, element count, initialiser.
    pub params: Vec<(String, usize, Init)>,
    /// Optimizer state buffers: name and element count (zero-initialised).
    pub states: Vec<(String, usize)>,
    /// How to read the `prediction` output.
    pub prediction: PredictionKind,
    /// The buffer names and betas of bias corrections, when the optimizer has them.
    pub bias_correction: Option<BiasCorrection>,
    /// The name of the learning-rate input.
    pub lr_name: String,
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
}

/// Builds programs for a batch size. Implemented by the compiler; the loop only calls it.
pub trait Compile {
    /// Forward, backward and update: outputs `loss` (before the update) and `prediction`.
    fn train_step(&mut self, batch: usize) -> Result<Program, String>;
    /// Forward only: outputs `loss` and `prediction`.
    fn evaluate(&mut self, batch: usize) -> Result<Program, String>;
    /// Forward without targets: output `prediction`.
    fn predict(&mut self, batch: usize) -> Result<Program, String>;
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
    /// The learning rate used in the epoch.
    pub lr: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// Parameters, optimizer state and scalar inputs, by buffer name.
pub type Store = HashMap<String, Buffer>;

/// Initialises every parameter from its initialiser (in order, from `seed`) and zeroes the
/// optimizer state; an error when the memory cannot be had.
pub fn init_store(info: &ModelInfo, seed: u64, elem: Elem) -> Result<Store, String> {
    let mut rng = Rng::seeded(seed);
    let mut store = Store::new();
    for (name, len, init) in &info.params {
        let buffer = Buffer::try_from_fn(*len, elem, |i| init.draw(i, &mut rng))
            .map_err(|e| format!("parameter `{name}`: {e}"))?;
        store.insert(name.clone(), buffer);
    }
    for (name, len) in &info.states {
        let buffer =
            Buffer::try_zeros(*len, elem).map_err(|e| format!("optimizer state `{name}`: {e}"))?;
        store.insert(name.clone(), buffer);
    }
    Ok(store)
}

/// Checks that `data` feeds every input (and every target, unless `inputs_only`) with rows of
/// the right size and valid class labels.
pub fn validate(info: &ModelInfo, data: &Dataset, inputs_only: bool) -> Result<(), String> {
    for feed in info.feeds.iter().filter(|f| !(inputs_only && f.target)) {
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
            return Err(format!(
                "{}: label {v} of example {i} is not a class index in 0..{classes}",
                data.origin
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
        }?;
        let inputs = info
            .feeds
            .iter()
            .map(|f| {
                let buffer = Buffer::try_zeros(batch * f.row_len, self.elem);
                buffer
                    .map(|b| (f.name.clone(), b))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let exe = Executable::new(program).map_err(|e| e.to_string())?;
        self.programs.insert(batch, (exe, inputs));
        Ok(())
    }

    /// Copies the examples `rows` into the batch buffers and runs the program (compiled on
    /// first use of this batch size).
    fn run(
        &mut self,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        data: &Dataset,
        rows: &[usize],
        store: &mut Store,
    ) -> Result<&Executable, String> {
        let batch = rows.len();
        self.compile(compile, info, batch)?;
        let (exe, inputs) = self.programs.get_mut(&batch).expect("compiled above");
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
#[derive(Default)]
struct Tally {
    loss: f64,
    correct: usize,
    examples: usize,
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
        (info.prediction != PredictionKind::Regression)
            .then(|| self.correct as f64 / self.examples.max(1) as f64)
    }
}

/// How many predictions in the batch match their targets.
fn correct(info: &ModelInfo, prediction: &Buffer, data: &Dataset, rows: &[usize]) -> usize {
    let Some(target) = info
        .feeds
        .iter()
        .find(|f| f.target)
        .and_then(|f| data.column(&f.name))
    else {
        return 0;
    };
    let per_row = prediction.len() / rows.len().max(1);
    rows.iter()
        .enumerate()
        .filter(|&(slot, &row)| {
            let label = target.values[row * target.row_len];
            let expected = match info.prediction {
                PredictionKind::Classes => label as usize,
                _ => usize::from(label > 0.5),
            };
            info.prediction
                .class_of(per_row, |i| prediction.get(slot * per_row + i))
                == Some(expected)
        })
        .count()
}

/// Training and optional test data.
pub struct Data<'a> {
    /// Examples to train on.
    pub train: &'a Dataset,
    /// Examples to evaluate after every epoch.
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

/// What the caller hears during training.
pub struct Hooks<'a> {
    /// Called after the first step (epoch 0) and after every epoch.
    pub on_report: &'a mut dyn FnMut(&Report),
    /// Called after every step.
    pub on_batch: &'a mut dyn FnMut(&Progress),
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

/// Trains, calling `on_report` after the first step (epoch 0: the first batch's loss before any
/// update) and after every epoch, and `on_batch(done, total)` after every step.
pub fn train(
    info: &ModelInfo,
    settings: &Settings,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: Data,
    hooks: Hooks,
) -> Result<(), String> {
    let (train_data, test_data) = (data.train, data.test);
    let (on_report, on_batch) = (hooks.on_report, hooks.on_batch);
    let start = Instant::now();
    let mut rng = Rng::seeded(settings.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..train_data.rows).collect();
    let batch = settings.batch.max(1);
    let total_steps = total_steps(settings, train_data.rows)?;
    let mut trainer = Runner::new(ProgramKind::Train, settings.elem);
    let mut tester = Runner::new(ProgramKind::Evaluate, settings.elem);
    let mut step = 0;
    let mut epoch = 0;
    insert_step_scalars(info, settings.elem, store);
    while step < total_steps {
        let lr = settings.schedule.rate(settings.lr, epoch);
        rng.shuffle(&mut order);
        let mut tally = Tally::default();
        for chunk in order.chunks(batch) {
            if step == total_steps {
                break;
            }
            feed_step_scalars(info, lr, step, store);
            let exe = trainer.run(compile, info, train_data, chunk, store)?;
            if step == 0 {
                let mut first = Tally::default();
                first.add(info, exe, train_data, chunk);
                on_report(&Report {
                    epoch: 0,
                    step: 0,
                    loss: first.loss(),
                    accuracy: first.accuracy(info),
                    test_loss: None,
                    test_accuracy: None,
                    lr,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            tally.add(info, exe, train_data, chunk);
            step += 1;
            on_batch(&Progress {
                step,
                total: total_steps,
                running_loss: tally.loss(),
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        epoch += 1;
        let (test_loss, test_accuracy) = match test_data {
            Some(test) => {
                let (l, a) = evaluate_with(&mut tester, compile, info, store, test)?;
                (Some(l), a)
            }
            None => (None, None),
        };
        on_report(&Report {
            epoch,
            step,
            loss: tally.loss(),
            accuracy: tally.accuracy(info),
            test_loss,
            test_accuracy,
            lr,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(())
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
        trainer.run(compile, info, data, &rows, store)?;
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
        let exe = runner.run(compile, info, data, chunk, store)?;
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
        let exe = runner.run(compile, info, data, chunk, store)?;
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
