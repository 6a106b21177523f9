//! Training runs on disk, so that a run can be stopped and resumed exactly.
//!
//! A checkpoint is one safetensors file: the parameters under their own names (so any
//! checkpoint also serves as a weights file), the optimizer state (`w#momentum`), the
//! early-stopping best parameters (`best/w`), and, in the header's metadata, the run's
//! [`Position`] and the settings it must keep ([`Run`]). One file written atomically means a
//! checkpoint is always whole and consistent: there is no moment at which the parameters of one
//! step sit beside the position of another.

use std::collections::HashMap;
use std::path::Path;

use crate::checkpoint::{self, Tensor};
use crate::train::{MAX_BATCH, MAX_EPOCHS, MAX_STEPS, ModelInfo, Position, State, Store, numel};
use crate::{Buffer, Elem};

/// The metadata key of the run's settings.
const RUN_KEY: &str = "nabla.run";
/// The metadata key of the run's position.
const POSITION_KEY: &str = "nabla.position";
/// The prefix of the best parameters' tensor names.
const BEST_PREFIX: &str = "best/";

/// The settings a resumed run keeps, so that it goes on as the same run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    /// The model's name.
    pub model: String,
    /// The optimizer, as the model file writes it.
    pub optimizer: String,
    /// The seed.
    pub seed: u64,
    /// Examples per step.
    pub batch: usize,
    /// The base learning rate.
    pub lr: f64,
    /// The epochs the run was asked for (absent with `steps`, and in older checkpoints).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// The steps the run was asked for instead of epochs.
    #[serde(default)]
    pub steps: Option<usize>,
}

impl Run {
    /// Checks the settings with the rules of the DSL and the flags, naming the first field
    /// that breaks them.
    fn check(&self) -> Result<(), String> {
        let bad = |field: &str, value: String, rule: &str| {
            Err(format!("its `{field}` is {value}; it must be {rule}"))
        };
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return bad("batch", self.batch.to_string(), "from 1 to 16,777,216");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", self.lr.to_string(), "a finite number of 0 or more");
        }
        if self.seed > u32::MAX as u64 {
            return bad("seed", self.seed.to_string(), "from 0 to 4,294,967,295");
        }
        if let Some(e) = self.epochs.filter(|e| !(1..=MAX_EPOCHS).contains(e)) {
            return bad("epochs", e.to_string(), "from 1 to 16,777,216");
        }
        if let Some(s) = self.steps.filter(|s| !(1..=MAX_STEPS).contains(s)) {
            return bad("steps", s.to_string(), "from 1 to 2^40");
        }
        Ok(())
    }
}

/// The most ranks a checkpoint may say it was trained on.
const MAX_RANKS: usize = 1 << 20;

