//! Resuming a run: the checkpoint file a `--resume` path names, the settings a resumed run
//! keeps (refusing flags that would make it another run), and its position in the words every
//! message uses.

use std::path::{Path, PathBuf};

use nabla_runtime::resume::Run;
use nabla_runtime::train::{self, Settings};

use super::{Args, LAST};
use crate::commands::session::Session;
use crate::commands::{Failure, group};

/// The checkpoint file `path` names: `DIR/last.safetensors` for a directory.
pub(super) fn checkpoint_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(LAST)
    } else {
        path.to_path_buf()
    }
}

/// Takes a resumed run's settings, refusing flags that would make it a different run.
pub(super) fn adopt(
    args: &Args,
    session: &Session,
    settings: &mut Settings,
    run: &Run,
    path: &Path,
) -> Result<(), Failure> {
    let model = &session.loaded.compiled.model.name;
    let shown = path.display();
    if run.model != *model {
        return Err(Failure::Message(format!(
            "`{shown}` is a checkpoint of model `{}`, not of `{model}`",
            run.model
        )));
    }
    let optimizer = session.spec.optimizer.describe(run.lr);
    if optimizer != run.optimizer {
        return Err(Failure::Message(format!(
            "`{shown}` was trained with `{}`, but train block `{}` uses `{optimizer}`; resume with the optimizer the run started with",
            run.optimizer, session.spec.name
        )));
    }
    let differs = |flag: &str, given: String, saved: String| {
        Failure::Message(format!(
            "`{flag} {given}` differs from the checkpoint's {saved}; a resumed run keeps its seed, batch and learning rate so that it goes on as the same run"
        ))
    };
    if let Some(seed) = args.seed.filter(|s| *s != run.seed) {
        return Err(differs(
            "--seed",
            seed.to_string(),
            format!("seed {}", run.seed),
        ));
    }
    if let Some(batch) = args.batch.filter(|b| *b as usize != run.batch) {
        return Err(differs(
            "--batch",
            batch.to_string(),
            format!("batch {}", run.batch),
        ));
    }
    if let Some(lr) = args.lr.filter(|l| *l != run.lr) {
        return Err(differs(
            "--lr",
            lr.to_string(),
            format!("learning rate {}", run.lr),
        ));
    }
    settings.seed = run.seed;
    settings.batch = run.batch;
    settings.lr = run.lr;
    if args.epochs.is_none() && args.steps.is_none() {
        // The run goes on to the length it was asked for, not the train block's.
        match (run.epochs, run.steps) {
            (_, Some(steps)) => settings.steps = Some(steps),
            (Some(epochs), None) => {
                settings.epochs = epochs;
                settings.steps = None;
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// Where a run stands, in the words of every message that names it: `in epoch 2, after step
/// 38` within an epoch, `after epoch 3, step 120` between epochs.
pub(super) fn position(p: &train::Position) -> String {
    match p.tally.examples {
        0 => format!("after epoch {}, step {}", p.epoch, group(p.step)),
        _ => format!("in epoch {}, after step {}", p.epoch + 1, group(p.step)),
    }
}
