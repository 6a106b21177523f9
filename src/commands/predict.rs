//! `nabla predict FILE --weights PATH --input CSV`: the model's prediction for every row of a
//! CSV file whose columns are the model's input values, in order.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_runtime::Elem;
use nabla_runtime::data::DataSource;
use nabla_runtime::{data::Split, train};
use serde_json::json;

use super::session::WeightsArgs;
use super::{Failure, Outcome, print_json};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: WeightsArgs,
    /// A CSV file: one example per line, the input's values in order.
    #[arg(long)]
    input: PathBuf,
}

pub fn run(args: Args) -> Outcome {
    let (mut session, mut store) = args.common.open()?;
    let inputs: Vec<_> = session
        .info
        .feeds
        .iter()
        .filter(|f| !f.target)
        .cloned()
        .collect();
    let mut columns = Vec::new();
    let mut next = 0;
    for feed in &inputs {
        columns.push((feed.name.clone(), next, next + feed.row_len));
        next += feed.row_len;
    }
    let source = DataSource::Csv {
        path: args.input.display().to_string(),
        columns,
        header: None,
    };
    let data = session.data(&source, Split::Test, true)?;
    let predictions = train::predict(
        &session.info,
        Elem::F32,
        &mut session.programs,
        &mut store,
        &data,
    )
    .map_err(Failure::Message)?;
    let kind = session.info.prediction;
    for (row, values) in predictions.iter().enumerate() {
        let class = kind.class_of(values.len(), |i| values[i]);
        if args.common.json {
            print_json(&json!({"row": row, "prediction": values, "class": class}));
        } else {
            let shown: Vec<String> = values.iter().map(|v| format!("{v:.6}")).collect();
            match class {
                Some(c) => out!("{row}: class {c}  [{}]", shown.join(", ")),
                None => out!("{row}: [{}]", shown.join(", ")),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
