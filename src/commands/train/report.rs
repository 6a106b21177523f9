//! What a run shows and writes as the loop goes: the progress bar, one line (or JSON object)
//! per epoch, and the `--log` file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use console::Term;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use nabla_runtime::Schedule;
use nabla_runtime::files;
use nabla_runtime::train::{Progress, Report, Settings, State};
use serde_json::json;

use super::Args;
use crate::commands::{Failure, number, optional, print_json};

/// The progress bar over the run's steps, on a terminal unless `--json` or `--quiet`.
pub(super) fn progress_bar(args: &Args, total_steps: usize, done: usize) -> Option<ProgressBar> {
    (!args.json && !args.quiet && std::io::stderr().is_terminal()).then(|| {
        let target =
            ProgressDrawTarget::term_like_with_hz(Box::new(Margin(Term::buffered_stderr())), 20);
        let bar = ProgressBar::with_draw_target(Some(total_steps as u64), target);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
                .expect("a valid template"),
        );
        bar.set_position(done as u64);
        bar
    })
}

/// The report hook: each epoch's record printed (as a line, or JSON with `--json`) and logged.
pub(super) struct EpochReports<'a> {
    json: bool,
    quiet: bool,
    log_every: usize,
    show_lr: bool,
    total_epochs: usize,
    epoch_width: usize,
    bar: Option<&'a ProgressBar>,
    log: Option<MetricsLog>,
    log_error: Option<String>,
    growth: LossGrowth,
    records: Vec<serde_json::Value>,
    /// The last epoch's line when it was not printed, to print at the end.
    last_line: String,
}

impl<'a> EpochReports<'a> {
    /// Opens `--log` (a resumed run keeps the lines of the epochs it had trained).
    pub(super) fn new(
        args: &Args,
        settings: &Settings,
        total_epochs: usize,
        state: &State,
        bar: Option<&'a ProgressBar>,
    ) -> Result<EpochReports<'a>, Failure> {
        let log = match &args.log {
            Some(path) => Some(MetricsLog::open(
                path,
                args.resume.is_some(),
                state.position.epoch,
            )?),
            None => None,
        };
        Ok(EpochReports {
            json: args.json,
            quiet: args.quiet,
            log_every: args.log_every.unwrap_or(1) as usize,
            show_lr: settings.schedule != Schedule::Constant,
            total_epochs,
            epoch_width: total_epochs.to_string().len(),
            bar,
            log,
            log_error: None,
            growth: LossGrowth::default(),
            records: Vec::new(),
            last_line: String::new(),
        })
    }

    /// Shows and logs one epoch's report.
    pub(super) fn report(&mut self, r: &Report) {
        let record = record(r);
        if let Some(warning) = self.growth.watch(r) {
            match self.bar {
                Some(b) => b.suspend(|| eprintln!("{warning}")),
                None => eprintln!("{warning}"),
            }
        }
        if let Some(log) = &mut self.log
            && let Err(e) = log.push(&record)
        {
            self.log_error.get_or_insert(e);
        }
        self.records.push(record.clone());
        if self.json {
            print_json(&record);
            return;
        }
        let line = epoch_line(r, self.total_epochs, self.epoch_width, self.show_lr);
        let wanted =
            r.epoch <= 1 || r.epoch.is_multiple_of(self.log_every) || r.epoch == self.total_epochs;
        if self.quiet || !wanted {
            self.last_line = line;
            return;
        }
        self.last_line.clear();
        match self.bar {
            Some(b) => b.suspend(|| out!("{line}")),
            None => out!("{line}"),
        }
    }

    /// Every record, and the last epoch's line if it is still to be printed; an error if the
    /// log could not be written.
    pub(super) fn finish(self) -> Result<(Vec<serde_json::Value>, String), Failure> {
        match self.log_error {
            Some(e) => Err(Failure::Message(e)),
            None => Ok((self.records, self.last_line)),
        }
    }
}

/// How many times the first loss a loss may grow to before the run is called diverging.
const GROWTH: f64 = 1e3;

/// Watches for a loss that grows by orders of magnitude while staying finite (Adam at an
/// absurd learning rate ends at 1e29), which the divergence guard, watching for non-finite
/// values, does not see.
#[derive(Default)]
struct LossGrowth {
    /// The first report's loss and epoch.
    first: Option<(f64, usize)>,
    warned: bool,
}

impl LossGrowth {
    /// A warning, once, when `r`'s loss exceeds [`GROWTH`] times the first positive one.
    fn watch(&mut self, r: &Report) -> Option<String> {
        let (first, epoch) = *self.first.get_or_insert((r.loss, r.epoch));
        if self.warned || !(first > 0.0 && r.loss > GROWTH * first) {
            return None;
        }
        self.warned = true;
        Some(format!(
            "warning: the loss grew from {first:.6} (epoch {epoch}) to {:.3e} (epoch {}), more than {GROWTH}-fold: training is diverging; a lower learning rate (e.g. `--lr {}`) often helps",
            r.loss,
            r.epoch,
            r.lr / 10.0
        ))
    }
}

/// The batch hook: the bar's position, and the running loss and time left every 100 ms.
pub(super) struct BatchProgress<'a> {
    bar: Option<&'a ProgressBar>,
    last_draw: Instant,
}

