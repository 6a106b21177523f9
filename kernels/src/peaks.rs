//! This machine's measured peaks, the roof of a roofline: the f32 matrix product's rate at a
//! large square product on the threads given (the fastest any kernel here computes), and the
//! rate of a large copy (the fastest it moves memory). Measured, not read from a data sheet, so
//! that a profile's percentages mean the same on every CPU the project meets.

use std::time::Instant;

use crate::gemm::Gemm;
use crate::parallel;

/// The side of the square product timed for the compute peak.
const SIDE: usize = 512;
/// The bytes copied for the memory peak: far larger than any cache; halved while memory
/// cannot be had, down to [`MIN_COPY_BYTES`].
const COPY_BYTES: usize = 256 << 20;
const MIN_COPY_BYTES: usize = 16 << 20;
/// Timed repetitions; the best is kept.
const TRIES: usize = 5;

/// Peaks measured on this machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// f32 floating-point operations per second of a 512 x 512 x 512 product.
    pub flops: f64,
    /// Bytes read plus written per second by a copy of `copied` bytes split over the threads.
    pub bytes: f64,
    /// The bytes the memory peak copied (256 MiB unless memory was short).
    pub copied: usize,
}

/// Measures the peaks on `threads` threads (a few tenths of a second).
pub fn measure(threads: usize) -> Peaks {
    let a = vec![1.0f32; SIDE * SIDE];
    let b = vec![0.5f32; SIDE * SIDE];
    let mut c = vec![0.0f32; SIDE * SIDE];
    let product = Gemm {
        m: SIDE,
        k: SIDE,
        n: SIDE,
        a: a.as_ptr(),
        a_row: SIDE as isize,
        a_col: 1,
        b: b.as_ptr(),
        b_row: SIDE as isize,
        b_col: 1,
        c: c.as_mut_ptr(),
        c_row: SIDE as isize,
    };
    let flops = best(|| {
        // SAFETY: `a` and `b` hold SIDE x SIDE row-major elements, `c` as many, all distinct.
        unsafe { product.run(threads) }
    });
    let (source, mut target) = copy_buffers();
    let copied = 4 * source.len();
    let parts = threads.max(1);
    let chunk = source.len().div_ceil(parts);
    let copy = best(|| {
        let pieces: Vec<std::sync::Mutex<&mut [f32]>> = target
            .chunks_mut(chunk)
            .map(std::sync::Mutex::new)
            .collect();
        parallel::for_each_part(pieces.len(), threads, &|p| {
            let mut piece = pieces[p].lock().unwrap_or_else(|e| e.into_inner());
            let (start, len) = (p * chunk, piece.len());
            piece.copy_from_slice(&source[start..start + len]);
        });
    });
    std::hint::black_box((&c, &target));
    Peaks {
        flops: 2.0 * (SIDE * SIDE * SIDE) as f64 / flops,
        bytes: 2.0 * copied as f64 / copy,
        copied,
    }
}

/// A source and a target for the copy, as large as memory allows (see [`COPY_BYTES`]); asked
/// for fallibly, so that a machine short of memory measures a smaller copy instead of aborting.
fn copy_buffers() -> (Vec<f32>, Vec<f32>) {
    let mut bytes = COPY_BYTES;
    loop {
        let (mut source, mut target) = (Vec::new(), Vec::new());
        let had = source.try_reserve_exact(bytes / 4).is_ok()
            && target.try_reserve_exact(bytes / 4).is_ok();
        if had || bytes <= MIN_COPY_BYTES {
            source.resize(bytes / 4, 1.0);
            target.resize(bytes / 4, 0.0);
            return (source, target);
        }
        bytes /= 2;
    }
}

/// The fastest of [`TRIES`] runs of `f`, after one untimed run, in seconds.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..TRIES)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
