//! Ranks as threads of one process: the distributed training loop, tested without MPI. Sums
//! are taken in rank order, so every rank gets the same bits, as MPI's reductions give them.

use std::sync::{Arc, Barrier, Mutex};

use super::Collective;

/// One rank of a group of threads made by [`Threads::run`].
pub struct Threads {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

/// What the ranks exchange: each rank's values as bits, in its slot.
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u64>>>,
}

impl Threads {
    /// Runs `work` on `size` threads, one rank each, and returns their results in rank order.
    /// A rank that panics or aborts panics the caller.
    pub fn run<R: Send>(size: usize, work: impl Fn(&Threads) -> R + Sync) -> Vec<R> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
        });
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..size)
                .map(|rank| {
                    let ranks = Threads {
                        rank,
                        size,
                        shared: Arc::clone(&shared),
                    };
                    let work = &work;
                    scope.spawn(move || work(&ranks))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a rank panicked"))
                .collect()
        })
    }

    /// Every rank's `bits`, in rank order, once all have given theirs.
    fn exchange(&self, bits: Vec<u64>) -> Vec<Vec<u64>> {
        self.shared.slots.lock().expect("no rank panicked")[self.rank] = bits;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().expect("no rank panicked").clone();
        // Nobody writes its slot again before every rank has read them all.
        self.shared.barrier.wait();
        all
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32]) {
        let all = self.exchange(values.iter().map(|v| u64::from(v.to_bits())).collect());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all
                .iter()
                .map(|rank| f32::from_bits(rank[i] as u32))
                .reduce(|a, b| a + b)
                .expect("at least one rank");
        }
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let all = self.exchange(values.iter().map(|v| v.to_bits()).collect());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all
                .iter()
                .map(|rank| f64::from_bits(rank[i]))
                .reduce(|a, b| a + b)
                .expect("at least one rank");
        }
    }

    fn gather(&self, value: u64) -> Vec<u64> {
        self.exchange(vec![value])
            .into_iter()
            .map(|v| v[0])
            .collect()
    }

    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted the job with status {code}", self.rank)
    }
}
