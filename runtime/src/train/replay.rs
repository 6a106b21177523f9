//! Replay for the divergence guard: when a step's loss is not finite, the steps since the last
//! snapshot are run again one by one to name the culprit (the batch, the parameter, the value).

use super::contract::{Compile, ModelInfo, gradient_name};
use super::programs::Runners;
use super::run::{Divergence, NonFinite, TrainError};
use super::store::{Store, feed_step_scalars, first_non_finite};
use crate::data::Dataset;

/// What it takes to find the first non-finite tensor of an epoch: the buffers as they were at
/// step `from`, and the learning rate of each step.
pub(super) struct Replay<'s> {
    pub(super) seed: u64,
    pub(super) from: usize,
    pub(super) snapshot: &'s Store,
    pub(super) epoch: usize,
    pub(super) rate: &'s dyn Fn(usize) -> f64,
}

impl Replay<'_> {
    /// Restores the snapshot and re-runs steps `from..=failed` (bit for bit what ran before),
    /// checking the loss, then every gradient, then every updated buffer, before each step's
    /// update; the first non-finite value found is the divergence.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run<'c>(
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
                lr: (self.rate)(step),
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
            let mut layer_states = Vec::new();
            for p in &info.params {
                let Some(g) = exe.output(&gradient_name(&p.name)) else {
                    layer_states.push(p.name.clone());
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
            feed_step_scalars(info, (self.rate)(step), step, store);
            if let Err(e) = runners.train.run(compile, info, data, chunk, store, draw) {
                return TrainError::Failed(e);
            }
            if let Some((name, index, value)) = first_non_finite(info, store) {
                let first = if layer_states.contains(&name) {
                    NonFinite::LayerState { name, index, value }
                } else {
                    NonFinite::Buffer { name, index, value }
                };
                return diverged(step, first);
            }
        }
        let loss = f64::NAN;
        diverged(failed, NonFinite::Loss(loss))
    }
}
