//! `nabla eval FILE --weights PATH`: loss and accuracy of saved parameters on the test data
//! (the training data when the file names no test data).

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_runtime::Elem;
use nabla_runtime::train;
use serde_json::json;

use super::session::open;
use super::{Failure, Outcome, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// The model file.
    file: PathBuf,
    /// Parameters saved by `nabla train --save`.
    #[arg(long)]
    weights: PathBuf,
    /// The `train` block whose data to use (default: the first).
    #[arg(long)]
    config: Option<String>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Outcome {
    let mut session = open(&args.file, args.config.as_deref())?;
    let mut store = session.load_weights(&args.weights)?;
    let data = match session.test_data()? {
        Some(test) => test,
        None => session.train_data()?,
    };
    let (loss, accuracy) = train::evaluate(
        &session.info,
        Elem::F32,
        &mut session.programs,
        &mut store,
        &data,
    )
    .map_err(Failure::Message)?;
    if args.json {
        print_json(&json!({"examples": data.rows, "loss": loss, "accuracy": accuracy}));
    } else {
        let accuracy = accuracy.map_or(String::new(), |a| format!("  accuracy {:.2}%", 100.0 * a));
        out!(
            "{} examples ({})  loss {loss:.6}{accuracy}",
            data.rows,
            data.origin
        );
    }
    Ok(ExitCode::SUCCESS)
}
