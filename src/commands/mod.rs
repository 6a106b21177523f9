//! One module per subcommand, plus what they share: loading a model with rendered diagnostics,
//! and the failure type every command returns.

/// `println!` for command output, treating a closed stdout (`nabla graph ... | head`) as the
/// end of the run rather than an error.
macro_rules! out {
    ($($arg:tt)*) => { $crate::commands::write_stdout(&format!($($arg)*)) };
}

pub mod bench;
pub mod check;
pub mod diff;
pub mod distributed;
pub mod eval;
pub mod export;
pub mod generate;
pub mod gradcheck;
pub mod graph;
pub mod inspect;
pub mod link;
pub mod origin;
pub mod plot;
pub mod predict;
pub mod profile;
pub mod session;
pub mod train;
pub mod weights;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nabla_compiler::optim::{Optimizer, OptimizerKind};
use nabla_compiler::programs::Memory;
use nabla_dsl::{Compiled, Diagnostic, diagnostic};

/// Why a command failed; printed to stderr, exit code 1.
pub enum Failure {
    /// Rendered diagnostics.
    Diagnostics(String),
    /// A one-line message.
    Message(String),
}

impl Failure {
    /// Prints the failure to stderr.
    pub fn report(&self) {
        match self {
            Failure::Diagnostics(text) => eprint!("{text}"),
            Failure::Message(text) => eprintln!("error: {text}"),
        }
    }
}

/// What a command returns: an exit code on success.
pub type Outcome = Result<ExitCode, Failure>;

/// The batch size `train` uses when neither the file nor a flag sets one.
pub const DEFAULT_BATCH: usize = 32;

/// The optimizer and batch size of a file's first `train` block, or plain SGD and
/// [`DEFAULT_BATCH`] when it has none: what `check`, `graph` and `bench` compile a train step
/// with.
pub fn first_train(compiled: &Compiled) -> (Optimizer, usize) {
    let first = compiled.trains.first();
    let optimizer = first.map_or_else(
        || Optimizer::defaults(OptimizerKind::Sgd),
        |t| t.optimizer.clone(),
    );
    (
        optimizer,
        first.and_then(|t| t.batch).unwrap_or(DEFAULT_BATCH),
    )
}

/// The largest model file nabla reads: 16 MiB of source is far beyond any hand-written model.
const MAX_MODEL_BYTES: u64 = 16 << 20;

/// A checked model file with its source, for diagnostics found after checking.
pub struct Loaded {
    /// The checked model and its `train` blocks.
    pub compiled: Compiled,
    /// The file's text.
    pub source: String,
    /// The file's path as the user gave it.
    pub path: PathBuf,
}

impl Loaded {
    /// Renders diagnostics against this file.
    pub fn render(&self, diagnostics: &[Diagnostic]) -> String {
        diagnostic::render(diagnostics, &self.path.display().to_string(), &self.source)
    }
}

/// Reads and checks a model file, keeping its source.
pub fn load_file(path: &Path) -> Result<Loaded, Failure> {
    let bytes = nabla_runtime::files::read_limited(path, "model file", MAX_MODEL_BYTES)
        .map_err(Failure::Message)?;
    match nabla_dsl::compile_bytes(&bytes) {
        Ok(compiled) => Ok(Loaded {
            compiled,
            source: String::from_utf8(bytes).unwrap_or_default(),
            path: path.to_path_buf(),
        }),
        Err((source, diagnostics)) => {
            let mut text = diagnostic::render(&diagnostics, &path.display().to_string(), &source);
            let n = diagnostics.len();
            text.push_str(&format!(
                "error: could not compile `{}` due to {n} previous error{}\n",
                path.display(),
                if n == 1 { "" } else { "s" }
            ));
            Err(Failure::Diagnostics(text))
        }
    }
}

/// The memory a run needs against what the machine has: `None` when it fits, else a
/// diagnostic at the largest parameter's declaration (a warning when `warn_only`). `what` says
/// which run ("training at batch 32").
pub fn memory_diagnostic(
    loaded: &Loaded,
    memory: &Memory,
    what: &str,
    warn_only: bool,
) -> Option<Diagnostic> {
    let available = nabla_runtime::available_memory()?;
    if memory.total() <= available {
        return None;
    }
    let model = &loaded.compiled.model;
    let (largest, span) = model
        .params
        .iter()
        .zip(&loaded.compiled.param_spans)
        .rev()
        .max_by_key(|(p, _)| model.graph.shape(p.node).numel().unwrap_or(0))?;
    let count = model.graph.shape(largest.node).numel().unwrap_or(0);
    let d = Diagnostic::new(
        format!(
            "{what} needs about {}, but this machine has {} available",
            bytes(memory.total()),
            bytes(available)
        ),
        *span,
    )
    .label(format!(
        "`{}` {} alone has {} values",
        largest.name,
        model.graph.shape(largest.node),
        group(count)
    ))
    .note(format!(
        "parameters {}, optimizer state {}, step buffers {}",
        bytes(memory.params),
        bytes(memory.state),
        bytes(memory.step)
    ))
    .note("make the model or the batch smaller");
    Some(if warn_only { d.as_warning() } else { d })
}

