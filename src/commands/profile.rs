//! `nabla bench --profile`: where a train step's time goes, kernel by kernel, sorted by time,
//! against this machine's measured peaks (a roofline: a kernel can go no faster than its
//! operations at the compute peak, nor than its bytes at the memory peak), with the source lines
//! each kernel came from. tinygrad's per-kernel timings are the model; this is how a slow
//! kernel is found.

use nabla_kernels::peaks::Peaks;
use nabla_runtime::KernelNote;
use serde_json::json;

use super::bench::duration;
use super::origin::source_lines;
use super::{Loaded, print_json};

/// One kernel's line of the profile.
pub struct Row {
    /// Its index in the program.
    pub index: usize,
    /// What it computes.
    pub title: String,
    /// Mean seconds per step.
    pub seconds: f64,
    /// Floating-point operations per step.
    pub flops: u64,
    /// Bytes read and written per step.
    pub bytes: u64,
    /// The source lines of the bindings it computes or differentiates, ascending.
    pub lines: Vec<usize>,
}

impl Row {
    /// Operations per second achieved.
    fn flop_rate(&self) -> f64 {
        self.flops as f64 / self.seconds.max(1e-12)
    }

    /// Bytes per second achieved.
    fn byte_rate(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-12)
    }

    /// The roof this kernel sits under (`"compute"` or `"memory"`) and the fraction of it
    /// reached: its operations at the compute peak, or its bytes at the memory peak, whichever
    /// takes longer.
    fn roofline(&self, peaks: &Peaks) -> (&'static str, f64) {
        let compute = self.flops as f64 / peaks.flops;
        let memory = self.bytes as f64 / peaks.bytes;
        let bound = if compute >= memory {
            "compute"
        } else {
            "memory"
        };
        (bound, compute.max(memory) / self.seconds.max(1e-12))
    }
}

/// The rows of a profile, slowest first.
pub fn rows(kernels: &[(KernelNote, f64)], loaded: &Loaded) -> Vec<Row> {
    let mut rows: Vec<Row> = kernels
        .iter()
        .enumerate()
        .map(|(index, (note, seconds))| Row {
            index,
            title: note.title.clone(),
            seconds: *seconds,
            flops: note.flops,
            bytes: note.bytes,
            lines: source_lines(loaded, &note.labels),
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

/// Prints the profile as a table.
pub fn print(rows: &[Row], peaks: &Peaks, threads: usize) {
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    out!(
        "profile: {} kernels, {} a step timed kernel by kernel; this machine's peaks on {threads} thread{}: {:.1} GFLOP/s (f32 product 512x512x512), {:.1} GB/s (copy of {} MiB)",
        rows.len(),
        duration(total),
        if threads == 1 { "" } else { "s" },
        peaks.flops / 1e9,
        peaks.bytes / 1e9,
        peaks.copied >> 20,
    );
    out!(
        "  {:>9}  {:>6}  {:>8}  {:>7}  {:>15}  kernel [source lines]",
        "time",
        "share",
        "GFLOP/s",
        "GB/s",
        "roofline"
    );
    for r in rows {
        let (bound, reached) = r.roofline(peaks);
        let lines = match r.lines.as_slice() {
            [] => String::new(),
            lines => format!(
                " [{}]",
                lines
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out!(
            "  {:>9}  {:>5.1}%  {:>8.2}  {:>7.2}  {:>4.0}% {:>9}  {}: {}{lines}",
            duration(r.seconds),
            100.0 * r.seconds / total.max(1e-12),
            r.flop_rate() / 1e9,
            r.byte_rate() / 1e9,
            100.0 * reached,
            bound,
            r.index,
            r.title,
        );
    }
}

/// Prints the profile as JSON lines: one per kernel, slowest first, then the peaks.
pub fn print_json_lines(rows: &[Row], peaks: &Peaks, threads: usize) {
    for r in rows {
        let (bound, reached) = r.roofline(peaks);
        print_json(&json!({
            "kernel": r.index, "title": r.title, "ms": r.seconds * 1e3,
            "flops": r.flops, "bytes": r.bytes,
            "gflop_per_s": r.flop_rate() / 1e9, "gb_per_s": r.byte_rate() / 1e9,
            "bound": bound, "roofline": reached, "lines": r.lines,
        }));
    }
    print_json(&json!({
        "peak_gflop_per_s": peaks.flops / 1e9, "peak_gb_per_s": peaks.bytes / 1e9,
        "peak_copy_bytes": peaks.copied,
        "threads": threads, "kernels": rows.len(),
    }));
}
