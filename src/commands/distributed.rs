//! `nabla train --distributed` and `nabla bench --distributed` under `mpirun`: which ranks
//! this process runs with, what only rank 0 does, and the start-up check that every rank runs
//! the same thing.
//!
//! Every rank parses the same flags, loads the same model and data and initialises the same
//! parameters from the seed; the loop ([`nabla_runtime::train`]) splits each batch between
//! them. Rank 0 alone prints, logs, plots, checkpoints and saves; the others run silently. A
//! rank that fails ends the whole job (`MPI_Abort`), so that none is left waiting in a
//! collective; a rank that dies is noticed by `mpirun`, which ends the others.

use std::sync::atomic::{AtomicBool, Ordering};

use nabla_runtime::collective::{Collective, agree, fingerprint};
use nabla_runtime::train::{ModelInfo, Settings, Store};

use super::{Failure, Loaded};

/// The ranks `--distributed` asks for: MPI's, in a build with the `mpi` feature; one process
/// otherwise.
pub fn ranks(distributed: bool) -> Result<Box<dyn Collective>, Failure> {
    if !distributed {
        return Ok(Box::new(nabla_runtime::Alone));
    }
    let ranks = join()?;
    if ranks.rank() > 0 {
        FOLLOWER.store(true, Ordering::Relaxed);
        super::mute_stdout();
    }
    Ok(ranks)
}

#[cfg(feature = "mpi")]
fn join() -> Result<Box<dyn Collective>, Failure> {
    let ranks = nabla_runtime::collective::Mpi::initialize().map_err(Failure::Message)?;
    Ok(Box::new(ranks))
}

#[cfg(not(feature = "mpi"))]
fn join() -> Result<Box<dyn Collective>, Failure> {
    Err(Failure::Message(
        "`--distributed` needs a nabla built with MPI: install Open MPI and libclang (`.ci/install-mpi` does), then `cargo build --release --features mpi`, and start it with `mpirun -n N target/release/nabla train FILE --distributed`".into(),
    ))
}

/// Set on every rank but 0, which stay silent.
static FOLLOWER: AtomicBool = AtomicBool::new(false);

/// Whether this process prints and writes files: one process, or rank 0 of a distributed run.
pub fn leads() -> bool {
    !FOLLOWER.load(Ordering::Relaxed)
}

/// The threads each rank's kernels use: `--threads` when given, else the cores shared among
/// the ranks on this host (Open MPI and MPICH say how many there are).
pub fn threads(ranks: &dyn Collective, flags: &super::PassFlags) -> usize {
    match (ranks.size(), flags.threads) {
        (1, _) | (_, Some(_)) => flags.threads(),
        _ => threads_per_rank(flags.threads()),
    }
}

fn threads_per_rank(cores: usize) -> usize {
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(1);
    (cores / local.max(1)).max(1)
}

/// Stops the job, naming the first rank whose nabla version, model, settings or starting
/// parameters differ from rank 0's.
pub fn check_agreement(
    ranks: &dyn Collective,
    loaded: &Loaded,
    settings: &Settings,
    info: &ModelInfo,
    store: &Store,
) -> Result<(), Failure> {
    if ranks.size() == 1 {
        return Ok(());
    }
    let mut parameters = Vec::new();
    let names = info.params.iter().map(|p| &p.name);
    for name in names.chain(info.states.iter().map(|s| &s.0)) {
        let buffer = &store[name];
        parameters.extend((0..buffer.len()).flat_map(|i| buffer.get(i).to_le_bytes()));
    }
    let values = [
        (
            "nabla version",
            fingerprint(env!("CARGO_PKG_VERSION").as_bytes()),
        ),
        ("model file", fingerprint(loaded.source.as_bytes())),
        (
            "training settings",
            fingerprint(format!("{settings:?}").as_bytes()),
        ),
        ("starting parameters", fingerprint(&parameters)),
    ];
    agree(ranks, &values).map_err(Failure::Message)
}

/// Reports `failure` (every rank's, named after rank 0) and, in a distributed run, ends every
/// rank of the job.
pub fn fail(ranks: &dyn Collective, failure: Failure) -> Failure {
    if ranks.size() == 1 {
        return failure;
    }
    if ranks.rank() > 0 {
        eprint!("rank {}: ", ranks.rank());
    }
    failure.report();
    ranks.abort(1)
}
