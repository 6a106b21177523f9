//! Metrics: a step's report, the tally of a loss and correct answers over batches, and
//! evaluation and prediction over a whole data set.

use super::contract::{Compile, ModelInfo, PredictionKind};
use super::programs::{ProgramKind, Runner};
use super::store::Store;
use crate::collective::{Alone, Collective, shard};
use crate::data::Dataset;
use crate::{Buffer, Elem, Executable};
use nabla_aot::Chunk;

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
    /// The learning rate of the epoch's last step (the only one, unless a schedule counts steps).
    pub lr: f64,
    /// Seconds since training started.
    pub seconds: f64,
    /// With early stopping, the epoch whose monitored value is the best so far (this one when
    /// it improved).
    pub best_epoch: Option<usize>,
}

/// Running sums of loss and correct predictions.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Sum of per-batch mean losses weighted by batch size. A non-finite sum (a run with
    /// `--allow-nonfinite`) is saved as the text `NaN`, `inf` or `-inf`, which a JSON number
    /// cannot hold.
    #[serde(with = "any_f64")]
    pub loss: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Examples seen.
    pub examples: usize,
}

/// An `f64` in JSON that may be non-finite: a number, or its text `NaN`, `inf` or `-inf`
/// (JSON numbers cannot hold them). Checkpoints and every JSON output write it so.
pub mod any_f64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    /// `v` as a JSON value: a number, or its text.
    pub fn to_json(v: f64) -> serde_json::Value {
        match v.is_finite() {
            true => serde_json::json!(v),
            false => serde_json::json!(v.to_string()),
        }
    }

    /// The non-finite value a text names, if it names one.
    pub fn from_text(text: &str) -> Option<f64> {
        matches!(text, "NaN" | "inf" | "-inf").then(|| text.parse().expect("a float's text"))
    }

    /// Writes `v` as [`to_json`] does (serde's `with`).
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        to_json(*v).serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(f64),
        Text(String),
    }

    /// Reads a number or the text of a non-finite one (serde's `with`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Either::deserialize(d)? {
            Either::Number(v) => Ok(v),
            Either::Text(t) => {
                from_text(&t).ok_or_else(|| D::Error::custom(format!("`{t}` is not a number")))
            }
        }
    }
}

impl Tally {
    pub(super) fn add(
        &mut self,
        info: &ModelInfo,
        exe: &Executable,
        data: &Dataset,
        rows: &[usize],
    ) {
        if let Some(loss) = exe.output("loss") {
            self.loss += loss.get(0) * rows.len() as f64;
        }
        if let Some(prediction) = exe.output("prediction") {
            self.correct += correct(info, prediction, data, rows);
        }
        self.examples += rows.len();
    }

    /// Adds `other`'s sums to these.
    pub(super) fn merge(&mut self, other: &Tally) {
        self.loss += other.loss;
        self.correct += other.correct;
        self.examples += other.examples;
    }

    /// Adds a step's mean `loss` over `examples`, of which `correct` were predicted right.
    pub(super) fn add_step(&mut self, loss: f64, correct: usize, examples: usize) {
        self.loss += loss * examples as f64;
        self.correct += correct;
        self.examples += examples;
    }

    /// These sums added up over every rank.
    fn summed(&self, ranks: &dyn Collective) -> Tally {
        let mut sums = [self.loss, self.correct as f64, self.examples as f64];
        ranks.sum_f64(&mut sums);
        Tally {
            loss: sums[0],
            correct: sums[1] as usize,
            examples: sums[2] as usize,
        }
    }

    pub(super) fn loss(&self) -> f64 {
        self.loss / self.examples.max(1) as f64
    }

    pub(super) fn accuracy(&self, info: &ModelInfo) -> Option<f64> {
        let predictions = self.examples * info.predictions_per_example();
        (info.prediction != PredictionKind::Regression)
            .then(|| self.correct as f64 / predictions.max(1) as f64)
    }
}

/// How many predictions in the batch match their targets; a model predicting a class at every
/// position of a sequence makes one prediction per position.
pub(super) fn correct(
    info: &ModelInfo,
    prediction: &Buffer,
    data: &Dataset,
    rows: &[usize],
) -> usize {
    let Some(target) = info
        .feeds
        .iter()
        .find(|f| f.target)
        .and_then(|f| data.column(&f.name))
    else {
        return 0;
    };
    match prediction.elem() {
        Elem::F32 => correct_in(info, prediction.f32s(), target, rows),
        Elem::F64 => correct_in(info, prediction.f64s(), target, rows),
    }
}