impl<'a> BatchProgress<'a> {
    pub(super) fn new(bar: Option<&'a ProgressBar>) -> BatchProgress<'a> {
        BatchProgress {
            bar,
            last_draw: Instant::now(),
        }
    }

    pub(super) fn batch(&mut self, p: &Progress) {
        let Some(b) = self.bar else { return };
        b.set_position(p.step as u64);
        if self.last_draw.elapsed().as_millis() >= 100 || p.step == p.total {
            self.last_draw = Instant::now();
            let eta = p.seconds / p.step as f64 * (p.total - p.step) as f64;
            b.set_message(format!("loss {:.4}  eta {}", p.running_loss, seconds(eta)));
        }
    }
}

/// The terminal as the progress bar sees it: a few columns narrower. indicatif pads its line
/// to the terminal's width, leaving the cursor at the last column, so the `^C` a terminal echoes
/// on Ctrl-C would wrap onto a line of its own, and clearing the bar would clear that line and
/// leave the bar on screen.
#[derive(Debug)]
struct Margin(Term);

impl TermLike for Margin {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(4).max(1)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// One report as the JSON object `--json` prints and `--log` writes.
/// With early stopping it also names the best epoch so far (`best_epoch`).
fn record(r: &Report) -> serde_json::Value {
    let mut record = json!({
        "epoch": r.epoch, "step": r.step, "loss": number(r.loss), "accuracy": optional(r.accuracy),
        "val_loss": optional(r.val_loss), "val_accuracy": optional(r.val_accuracy),
        "test_loss": optional(r.test_loss), "test_accuracy": optional(r.test_accuracy),
        "lr": number(r.lr), "seconds": r.seconds,
    });
    if let Some(best) = r.best_epoch {
        record["best_epoch"] = json!(best);
    }
    record
}

/// `--log FILE`: one JSON line per report, appended and flushed as it comes, so earlier lines
/// are never at risk. A resumed run first rewrites the file (atomically) to the lines of the
/// epochs its checkpoint had trained, so that the log reads as one uninterrupted run. A pipe or
/// a device is written as a stream; when its reader goes away (`--log /dev/stdout | head`), the
/// run stops and saves as on Ctrl-C rather than lose its work.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    stream: bool,
}

impl MetricsLog {
    fn open(path: &std::path::Path, resumed: bool, epoch: usize) -> Result<MetricsLog, Failure> {
        let path = match files::destination(path, "--log").map_err(Failure::Message)? {
            // A pipe or a device (`--log /dev/stdout`) takes the lines as they come.
            files::Destination::Stream => {
                let file = files::open_stream(path).map_err(Failure::Message)?;
                return Ok(MetricsLog {
                    path: path.to_path_buf(),
                    file,
                    stream: true,
                });
            }
            files::Destination::File(file) => file,
        };
        let path = path.as_path();
        let mut kept = String::new();
        if resumed && path.exists() {
            let old = files::read_limited(path, "--log file", 1 << 30).map_err(Failure::Message)?;
            for line in String::from_utf8_lossy(&old).lines() {
                let trained = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["epoch"].as_u64())
                    .is_some_and(|e| e as usize <= epoch);
                if trained {
                    kept += line;
                    kept.push('\n');
                }
            }
        }
        files::write_atomically(path, kept.as_bytes()).map_err(Failure::Message)?;
        let file = files::open_append(path).map_err(Failure::Message)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
            stream: false,
        })
    }

    fn push(&mut self, record: &serde_json::Value) -> Result<(), String> {
        use std::io::Write;
        match writeln!(self.file, "{record}").and_then(|()| self.file.flush()) {
            // The run stops after this step; `reader_gone` says so once.
            Err(e) if self.stream && e.kind() == std::io::ErrorKind::BrokenPipe => {
                crate::commands::reader_gone(&format!("`{}`", self.path.display()));
                Ok(())
            }
            result => result.map_err(|e| format!("cannot write `{}`: {e}", self.path.display())),
        }
    }
}

/// One epoch's line, under 80 columns: `epoch  3/10  loss 0.123456  acc 96.20%  test 0.149770
/// 95.10%  2.9s` (the learning rate too when a schedule changes it).
fn epoch_line(r: &Report, total: usize, width: usize, show_lr: bool) -> String {
    let percent = |a: Option<f64>| a.map_or(String::new(), |a| format!(" {:.2}%", 100.0 * a));
    let mut line = format!(
        "epoch {:>width$}/{total}  loss {:.6}{}",
        r.epoch,
        r.loss,
        r.accuracy
            .map_or(String::new(), |a| format!("  acc{}", percent(Some(a))))
    );
    if let Some(l) = r.val_loss {
        line += &format!("  val {l:.6}{}", percent(r.val_accuracy));
    }
    if let Some(l) = r.test_loss {
        line += &format!("  test {l:.6}{}", percent(r.test_accuracy));
    }
    if show_lr {
        let short = r.lr.to_string();
        let lr = if short.len() <= 7 {
            short
        } else {
            format!("{:.2e}", r.lr)
        };
        line += &format!("  lr {lr}");
    }
    line + &format!("  {}", seconds(r.seconds))
}

/// `2.9s`, `1m05s`, `2h03m`.
fn seconds(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        _ if s < 60.0 => format!("{s:.1}s"),
        0..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}