/// `1.5 GiB`, `512.0 KiB`, `12 bytes`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A float as every JSON output writes it: a number, or the strings `"NaN"`, `"inf"` and
/// `"-inf"`, which JSON numbers cannot hold (Python's `float()` and pandas read them back).
/// `null` is kept for a value that is absent, so the two are never confused.
pub fn number(v: f64) -> serde_json::Value {
    nabla_runtime::train::any_f64::to_json(v)
}

/// [`number`], or `null` for an absent value.
pub fn optional(v: Option<f64>) -> serde_json::Value {
    v.map_or(serde_json::Value::Null, number)
}

/// Prints one JSON object on its own line.
pub fn print_json(value: &serde_json::Value) {
    out!("{value}");
}

/// Where a command that must not lose its work asks to be stopped when its output's reader
/// goes away (`nabla train ... | head`): training's interrupt flag, so that the run stops after
/// its step and saves as on Ctrl-C. Without it, the command ends quietly there.
static STOP_WHEN_UNREAD: std::sync::OnceLock<&'static std::sync::atomic::AtomicBool> =
    std::sync::OnceLock::new();

/// Whether the reader of standard output has gone (or this rank of a distributed run stays
/// silent).
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops the command by `flag` (see [`STOP_WHEN_UNREAD`]) when its output is no longer read.
pub fn stop_when_unread(flag: &'static std::sync::atomic::AtomicBool) {
    let _ = STOP_WHEN_UNREAD.set(flag);
}

/// The reader of `what` has gone: a command that registered a flag is asked to stop (once,
/// saying so); any other ends quietly, as `yes | head` does.
pub fn reader_gone(what: &str) {
    use std::sync::atomic::Ordering;
    let Some(flag) = STOP_WHEN_UNREAD.get() else {
        std::process::exit(0);
    };
    if !flag.swap(true, Ordering::SeqCst) {
        eprintln!("note: the reader of {what} has gone: stopping as on Ctrl-C");
    }
}

/// Writes one line to stdout; when the reader has gone away, see [`reader_gone`].
/// Stops every later [`out!`] line: ranks but 0 of a distributed run print nothing.
pub fn mute_stdout() {
    STDOUT_GONE.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn write_stdout(line: &str) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_GONE.store(true, Ordering::Relaxed);
            return reader_gone("standard output");
        }
        eprintln!("error: cannot write output: {e}");
        std::process::exit(1);
    }
}

/// `535818` as `535,818`.
pub fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 example`, `10,000 examples`.
pub fn count(n: usize, noun: &str) -> String {
    format!("{} {noun}{}", group(n), if n == 1 { "" } else { "s" })
}

/// The switches of the optional passes and the thread count, shared by `train`, `graph` and
/// `bench` so that every effect can be measured.
#[derive(clap::Args)]
pub struct PassFlags {
    /// Leave out e-graph simplification.
    #[arg(long)]
    no_simplify: bool,
    /// Leave out kernel fusion: every op its own kernel.
    #[arg(long)]
    no_fuse: bool,
    /// Also apply simplifications that hold only for finite values (`x * 0 => 0`), as
    /// fast-math compilers do; by default NaN and infinities behave as written.
    #[arg(long)]
    fast_math: bool,
    /// Threads large matrix products may use (default: every core).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: Option<usize>,
}

impl PassFlags {
    /// The threads these flags ask for: `--threads`, else every core.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(every_core)
    }

    /// The passes these flags ask for.
    pub fn passes(&self) -> nabla_compiler::pipeline::Passes {
        nabla_compiler::pipeline::Passes {
            simplify: !self.no_simplify,
            fuse: !self.no_fuse,
            fast_math: self.fast_math,
            leave_out: None,
        }
    }
}

/// What a run's header and `check` say after the optimizer: `, schedule cosine(...)` unless the
/// rate is constant, and `, gradients clipped at norm 1` when they are.
fn schedule_and_clipping(
    schedule: &nabla_runtime::Schedule,
    optimizer: &nabla_compiler::optim::Optimizer,
) -> String {
    let mut out = String::new();
    if *schedule != nabla_runtime::Schedule::Constant {
        out += &format!(", schedule {schedule}");
    }
    if let Some(c) = optimizer.clip_grad_norm {
        out += &format!(", gradients clipped at norm {c}");
    }
    out
}

/// The cores this process may use, which programs use unless `--threads` says otherwise: the
/// bits they compute do not depend on the count.
pub fn every_core() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
