//! `nabla`: the command-line driver. A thin layer that wires the crates together: read files,
//! call the DSL, the compiler and the runtime, and print results. No compiler logic lives here.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// nabla: a deep-learning compiler. Models are `.nn` files; see README.md for the language.
#[derive(Parser)]
#[command(name = "nabla", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a model and print a summary of its bindings and parameters.
    Check(commands::check::Args),
    /// Print a model's computation graph (forward or with gradients).
    Graph(commands::graph::Args),
    /// Write an HTML page showing the model at every compiler stage, linked to its source.
    Inspect(commands::inspect::Args),
    /// Differentiate a formula symbolically, e.g. `nabla diff "x^2 + 3*x*y" --wrt x,y --at x=1,y=2`.
    Diff(commands::diff::Args),
    /// Compare autodiff gradients with central finite differences.
    Gradcheck(commands::gradcheck::Args),
    /// Train a model with natively compiled steps.
    Train(commands::train::Args),
    /// Evaluate saved parameters on the test data.
    Eval(commands::session::WeightsArgs),
    /// Print predictions for the rows of a CSV file.
    Predict(commands::predict::Args),
    /// Generate text from a model trained on `text(...)`, continuing a prompt.
    Generate(commands::generate::Args),
    /// Time compilation and train steps on synthetic data of the model's shapes.
    Bench(commands::bench::Args),
    /// Write a trained model's prediction as a file other runtimes run (ONNX).
    Export(commands::export::Args),
    /// Draw loss and accuracy curves from a `--log` file, or a 2-D model's decision boundary.
    Plot(commands::plot::Args),
    /// List the tensors of a weights file or checkpoint with summary statistics.
    Weights(commands::weights::Args),
}

/// Deeply nested input is rejected by the parser long before this, but lowering and printing
/// recurse over expression trees, so the work runs on a thread with a generous stack.
const STACK_BYTES: usize = 256 << 20;

fn main() -> ExitCode {
    // Bad flags are errors like any other: exit code 1 (`--help` and `--version` exit 0).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let name = std::env::args().nth(1).unwrap_or_default();
    let worker = std::thread::Builder::new()
        .stack_size(STACK_BYTES)
        .spawn(move || match cli.command {
            Command::Check(args) => commands::check::run(args),
            Command::Graph(args) => commands::graph::run(args),
            Command::Export(args) => commands::export::run(args),
            Command::Inspect(args) => commands::inspect::run(args),
            Command::Diff(args) => commands::diff::run(args),
            Command::Gradcheck(args) => commands::gradcheck::run(args),
            Command::Train(args) => commands::train::run(args),
            Command::Eval(args) => commands::eval::run(args),
            Command::Predict(args) => commands::predict::run(args),
            Command::Generate(args) => commands::generate::run(args),
            Command::Bench(args) => commands::bench::run(args),
            Command::Plot(args) => commands::plot::run(args),
            Command::Weights(args) => commands::weights::run(args),
        });
    let outcome = match worker {
        // The panic's own message, with its location, is already on stderr.
        Ok(handle) => handle.join().unwrap_or(Err(commands::Failure::Message(format!(
            "internal error: `nabla {name}` panicked (above); this is a bug in nabla, please report it with the command and its input"
        )))),
        Err(e) => Err(commands::Failure::Message(format!(
            "cannot start the compiler thread: {e}"
        ))),
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            failure.report();
            ExitCode::FAILURE
        }
    }
}
