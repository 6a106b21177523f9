//! One train step, in one process or over the ranks of a data-parallel run, and what the loop
//! learns from it.
//!
//! Data-parallel (PyTorch DDP's scheme): every rank holds the same parameters; each global
//! batch (`batch` examples per rank) is split into consecutive shards, one per rank
//! ([`shard`]); each rank runs the compiler's local step on its shard, which writes its
//! gradients and new layer state, weighed by its share of the batch, into one packed buffer;
//! one all-reduce sums that buffer, and every rank applies the same update to the sums. The
//! buffer
//! carries three more numbers in the same call, so that every decision the loop takes after a
//! step (the loss it checks, the accuracy it reports, whether Ctrl-C asked to stop) is the
//! same on every rank and no rank is left waiting in a collective: the loss weighed by the
//! share, the correct predictions, and the stop request.

use super::contract::{Compile, ModelInfo, REDUCED, SHARE};
use super::metrics::{Tally, correct};
use super::programs::{ProgramKind, Runner};
use super::store::Store;
use crate::collective::{Collective, shard};
use crate::data::Dataset;
use crate::{Buffer, Elem, Executable};

/// What a step tells the loop: the same on every rank.
pub(super) struct Outcome {
    /// The mean loss over the global batch.
    pub loss: Option<f64>,
    /// The step's loss and correct predictions over the global batch.
    pub tally: Tally,
    /// Whether some rank (or the one process) was asked to stop.
    pub stop: bool,
}

/// Runs train steps: the one-process train program, or the local step, all-reduce and update
/// of a data-parallel run.
pub(super) enum Stepper<'a> {
    Alone,
    Parallel(Box<Parallel<'a>>),
}

/// A data-parallel run's programs and packed buffer.
pub(super) struct Parallel<'a> {
    ranks: &'a dyn Collective,
    local: Runner,
    update: Option<Executable>,
    /// The seconds the last step's all-reduce took.
    reduce_seconds: f64,
}

impl<'a> Stepper<'a> {
    /// One process when `ranks` has one; else data-parallel over them, with the packed buffer
    /// and the share added to `store`.
    pub(super) fn new(
        ranks: &'a dyn Collective,
        info: &ModelInfo,
        elem: Elem,
        store: &mut Store,
    ) -> Result<Stepper<'a>, String> {
        if ranks.size() == 1 {
            return Ok(Stepper::Alone);
        }
        let packed = Buffer::try_zeros(info.reduced + EXTRA, elem)
            .map_err(|e| format!("the buffer summed over ranks: {e}"))?;
        store.insert(REDUCED.into(), packed);
        let share = Buffer::try_zeros(1, elem).map_err(|e| e.to_string())?;
        store.insert(SHARE.into(), share);
        Ok(Stepper::Parallel(Box::new(Parallel {
            ranks,
            local: Runner::new(ProgramKind::LocalStep, elem),
            update: None,
            reduce_seconds: 0.0,
        })))
    }

    /// Whether steps run over several ranks.
    pub(super) fn is_parallel(&self) -> bool {
        matches!(self, Stepper::Parallel(_))
    }

    /// Over several ranks, the seconds the last step's all-reduce took.
    pub(super) fn reduce_seconds(&self) -> Option<f64> {
        match self {
            Stepper::Alone => None,
            Stepper::Parallel(parallel) => Some(parallel.reduce_seconds),
        }
    }

    /// Compiles the programs a step over the global batch `rows` runs, before the first step.
    pub(super) fn compile(
        &mut self,
        train: &mut Runner,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        rows: &[usize],
    ) -> Result<(), String> {
        match self {
            Stepper::Alone => train.compile(compile, info, rows.len()),
            Stepper::Parallel(parallel) => {
                let local = shard(rows, parallel.ranks.rank(), parallel.ranks.size());
                parallel.local.compile(compile, info, local.len())?;
                parallel.update(compile).map(|_| ())
            }
        }
    }

    /// Trains on the global batch `rows` (in one process with `train`'s programs), drawing
    /// dropout masks for `(seed, step)`; `stop` is this process's stop request.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &mut self,
        train: &mut Runner,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        data: &Dataset,
        rows: &[usize],
        store: &mut Store,
        (seed, step): (u64, usize),
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, String> {
        match self {
            Stepper::Alone => {
                let exe = train.run(compile, info, data, rows, store, Some((seed, step)))?;
                let mut tally = Tally::default();
                tally.add(info, exe, data, rows);
                Ok(Outcome {
                    loss: exe.output("loss").map(|l| l.get(0)),
                    tally,
                    stop: stop(),
                })
            }
            Stepper::Parallel(parallel) => {
                parallel.step(compile, info, data, rows, store, (seed, step), stop)
            }
        }
    }
}

/// The packed buffer's elements after the compiled parts: the weighed loss, the correct
/// predictions, the stop request.
const EXTRA: usize = 3;

impl Parallel<'_> {
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        compile: &mut dyn Compile,
        info: &ModelInfo,
        data: &Dataset,
        rows: &[usize],
        store: &mut Store,
        (seed, step): (u64, usize),
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, String> {
        let (rank, size) = (self.ranks.rank(), self.ranks.size());
        let local = shard(rows, rank, size);
        let share = local.len() as f64 / rows.len() as f64;
        store
            .get_mut(SHARE)
            .expect("inserted by Stepper::new")
            .write_f64(&[share]);
        let draw = (mask_seed(seed, rank), step);
        let exe = self
            .local
            .run(compile, info, data, local, store, Some(draw))?;
        let loss = exe.output("loss").map_or(0.0, |l| l.get(0));
        let right = exe
            .output("prediction")
            .map_or(0, |p| correct(info, p, data, local));
        let packed = store.get_mut(REDUCED).expect("inserted by Stepper::new");
        let at = info.reduced;
        let extra = [loss * share, right as f64, f64::from(u8::from(stop()))];
        let started = std::time::Instant::now();
        match packed.elem() {
            Elem::F32 => {
                let values = packed.f32s_mut();
                for (slot, v) in values[at..].iter_mut().zip(extra) {
                    *slot = v as f32;
                }
                self.ranks.sum_f32(values);
            }
            Elem::F64 => {
                let values = packed.f64s_mut();
                values[at..].copy_from_slice(&extra);
                self.ranks.sum_f64(values);
            }
        }
        self.reduce_seconds = started.elapsed().as_secs_f64();
        let summed = [packed.get(at), packed.get(at + 1), packed.get(at + 2)];
        self.update(compile)?
            .run(&mut [store])
            .map_err(|e| e.to_string())?;
        let mut tally = Tally::default();
        tally.add_step(summed[0], summed[1] as usize, rows.len());
        Ok(Outcome {
            loss: Some(summed[0]),
            tally,
            stop: summed[2] > 0.0,
        })
    }
}

impl Parallel<'_> {
    /// The update program, compiled on first use.
    fn update(&mut self, compile: &mut dyn Compile) -> Result<&mut Executable, String> {
        if self.update.is_none() {
            let program = compile.update()?;
            self.update = Some(Executable::new(program).map_err(|e| e.to_string())?);
        }
        Ok(self.update.as_mut().expect("compiled above"))
    }
}

/// The seed of rank `rank`'s dropout masks: the run's own on rank 0 (so that one rank draws as
/// one process does), another on each of the others, so that no two ranks drop the same units
/// ([`crate::Rng::stream`] mixes the seed, so nearby seeds draw unrelated masks).
fn mask_seed(seed: u64, rank: usize) -> u64 {
    seed.wrapping_add((rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}
