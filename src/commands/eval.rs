//! `nabla eval FILE --weights PATH`: loss and accuracy of saved parameters on the test data
//! (the training data when the file names no test data).

use std::process::ExitCode;

use nabla_runtime::Elem;
use nabla_runtime::train;
use serde_json::json;

use super::session::WeightsArgs;
use super::{Failure, Outcome, count, number, optional, print_json};

pub fn run(args: WeightsArgs) -> Outcome {
    let (mut session, mut store) = args.open()?;
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
        print_json(
            &json!({"examples": data.rows, "loss": number(loss), "accuracy": optional(accuracy)}),
        );
    } else {
        let accuracy = accuracy.map_or(String::new(), |a| format!("  accuracy {:.2}%", 100.0 * a));
        out!(
            "{} ({})  loss {loss:.6}{accuracy}",
            count(data.rows, "example"),
            data.origin
        );
    }
    Ok(ExitCode::SUCCESS)
}
