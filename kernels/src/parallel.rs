//! The fork-join pool that splits one kernel's work over the cores. A training step makes
//! hundreds of library calls of a few to a few hundred microseconds each (the recurrent
//! layer's per-step products, the small MLP's layers), so what matters is the cost of one
//! fork and join, not throughput: handing work to a sleeping thread costs a futex wake-up and
//! a context switch on both sides (tens of microseconds), more than the work being split.
//!
//! So the pool's helpers spin for a while after each job, as OpenMP runtimes do, and park
//! only after [`SPIN`] without work; the calling thread takes parts itself instead of waiting,
//! and parts are claimed from one counter, so a helper that is slow to arrive costs nothing:
//! the caller has run its parts meanwhile. Part 0 is always the caller's (claimed as the job
//! is announced): consecutive kernels split alike then run each band on the same core, whose
//! cache holds what it wrote (on a Xeon whose L3 is as slow as DRAM, the GPT's step 3% faster
//! than when a spinning helper sometimes won part 0). Each part is one fixed piece of work
//! whoever runs it, and runs under the floating-point control register of the thread that
//! forked the job (its denormal mode, [`crate::denormals`]), so results do not depend on which
//! thread ran what.
//!
//! One job runs at a time. A call made while the pool is busy (from another thread, or from
//! inside a part) runs its parts on the calling thread.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::denormals::Control;

/// How long a helper keeps looking for work before it parks.
const SPIN: Duration = Duration::from_micros(500);

/// Parts per job, at most (they are counted in 16 bits of the claim word).
const MAX_PARTS: usize = u16::MAX as usize;

/// Runs `f(0)`, ..., `f(parts - 1)`, on up to `threads` threads (this one included), and
/// returns when all have run. A panic in a part is raised again here.
pub fn for_each_part(parts: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    if parts <= 1
        || parts > MAX_PARTS
        || threads <= 1
        || pool.helpers == 0
        || pool.busy.swap(true, Ordering::Acquire)
    {
        return (0..parts).for_each(f);
    }
    let panic = pool.run(parts, threads, f);
    pool.busy.store(false, Ordering::Release);
    if let Some(panic) = panic {
        resume_unwind(panic);
    }
}

/// The job being run: a part function borrowed from [`for_each_part`]'s caller, who waits
/// until every claimed part has finished before the borrow ends, and the caller's
/// floating-point control register, which every part runs under.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    control: Control,
}

struct Pool {
    /// Threads besides the caller's.
    helpers: usize,
    /// Set while a job runs.
    busy: AtomicBool,
    /// The job, written before `claim` announces it.
    job: UnsafeCell<Job>,
    /// Generation (high 32 bits), parts (16 bits) and next unclaimed part (low 16 bits).
    claim: AtomicU64,
    /// Parts finished in this generation.
    done: AtomicUsize,
    /// Helpers allowed to take parts of this generation (the caller's `threads - 1`).
    allowed: AtomicUsize,
    /// A panic raised by a part, to raise again in the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Held by a helper between deciding to park and parking, and by a caller waking them.
    parked: Mutex<()>,
    wake: Condvar,
    /// Helpers parked or about to park.
    sleepers: AtomicUsize,
}

// SAFETY: `job` is written only by the thread holding `busy`, before the `claim` store that
// publishes it, and read only by helpers that claimed a part of that generation, which the
// writer waits for before the next write.
unsafe impl Sync for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            helpers,
            busy: AtomicBool::new(false),
            job: UnsafeCell::new(Job {
                f: &(|_: usize| {}) as &(dyn Fn(usize) + Sync),
                control: Control::current(),
            }),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            allowed: AtomicUsize::new(0),
            panic: Mutex::new(None),
            parked: Mutex::new(()),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        }));
        for index in 0..helpers {
            // A helper that cannot start only leaves its parts to the caller.
            let _ = std::thread::Builder::new()
                .name(format!("nabla-pool-{index}"))
                .spawn(move || pool.help(index));
        }
        pool
    })
}

fn generation(claim: u64) -> u64 {
    claim >> 32
}