/// Checks that `p` is a position the run can reach: `rows` training examples in steps of
/// `batch` (see [`Run::check`]), tallies that count at most what was seen, times and
/// early-stopping counters within the epochs trained. A position written by another data set
/// or damaged fails here, naming the field, rather than training from nonsense.
pub fn check_position(
    path: &Path,
    p: &Position,
    (run, info): (&Run, &ModelInfo),
    rows: usize,
) -> Result<(), String> {
    let steps = |n: usize| format!("{n} step{}", if n == 1 { "" } else { "s" });
    let damaged = |what: String| {
        Err(format!(
            "`{}` cannot be resumed: {what}; it is damaged, or was trained on other data",
            path.display()
        ))
    };
    if p.ranks > MAX_RANKS {
        return damaged(format!(
            "its position says it was trained on {} ranks",
            p.ranks
        ));
    }
    // A data-parallel run's step takes `batch` examples on each of its ranks.
    let ranks = p.ranks.max(1);
    let batch = run.batch * ranks;
    let per_epoch = crate::train::steps_per_epoch(rows, batch, info.min_batch * ranks);
    // A run never steps past the length it was asked for (older checkpoints do not say it).
    let length = match (run.steps, run.epochs) {
        (Some(steps), _) => steps,
        (None, Some(epochs)) => epochs.saturating_mul(per_epoch),
        (None, None) => MAX_STEPS.max(MAX_EPOCHS.saturating_mul(per_epoch)),
    };
    if p.step > length || p.epoch > length {
        return damaged(format!(
            "its position says epoch {}, step {}, past the {} its run asked for",
            p.epoch,
            p.step,
            steps(length)
        ));
    }
    let Some(epoch_start) = p.epoch.checked_mul(per_epoch) else {
        return damaged(format!("its position says epoch {}", p.epoch));
    };
    let into_epoch = p.step.checked_sub(epoch_start);
    let in_epoch = p.tally.examples > 0;
    let reachable = match into_epoch {
        // Part of epoch `epoch + 1` was trained.
        Some(k) if in_epoch => (1..=per_epoch).contains(&k),
        // Epoch `epoch` ended at `step`, early when a step count ended the run mid-epoch.
        _ if !in_epoch && p.epoch == 0 => p.step == 0,
        Some(0) if !in_epoch => true,
        None if !in_epoch => epoch_start - p.step < per_epoch,
        _ => false,
    };
    if !reachable {
        return damaged(format!(
            "its position (`epoch` {}, `step` {}, {} examples in the epoch's tally) is not one a run of {} per epoch (batch {batch} over {rows} examples) reaches",
            p.epoch,
            p.step,
            p.tally.examples,
            steps(per_epoch),
        ));
    }
    if let Some(k) = into_epoch.filter(|_| in_epoch) {
        let seen = (k * batch).min(rows);
        if p.tally.examples != seen {
            return damaged(format!(
                "its tally counts {} examples after {} of the epoch, which see {seen}",
                p.tally.examples,
                steps(k)
            ));
        }
    }
    let predictions = p
        .tally
        .examples
        .saturating_mul(info.predictions_per_example());
    if p.tally.correct > predictions {
        return damaged(format!(
            "its tally counts {} correct answers out of {predictions}",
            p.tally.correct
        ));
    }
    if !(p.seconds.is_finite() && p.seconds >= 0.0) {
        return damaged(format!("its `seconds` is {}", p.seconds));
    }
    if p.best_epoch > p.epoch || p.wait > p.epoch {
        return damaged(format!(
            "its early stopping (`best_epoch` {}, `wait` {}) lies beyond its epoch {}",
            p.best_epoch, p.wait, p.epoch
        ));
    }
    if let Some(best) = p.best.filter(|b| !b.is_finite()) {
        return damaged(format!("its `best` is {best}"));
    }
    Ok(())
}

/// The parameters of `store` as named tensors with their shapes.
pub fn parameters(info: &ModelInfo, store: &Store) -> Vec<Tensor> {
    info.params
        .iter()
        .map(|p| tensor(&p.name, &p.name, &p.shape, store))
        .collect()
}

fn tensor(file_name: &str, name: &str, shape: &[usize], store: &Store) -> Tensor {
    let values = store[name].to_f64().into_iter().map(|v| v as f32).collect();
    (file_name.to_string(), shape.to_vec(), values)
}

/// The most bytes a checkpoint of `info` may take: every tensor it can hold, in f64, plus a
/// generous header.
pub fn size_limit(info: &ModelInfo) -> u64 {
    let params: u64 = info.params.iter().map(|p| numel(&p.shape) as u64).sum();
    let states: u64 = info.states.iter().map(|(_, s)| numel(s) as u64).sum();
    8 * (2 * params + states) + (1 << 20)
}

