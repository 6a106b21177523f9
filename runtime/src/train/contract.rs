//! The contract between the compiler and the training loop: what the loop is told about a
//! model, as plain data (the buffers to feed and initialise, how to read predictions), and the
//! [`Compile`] trait through which it asks for a program per batch size.

use crate::{Init, Program};

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
    #[inline]
    pub fn class_of(self, len: usize, value: impl Fn(usize) -> f64) -> Option<usize> {
        match self {
            PredictionKind::Classes if len == 0 => Some(0),
            PredictionKind::Classes => {
                // The first of the largest values; each value read once.
                let mut best = (0, value(0));
                for i in 1..len {
                    let v = value(i);
                    if v > best.1 {
                        best = (i, v);
                    }
                }
                Some(best.0)
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
    /// The fewest examples a train step can take (2 with batch normalisation over features,
    /// whose unbiased variance of one example is undefined; else 1). A last partial batch
    /// with fewer is left out of each epoch, and a smaller `batch` is refused.
    pub min_batch: usize,
    /// Elements a data-parallel step sums over ranks ([`REDUCED`]): every trained
    /// parameter's gradient, then every updated layer state.
    pub reduced: usize,
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
    /// Data-parallel training's local step at `batch` (this rank's shard): forward and
    /// backward, outputs `loss` and `prediction`, and every parameter's gradient and updated
    /// layer state, times the scalar input [`SHARE`], written into its part of the packed
    /// buffer [`REDUCED`] ([`ModelInfo::reduced`] elements).
    fn local_step(&mut self, batch: usize) -> Result<Program, String>;
    /// Data-parallel training's update from the sums in [`REDUCED`]: the optimizer's step and
    /// the layer state, the same on every rank.
    fn update(&mut self) -> Result<Program, String>;
    /// The bytes an evaluation program's temporaries take at `batch`, estimated without
    /// compiling it (an upper bound).
    fn evaluation_bytes(&mut self, batch: usize) -> Result<u64, String>;
}

/// The most examples evaluation and prediction run at once.
pub const EVAL_BATCH: usize = 1000;

/// What evaluation's temporaries may take: a batch of a model whose activations are large (a
/// transformer's attention scores grow with the square of its context) is made smaller.
pub const EVAL_MEMORY: u64 = 256 << 20;

/// Examples per evaluation or prediction batch: up to [`EVAL_BATCH`], as many as keep the
/// temporaries within [`EVAL_MEMORY`], at least one.
pub fn evaluation_batch(compile: &mut dyn Compile) -> Result<usize, String> {
    let (one, two) = (compile.evaluation_bytes(1)?, compile.evaluation_bytes(2)?);
    let per_example = two.saturating_sub(one).max(1);
    let affordable = EVAL_MEMORY.saturating_sub(one) / per_example;
    Ok((affordable as usize).clamp(1, EVAL_BATCH))
}

/// What a data-parallel step sums over ranks (gradients, layer state), packed into one buffer
/// so that one all-reduce sums it.
pub const REDUCED: &str = "#reduced";

/// The scalar input of a data-parallel local step: the rank's examples over the global batch's.
pub const SHARE: &str = "#share";

/// The output name of parameter `param`'s gradient in [`Compile::gradients`] programs.
pub fn gradient_name(param: &str) -> String {
    format!("gradient of {param}")
}
