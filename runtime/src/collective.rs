//! The processes of a data-parallel run (its *ranks*) and the collective operations they take
//! part in: every rank calls the same collectives in the same order, or the job hangs, so the
//! training loop decides everything a collective depends on from values every rank shares.
//!
//! [`Alone`] is one process (every collective is the identity); [`Threads`] runs ranks as
//! threads of one process, so that the distributed loop is tested without MPI; `Mpi` (cargo
//! feature `mpi`) is the real thing, over the system's MPI library.

#[cfg(feature = "mpi")]
mod mpi;
mod threads;

#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use threads::Threads;

/// A group of processes that sum buffers together.
pub trait Collective {
    /// This process's index, from 0.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Replaces `values` on every rank by their elementwise sum over all ranks.
    fn sum_f32(&self, values: &mut [f32]);
    /// [`Collective::sum_f32`] in double precision.
    fn sum_f64(&self, values: &mut [f64]);
    /// Every rank's `value`, in rank order.
    fn gather(&self, value: u64) -> Vec<u64>;
    /// Ends every process of the job with exit status `code`: a rank that fails must not leave
    /// the others waiting in a collective.
    fn abort(&self, code: i32) -> !;
}

/// One process: nothing to sum with.
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn gather(&self, value: u64) -> Vec<u64> {
        vec![value]
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Checks that every rank agrees with rank 0 on each named value (the nabla version, the
/// model, the initial parameters), naming the first rank that does not and what differs.
pub fn agree(ranks: &dyn Collective, values: &[(&str, u64)]) -> Result<(), String> {
    for &(what, value) in values {
        let all = ranks.gather(value);
        if let Some(rank) = all.iter().position(|&v| v != all[0]) {
            return Err(format!(
                "rank {rank} does not agree with rank 0 on the {what}: every rank must run the same nabla build with the same model, flags and data"
            ));
        }
    }
    Ok(())
}

/// The part of `rows` that rank `rank` of `size` takes: consecutive, sizes differing by at
/// most one, the earlier ranks taking the smaller parts.
pub fn shard<T>(rows: &[T], rank: usize, size: usize) -> &[T] {
    let size = size.max(1);
    let at = |r: usize| rows.len() * r / size;
    &rows[at(rank)..at(rank + 1)]
}

/// A 64-bit FNV-1a hash of `bytes`, stable across builds and machines (unlike `std`'s
/// hashers), for [`agree`].
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_rows_once_in_order() {
        let rows: Vec<usize> = (0..10).collect();
        let parts: Vec<&[usize]> = (0..3).map(|r| shard(&rows, r, 3)).collect();
        assert_eq!(parts, [&[0, 1, 2][..], &[3, 4, 5], &[6, 7, 8, 9]]);
        assert_eq!(shard(&rows, 0, 1), &rows[..]);
    }

    #[test]
    fn thread_ranks_sum_and_gather_and_disagreement_names_the_rank() {
        let results = Threads::run(3, |ranks| {
            let mut v = vec![ranks.rank() as f32, 1.0];
            ranks.sum_f32(&mut v);
            let mut w = vec![0.5f64 * ranks.rank() as f64];
            ranks.sum_f64(&mut w);
            let gathered = ranks.gather(10 + ranks.rank() as u64);
            let same = agree(ranks, &[("model", 7)]);
            let differ = agree(
                ranks,
                &[("model", 7), ("seed", u64::from(ranks.rank() == 2))],
            );
            (v, w, gathered, same, differ)
        });
        for (v, w, gathered, same, differ) in results {
            assert_eq!(v, [3.0, 3.0]);
            assert_eq!(w, [1.5]);
            assert_eq!(gathered, [10, 11, 12]);
            assert_eq!(same, Ok(()));
            assert!(
                differ
                    .unwrap_err()
                    .starts_with("rank 2 does not agree with rank 0 on the seed")
            );
        }
    }
}
