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
use crate::train::{ModelInfo, Position, State, Store, numel};
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
    let contents = checkpoint::load(path, size_limit(info))?;
    let wanted = info
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.shape.as_slice()));
    take(path, &contents.tensors, wanted, "", elem)
}

/// A checkpoint written by [`save`]: parameters and optimizer state, the run's state, and its
/// settings.
pub fn load(path: &Path, info: &ModelInfo, elem: Elem) -> Result<(Store, State, Run), String> {
    let contents = checkpoint::load(path, size_limit(info))?;
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
}
