//! What `train`, `eval` and `predict` share: a checked model with its training configuration,
//! its programs, data loading, and loading saved parameters.

use std::path::{Path, PathBuf};

use nabla_compiler::model::Role;
use nabla_compiler::programs::ModelPrograms;
use nabla_dsl::{TrainSpec, Validation};
use nabla_runtime::data::{self, DataSource, Dataset, Split};
use nabla_runtime::text::{VOCABULARY_KEY, Vocabulary};
use nabla_runtime::train::{ModelInfo, Store};
use nabla_runtime::{Elem, checkpoint, resume};

use super::{Failure, Loaded, load_file, memory_diagnostic};

/// The arguments of commands that run saved parameters.
#[derive(clap::Args)]
pub struct WeightsArgs {
    /// The model file.
    pub file: PathBuf,
    /// Parameters saved by `nabla train --save`.
    #[arg(long)]
    pub weights: PathBuf,
    /// The `train` block to use (default: the first).
    #[arg(long)]
    pub config: Option<String>,
    /// JSON output, one object per line.
    #[arg(long)]
    pub json: bool,
}

impl WeightsArgs {
    /// The session and its stored parameters.
    pub fn open(&self) -> Result<(Session, Store), Failure> {
        let session = open(&self.file, self.config.as_deref())?;
        let store = session.load_weights(&self.weights)?;
        Ok((session, store))
    }
}

/// A model ready to train or run.
pub struct Session {
    /// The checked file, with its source.
    pub loaded: Loaded,
    /// The chosen training configuration.
    pub spec: TrainSpec,
    /// Its programs.
    pub programs: ModelPrograms,
    /// What the runtime needs to know.
    pub info: ModelInfo,
    /// The model file's directory, for relative data paths.
    pub base: PathBuf,
}

/// Checks `file` and picks its `train` block `config` (the first when not named).
pub fn open(file: &Path, config: Option<&str>) -> Result<Session, Failure> {
    let loaded = load_file(file)?;
    let trains = &loaded.compiled.trains;
    let spec = match config {
        Some(name) => trains.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = trains.iter().map(|t| t.name.as_str()).collect();
            Failure::Message(format!("`{}` has no train block named `{name}` (it has: {})", file.display(), names.join(", ")))
        })?,
        None => trains.first().cloned().ok_or_else(|| {
            Failure::Message(format!("`{}` has no `train` block; add one saying where the data is, e.g. `train default {{ data = mnist(\"../data/mnist\") }}`", file.display()))
        })?,
    };
    let mut programs = ModelPrograms::new(
        loaded.compiled.model.clone(),
        spec.optimizer.clone(),
        Elem::F32,
    )
    .with_eval(loaded.compiled.eval_model.clone())
    .with_generation(loaded.compiled.generate_model.clone());
    programs.threads = super::every_core();
    let info = programs.info().map_err(Failure::Message)?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Session {
        loaded,
        spec,
        programs,
        info,
        base,
    })
}

impl Session {
    fn role_name(&self, role: Role) -> &str {
        self.loaded
            .compiled
            .model
            .inputs
            .iter()
            .find(|i| i.role == role)
            .map_or("", |i| i.name.as_str())
    }

    /// Loads a data source for this model, checking it feeds every input (and target unless
    /// `inputs_only`).
    pub fn data(
        &self,
        source: &DataSource,
        split: Split,
        inputs_only: bool,
    ) -> Result<Dataset, Failure> {
        let seed = self.spec.seed.unwrap_or(0) + if split == Split::Test { 1 } else { 0 };
        let data = data::load(
            source,
            split,
            self.role_name(Role::Input),
            self.role_name(Role::Target),
            &self.base,
            seed,
        )
        .map_err(|e| Failure::Message(e.0))?;
        nabla_runtime::train::validate(&self.info, &data, inputs_only).map_err(Failure::Message)?;
        Ok(data)
    }

    /// The test data: the `test` setting, else MNIST's test split, else none.
    pub fn test_data(&self) -> Result<Option<Dataset>, Failure> {
        match (&self.spec.test, &self.spec.data) {
            (Some(source), _) => self.data(source, Split::Test, false).map(Some),
            (None, Some(source @ DataSource::Mnist { .. })) => {
                self.data(source, Split::Test, false).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The training data.
    pub fn train_data(&self) -> Result<Dataset, Failure> {
        let source = self.spec.data.as_ref().ok_or_else(|| {
            Failure::Message(format!(
                "train block `{}` has no `data` setting",
                self.spec.name
            ))
        })?;
        self.data(source, Split::Train, false)
    }

    /// Fails with a located error when running at `batch` needs more memory than the machine
    /// has available.
    pub fn check_memory(&self, batch: usize) -> Result<(), Failure> {
        let memory = self.programs.memory(batch).map_err(Failure::Message)?;
        let what = format!("training at batch {batch}");
        match memory_diagnostic(&self.loaded, &memory, &what, false) {
            Some(d) => Err(Failure::Diagnostics(self.loaded.render(&[d]))),
            None => Ok(()),
        }
    }

    /// A store holding the parameters saved in `path` (a weights file or a checkpoint), each
    /// checked against the model by name and shape.
    pub fn load_weights(&self, path: &Path) -> Result<Store, Failure> {
        resume::load_parameters(path, &self.info, Elem::F32).map_err(Failure::Message)
    }

    /// The vocabulary saved with the weights in `path` of a model trained on text, if any.
    pub fn vocabulary(&self, path: &Path) -> Result<Option<Vocabulary>, Failure> {
        let contents = checkpoint::load(path, "weights file", resume::size_limit(&self.info))
            .map_err(Failure::Message)?;
        contents
            .metadata
            .get(VOCABULARY_KEY)
            .map(|v| {
                Vocabulary::from_metadata(v)
                    .map_err(|e| Failure::Message(format!("`{}`: {e}", path.display())))
            })
            .transpose()
    }

    /// The training data and, when the train block asks for it, the validation data: a held-out
    /// fraction of the training data (chosen with the seed) or a source of its own.
    pub fn train_and_validation_data(
        &self,
        seed: u64,
    ) -> Result<(Dataset, Option<Dataset>), Failure> {
        let train = self.train_data()?;
        match &self.spec.validation {
            None => Ok((train, None)),
            Some(Validation::Fraction(f)) => {
                let (train, validation) = train.hold_out(*f, seed).map_err(Failure::Message)?;
                Ok((train, Some(validation)))
            }
            Some(Validation::Data(source)) => {
                Ok((train, Some(self.data(source, Split::Test, false)?)))
            }
        }
    }
}