impl Pool {
    /// Announces the job, runs parts until none is left, and waits for the helpers' parts;
    /// returns a part's panic, if one raised any.
    fn run(
        &self,
        parts: usize,
        threads: usize,
        f: &(dyn Fn(usize) + Sync),
    ) -> Option<Box<dyn Any + Send>> {
        // SAFETY: this thread holds `busy`, and every part of the previous job has finished,
        // so no helper reads `job` now. The lifetime is erased: the borrow outlives the job,
        // because this function returns only when `done` counts every part.
        unsafe {
            *self.job.get() = Job {
                f: std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(
                    f,
                ),
                control: Control::current(),
            };
        }
        self.done.store(0, Ordering::Relaxed);
        self.allowed.store(threads - 1, Ordering::Relaxed);
        let next = (generation(self.claim.load(Ordering::Relaxed)) + 1) & 0xFFFF_FFFF;
        // Part 0 is the caller's, claimed as the job is announced, so that the same thread
        // runs the same band of consecutive kernels and finds it in its own cache.
        self.claim
            .store(next << 32 | (parts as u64) << 16 | 1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        self.run_claimed(0);
        while self.run_a_part(next) {}
        while self.done.load(Ordering::Acquire) < parts {
            std::hint::spin_loop();
        }
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Claims the next part of generation `wanted` and runs it, keeping a panic for the caller;
    /// false when there is none left.
    fn run_a_part(&self, wanted: u64) -> bool {
        let mut claim = self.claim.load(Ordering::Acquire);
        loop {
            let (parts, next) = ((claim >> 16) & 0xFFFF, claim & 0xFFFF);
            if generation(claim) != wanted || next >= parts {
                return false;
            }
            match self.claim.compare_exchange_weak(
                claim,
                claim + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => claim = now,
            }
        }
        self.run_claimed((claim & 0xFFFF) as usize);
        true
    }

    /// Runs part `part` of the current job, claimed by this thread, keeping a panic for the
    /// caller.
    fn run_claimed(&self, part: usize) {
        // SAFETY: the part was claimed in the job's generation, so the caller is waiting for
        // it and `job` is that generation's.
        let job = unsafe { *self.job.get() };
        job.control.adopt();
        let ran = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.f)(part) }));
        if let Err(panic) = ran {
            *self.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(panic);
        }
        self.done.fetch_add(1, Ordering::Release);
    }

    /// A helper's life: take parts of each new job it is allowed into, spinning between jobs
    /// and parking after [`SPIN`] without one.
    fn help(&self, index: usize) -> ! {
        let mut seen = generation(self.claim.load(Ordering::Acquire));
        loop {
            let started = Instant::now();
            let mut spins = 0u32;
            let current = loop {
                let current = generation(self.claim.load(Ordering::Acquire));
                if current != seen {
                    break current;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) && started.elapsed() > SPIN {
                    // The caller stores `claim` before it reads `sleepers` and this thread
                    // counts itself before it reads `claim` (all sequentially consistent), so
                    // either the caller sees a sleeper and wakes it under the lock, or this
                    // thread sees the new job and does not wait.
                    let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, Ordering::SeqCst);
                    while generation(self.claim.load(Ordering::SeqCst)) == seen {
                        parked = self.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                    }
                    self.sleepers.fetch_sub(1, Ordering::SeqCst);
                    drop(parked);
                }
            };
            seen = current;
            if index < self.allowed.load(Ordering::Relaxed) {
                while self.run_a_part(current) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_whoever_calls() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for caller in 0..3 {
                scope.spawn(move || {
                    for parts in [0, 1, 2, 3, 17, 200] {
                        let counts: Vec<AtomicUsize> =
                            (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        for_each_part(parts, threads + caller, &|p| {
                            counts[p].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    /// The caller runs part 0 of every job, however eager a spinning helper is, so that one
    /// thread runs the same band of consecutive kernels (the data it wrote is in its cache).
    /// Jobs run until a helper has taken 2,000 parts (or 200,000 jobs): when part 0 went to
    /// whoever claimed first, a spinning helper had taken it 87 to 207 times by then (five
    /// runs on a 2-core Xeon).
    #[test]
    fn the_caller_runs_the_first_part() {
        let caller = std::thread::current().id();
        let (first_elsewhere, helped) = (AtomicUsize::new(0), AtomicUsize::new(0));
        for _ in 0..200_000 {
            for_each_part(2, 2, &|p| {
                if std::thread::current().id() != caller {
                    helped.fetch_add(1, Ordering::Relaxed);
                    if p == 0 {
                        first_elsewhere.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            if helped.load(Ordering::Relaxed) >= 2_000 {
                break;
            }
        }
        assert_eq!(first_elsewhere.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_nested_call_runs_on_its_thread() {
        let total = AtomicUsize::new(0);
        for_each_part(4, 2, &|_| {
            for_each_part(3, 2, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn helpers_run_parts_under_the_callers_denormal_mode() {
        if pool().helpers == 0 {
            return;
        }
        let caller = std::thread::current().id();
        let _flushed = crate::denormals::Scope::enter();
        // Until a helper takes a part (the pool may be busy with another test's job).
        for _ in 0..1000 {
            let on_helpers = AtomicUsize::new(0);
            let kept = AtomicUsize::new(0);
            for_each_part(16, 2, &|_| {
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(50) {
                    std::hint::spin_loop();
                }
                if std::thread::current().id() != caller {
                    on_helpers.fetch_add(1, Ordering::Relaxed);
                }
                let half = std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.5);
                if half != 0.0 {
                    kept.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(kept.load(Ordering::Relaxed), 0, "a part kept a denormal");
            if on_helpers.load(Ordering::Relaxed) > 0 {
                return;
            }
        }
        panic!("no helper took a part");
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_pool_goes_on() {
        let caught = catch_unwind(|| for_each_part(8, 2, &|p| assert!(p != 5, "part five")));
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        for_each_part(8, 2, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 8);
    }
}