/// [`correct`] over the predictions' elements, read as f64 (one match on the element type
/// per batch, not per element: a tiny model's step is a couple of microseconds).
fn correct_in<T: Copy + Into<f64>>(
    info: &ModelInfo,
    prediction: &[T],
    target: &crate::data::Column,
    rows: &[usize],
) -> usize {
    let positions = info.predictions_per_example();
    let per_row = (prediction.len() / (rows.len() * positions).max(1)).max(1);
    let kind = info.prediction;
    let mut predictions = prediction.chunks_exact(per_row);
    let mut correct = 0;
    for &row in rows {
        let labels = &target.values[row * target.row_len..][..positions];
        for (&label, values) in labels.iter().zip(predictions.by_ref()) {
            let expected = match kind {
                PredictionKind::Classes => label as usize,
                _ => usize::from(label > 0.5),
            };
            let predicted = kind.class_of(per_row, |i| values[i].into());
            correct += usize::from(predicted == Some(expected));
        }
    }
    correct
}

/// Mean loss and accuracy of the stored parameters on `data`.
pub fn evaluate(
    info: &ModelInfo,
    elem: Elem,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: &Dataset,
) -> Result<(f64, Option<f64>), String> {
    let mut runner = Runner::new(ProgramKind::Evaluate, elem);
    evaluate_with(&mut runner, compile, info, store, data, &Alone)
}

/// [`evaluate`] with programs cached in `runner`, each rank of `ranks` evaluating its shard of
/// the examples and the sums added up over ranks, so that every rank gets the whole set's
/// metrics.
pub(super) fn evaluate_with(
    runner: &mut Runner,
    compile: &mut dyn Compile,
    info: &ModelInfo,
    store: &mut Store,
    data: &Dataset,
    ranks: &dyn Collective,
) -> Result<(f64, Option<f64>), String> {
    let all: Vec<usize> = (0..data.rows).collect();
    let rows = shard(&all, ranks.rank(), ranks.size());
    let mut tally = Tally::default();
    if !rows.is_empty() {
        for chunk in rows.chunks(runner.evaluation_chunk(compile, rows.len())?) {
            runner.keep_only(chunk.len());
            let exe = runner.run(compile, info, data, chunk, store, None)?;
            tally.add(info, exe, data, chunk);
        }
    }
    let tally = tally.summed(ranks);
    Ok((tally.loss(), tally.accuracy(info)))
}

/// The prediction for every example of `data` (inputs only), row by row: in batches as large
/// as evaluation affords, or, with `batches` (ascending), cut as an exported library compiled
/// for those sizes cuts a call ([`nabla_aot::schedule`]: the same programs on the same rows,
/// padding repeating the last row).
pub fn predict(
    info: &ModelInfo,
    elem: Elem,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: &Dataset,
    batches: Option<&[usize]>,
) -> Result<Vec<Vec<f64>>, String> {
    let mut runner = Runner::new(ProgramKind::Predict, elem);
    let chunks: Vec<Chunk> = match batches {
        Some(sizes) => nabla_aot::schedule(data.rows, sizes).collect(),
        None => {
            let size = runner.evaluation_chunk(compile, data.rows)?;
            nabla_aot::schedule(data.rows, &[size]).collect()
        }
    };
    let mut out = Vec::with_capacity(data.rows);
    for Chunk { start, rows, batch } in chunks {
        let batch = if batches.is_some() { batch } else { rows };
        let padded: Vec<usize> = (0..batch).map(|i| start + i.min(rows - 1)).collect();
        runner.keep_only(batch);
        let exe = runner.run(compile, info, data, &padded, store, None)?;
        let prediction = exe
            .output("prediction")
            .ok_or("the model has no prediction")?;
        let per_row = prediction.len() / batch;
        for slot in 0..rows {
            out.push(
                (0..per_row)
                    .map(|i| prediction.get(slot * per_row + i))
                    .collect(),
            );
        }
    }
    Ok(out)
}
