//! One module per subcommand, plus what they share: loading a model with rendered diagnostics,
//! and the failure type every command returns.

/// `println!` for command output, treating a closed stdout (`nabla graph ... | head`) as the
/// end of the run rather than an error.
macro_rules! out {
    ($($arg:tt)*) => { $crate::commands::write_stdout(&format!($($arg)*)) };
}

pub mod check;
pub mod diff;
pub mod eval;
pub mod gradcheck;
pub mod graph;
pub mod predict;
pub mod session;
pub mod train;

use std::path::Path;
use std::process::ExitCode;

use nabla_dsl::{Compiled, diagnostic};

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

/// Reads and checks a model file.
pub fn load(path: &Path) -> Result<Compiled, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Message(format!("cannot read `{}`: {e}", path.display())))?;
    nabla_dsl::compile_bytes(&bytes).map_err(|(source, diagnostics)| {
        let mut text = diagnostic::render(&diagnostics, &path.display().to_string(), &source);
        let n = diagnostics.len();
        text.push_str(&format!(
            "error: could not compile `{}` due to {n} previous error{}\n",
            path.display(),
            if n == 1 { "" } else { "s" }
        ));
        Failure::Diagnostics(text)
    })
}

/// Prints one JSON object on its own line.
pub fn print_json(value: &serde_json::Value) {
    out!("{value}");
}

/// Writes one line to stdout; exits quietly when the reader has gone away.
pub fn write_stdout(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write output: {e}");
        std::process::exit(1);
    }
}