/// Writes the run atomically to `path`, with `metadata` (the vocabulary of a text model)
/// besides the run's own.
pub fn save(
    path: &Path,
    info: &ModelInfo,
    store: &Store,
    (state, run): (&State, &Run),
    mut metadata: HashMap<String, String>,
) -> Result<(), String> {
    let mut tensors = parameters(info, store);
    for (name, shape) in &info.states {
        tensors.push(tensor(name, name, shape, store));
    }
    if let Some(best) = &state.best_params {
        for p in &info.params {
            tensors.push(tensor(
                &format!("{BEST_PREFIX}{}", p.name),
                &p.name,
                &p.shape,
                best,
            ));
        }
    }
    metadata.insert(RUN_KEY.to_string(), to_json(run));
    metadata.insert(POSITION_KEY.to_string(), to_json(&state.position));
    checkpoint::save(path, &tensors, metadata)
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

/// The tensors `wanted` (named with `prefix` in the file) from `tensors`, checked against the
/// shapes `info` gives them, as buffers of `elem`.
fn take<'a>(
    path: &Path,
    tensors: &[Tensor],
    wanted: impl Iterator<Item = (&'a str, &'a [usize])>,
    prefix: &str,
    elem: Elem,
) -> Result<Store, String> {
    let mut store = Store::default();
    for (name, shape) in wanted {
        let file_name = format!("{prefix}{name}");
        let (_, found, values) = tensors
            .iter()
            .find(|(n, _, _)| *n == file_name)
            .ok_or_else(|| missing(path, &file_name, tensors))?;
        if found != shape {
            return Err(format!(
                "`{}`: tensor `{file_name}` has shape {found:?}, but the model's `{name}` has shape {shape:?}",
                path.display()
            ));
        }
        let buffer = Buffer::try_from_fn(values.len(), elem, |i| values[i] as f64)
            .map_err(|e| format!("`{}`: tensor `{file_name}`: {e}", path.display()))?;
        store.insert(name.to_string(), buffer);
    }
    Ok(store)
}

fn missing(path: &Path, name: &str, tensors: &[Tensor]) -> String {
    let mut names: Vec<&str> = tensors.iter().map(|(n, _, _)| n.as_str()).collect();
    let more = names.len().saturating_sub(8);
    names.truncate(8);
    format!(
        "`{}` has no tensor `{name}` (it has: {}{})",
        path.display(),
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// The parameters saved in `path` (a weights file or a checkpoint), each checked against the
/// model by name and shape.
pub fn load_parameters(path: &Path, info: &ModelInfo, elem: Elem) -> Result<Store, String> {
    let contents = checkpoint::load(path, "weights file", size_limit(info))?;
    let wanted = info
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.shape.as_slice()));
    take(path, &contents.tensors, wanted, "", elem)
}

/// Whether `path` is `model`'s: a checkpoint of a run of `model`, or a file without a run (the
/// best epoch's parameters) whose tensors fit `info`.
pub fn belongs_to(path: &Path, info: &ModelInfo, model: &str) -> bool {
    let Ok(contents) = checkpoint::load(path, "checkpoint", size_limit(info)) else {
        return false;
    };
    match contents.metadata.get(RUN_KEY) {
        Some(run) => serde_json::from_str::<Run>(run).is_ok_and(|run| run.model == model),
        None => {
            let params = info
                .params
                .iter()
                .map(|p| (p.name.as_str(), p.shape.as_slice()));
            take(path, &contents.tensors, params, "", Elem::F32).is_ok()
        }
    }
}

