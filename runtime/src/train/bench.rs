//! What `nabla bench` times: steps of the real loop's programs on synthetic data.

use std::time::Instant;

use super::contract::{Compile, ModelInfo};
use super::programs::{ProgramKind, Runner};
use super::settings::{Settings, check_batch};
use super::step::Stepper;
use super::store::{Store, feed_step_scalars, insert_step_scalars};
use crate::collective::Collective;
use crate::data::Dataset;
use crate::{KernelNote, Rng};

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
                source: None,
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
/// on the first `settings.batch` examples of `data` on each of `ranks` (no shuffling, no
/// metrics). Returns the compilation's seconds, each timed step's (and, over several ranks,
/// the seconds of its all-reduce), and with `profile` each kernel's note and its mean seconds
/// per step, timed in extra steps of their own (so that the clock reads around every kernel
/// leave the step times alone).
#[allow(clippy::too_many_arguments)]
pub fn time_steps(
    info: &ModelInfo,
    settings: &Settings,
    compile: &mut dyn Compile,
    store: &mut Store,
    data: &Dataset,
    (warmup, steps): (usize, usize),
    profile: bool,
    ranks: &dyn Collective,
) -> Result<Timing, String> {
    let mut trainer = Runner::new(ProgramKind::Train, settings.elem);
    insert_step_scalars(info, settings.elem, store);
    check_batch(settings.batch.min(data.rows), info)?;
    let rows: Vec<usize> = (0..(settings.batch * ranks.size()).min(data.rows)).collect();
    let mut stepper = Stepper::new(ranks, info, settings.elem, store)?;
    let started = Instant::now();
    stepper.compile(&mut trainer, compile, info, &rows)?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let mut step_seconds = Vec::with_capacity(steps);
    let mut reduce_seconds = Vec::new();
    let mut step = |trainer: &mut Runner, k: usize| -> Result<(f64, Option<f64>), String> {
        feed_step_scalars(info, settings.lr, k, store);
        let started = Instant::now();
        let draw = (settings.seed, k);
        stepper.step(trainer, compile, info, data, &rows, store, draw, &|| false)?;
        Ok((started.elapsed().as_secs_f64(), stepper.reduce_seconds()))
    };
    for k in 0..warmup + steps {
        let (seconds, reducing) = step(&mut trainer, k)?;
        if k >= warmup {
            step_seconds.push(seconds);
            reduce_seconds.extend(reducing);
        }
    }
    let mut kernels = None;
    if profile && ranks.size() == 1 {
        trainer.executable(rows.len()).profile();
        for k in warmup + steps..warmup + 2 * steps {
            step(&mut trainer, k)?;
        }
        let profiled = trainer
            .executable(rows.len())
            .profiled()
            .unwrap_or_default();
        kernels = Some(
            profiled
                .into_iter()
                .map(|(note, seconds)| (note.clone(), seconds / steps as f64))
                .collect(),
        );
    }
    Ok(Timing {
        compile_seconds,
        step_seconds,
        reduce_seconds,
        kernels,
    })
}

/// What [`time_steps`] measured.
pub struct Timing {
    /// Seconds to compile the train step.
    pub compile_seconds: f64,
    /// Each timed step's seconds.
    pub step_seconds: Vec<f64>,
    /// Over several ranks, the seconds each timed step spent in its all-reduce (waiting for
    /// the slowest rank included).
    pub reduce_seconds: Vec<f64>,
    /// With profiling, each kernel's note and mean seconds per step, in program order.
    pub kernels: Option<Vec<(KernelNote, f64)>>,
}