/// A checkpoint written by [`save`]: parameters and optimizer state, the run's state, and its
/// settings.
pub fn load(path: &Path, info: &ModelInfo, elem: Elem) -> Result<(Store, State, Run), String> {
    let contents = checkpoint::load(path, "checkpoint", size_limit(info))?;
    let field = |key: &str| {
        contents.metadata.get(key).ok_or_else(|| {
            format!(
                "`{}` is a weights file, not a checkpoint (it has no training position); start from its parameters with `--weights` instead",
                path.display()
            )
        })
    };
    let bad =
        |e: serde_json::Error| format!("`{}` has a damaged training position: {e}", path.display());
    let run: Run = serde_json::from_str(field(RUN_KEY)?).map_err(bad)?;
    let position: Position = serde_json::from_str(field(POSITION_KEY)?).map_err(bad)?;
    run.check()
        .map_err(|e| format!("`{}` cannot be resumed: {e}", path.display()))?;
    let params = info
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.shape.as_slice()));
    let states = info.states.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
    let store = take(
        path,
        &contents.tensors,
        params.clone().chain(states),
        "",
        elem,
    )?;
    let has_best = contents
        .tensors
        .iter()
        .any(|(n, _, _)| n.starts_with(BEST_PREFIX));
    let best_params = match has_best {
        true => Some(take(path, &contents.tensors, params, BEST_PREFIX, elem)?),
        false => None,
    };
    Ok((
        store,
        State {
            position,
            best_params,
        },
        run,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Init;
    use crate::train::ParamInfo;

    fn info() -> ModelInfo {
        ModelInfo {
            feeds: vec![],
            params: vec![ParamInfo {
                name: "w".into(),
                shape: vec![2, 2],
                init: Init::Constant(0.0),
            }],
            states: vec![("w#momentum".into(), vec![2, 2])],
            prediction: crate::train::PredictionKind::Regression,
            bias_correction: None,
            lr_name: "lr".into(),
            min_batch: 1,
            reduced: 0,
            masks: vec![],
        }
    }

    #[test]
    fn a_checkpoint_round_trips_bit_for_bit_and_is_a_weights_file_too() {
        let dir = std::env::temp_dir().join(format!("nabla-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.safetensors");
        let info = info();
        let values = [0.1f64, -2.5e-7, 3.0, 1.0 / 3.0];
        let store = Store::from_iter([
            ("w".to_string(), Buffer::from_f64(&values, Elem::F32)),
            (
                "w#momentum".to_string(),
                Buffer::from_f64(&[1.0; 4], Elem::F32),
            ),
        ]);
        let state = State {
            position: Position {
                epoch: 3,
                step: 17,
                seconds: 1.25,
                best: Some(0.1 + 0.2),
                best_epoch: 2,
                ..Position::default()
            },
            best_params: Some(Store::from_iter([(
                "w".to_string(),
                Buffer::from_f64(&[9.0; 4], Elem::F32),
            )])),
        };
        let run = Run {
            model: "m".into(),
            optimizer: "sgd(0.1)".into(),
            seed: 7,
            batch: 4,
            lr: 0.1,
            epochs: Some(5),
            steps: None,
        };
        save(&path, &info, &store, (&state, &run), HashMap::new()).unwrap();
        let (loaded, loaded_state, loaded_run) = load(&path, &info, Elem::F32).unwrap();
        assert_eq!(loaded["w"].f32s(), store["w"].f32s());
        assert_eq!(loaded["w#momentum"].f32s(), store["w#momentum"].f32s());
        assert_eq!(loaded_state.position, state.position);
        assert_eq!(loaded_state.best_params.unwrap()["w"].get(0), 9.0);
        assert_eq!(loaded_run, run);
        let params = load_parameters(&path, &info, Elem::F32).unwrap();
        assert_eq!(params["w"].f32s(), store["w"].f32s());

        checkpoint::save(&path, &parameters(&info, &store), HashMap::new()).unwrap();
        let err = load(&path, &info, Elem::F32).unwrap_err();
        assert!(err.contains("is a weights file, not a checkpoint"), "{err}");
        checkpoint::save(
            &path,
            &[("w".into(), vec![4], vec![0.0; 4])],
            HashMap::new(),
        )
        .unwrap();
        let err = load_parameters(&path, &info, Elem::F32).unwrap_err();
        assert!(
            err.contains("tensor `w` has shape [4], but the model's `w` has shape [2, 2]"),
            "{err}"
        );
        checkpoint::save(
            &path,
            &[("v".into(), vec![4], vec![0.0; 4])],
            HashMap::new(),
        )
        .unwrap();
        let err = load_parameters(&path, &info, Elem::F32).unwrap_err();
        assert!(err.contains("has no tensor `w` (it has: v)"), "{err}");
    }

    #[test]
    fn a_non_finite_tally_survives_the_checkpoint_metadata() {
        for loss in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.25] {
            let position = Position {
                tally: crate::train::Tally {
                    loss,
                    correct: 1,
                    examples: 2,
                },
                ..Position::default()
            };
            let back: Position = serde_json::from_str(&to_json(&position)).unwrap();
            assert_eq!(back.tally.loss.to_bits(), loss.to_bits(), "{loss}");
        }
    }
}
