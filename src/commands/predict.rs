//! `nabla predict FILE --weights PATH --input CSV [--probabilities]`: the model's prediction for every row of a
//! CSV file whose columns are the model's input values, in order.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_runtime::Elem;
use nabla_runtime::data::DataSource;
use nabla_runtime::train::PredictionKind;
use nabla_runtime::{data::Split, train};
use serde_json::json;

use super::session::WeightsArgs;
use super::{Failure, Outcome, number, print_json};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: WeightsArgs,
    /// A CSV file: one example per line, the input's values in order, scaled as in training
    /// (MNIST pixels in [0, 1], not 0..255).
    #[arg(long)]
    input: PathBuf,
    /// Print class probabilities (softmax of the logits, or the sigmoid of one logit) instead
    /// of the raw outputs.
    #[arg(long)]
    probabilities: bool,
    /// Run programs compiled for these batch sizes, cutting the rows as a library exported
    /// with `nabla export --batch` does (so that the two agree bit for bit); default: as
    /// many rows at once as memory affords.
    #[arg(long, value_delimiter = ',')]
    batch: Option<Vec<usize>>,
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
    // A path on the command line is the current directory's, not the model file's (as paths
    // inside a model file are).
    let input = std::path::absolute(&args.input)
        .map_err(|e| Failure::Message(format!("cannot read `{}`: {e}", args.input.display())))?;
    let source = DataSource::Csv {
        path: input.display().to_string(),
        columns,
        header: None,
    };
    let batches = args.batch.map(|mut sizes| {
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    });
    if batches
        .as_ref()
        .is_some_and(|b| b.first().is_none_or(|&s| s == 0))
    {
        return Err(Failure::Message(
            "`--batch`: give batch sizes of at least 1, like `--batch 1,64`".into(),
        ));
    }
    let data = session.data(&source, Split::Test, true)?;
    let predictions = train::predict(
        &session.info,
        Elem::F32,
        &mut session.programs,
        &mut store,
        &data,
        batches.as_deref(),
    )
    .map_err(Failure::Message)?;
    let kind = session.info.prediction;
    if args.probabilities && kind == PredictionKind::Regression {
        return Err(Failure::Message(
            "`--probabilities`: the model's prediction is a regression, which has no class probabilities".into(),
        ));
    }
    for (row, values) in predictions.iter().enumerate() {
        let class = kind.class_of(values.len(), |i| values[i]);
        let values = &if args.probabilities {
            probabilities(kind, values)
        } else {
            values.clone()
        };
        if args.common.json {
            let key = if args.probabilities {
                "probabilities"
            } else {
                "prediction"
            };
            let values: Vec<_> = values.iter().map(|&v| number(v)).collect();
            print_json(&json!({"row": row, key: values, "class": class}));
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

/// Class probabilities of one prediction: softmax over logits, or `[1 - p, p]` for a binary
/// prediction given as a logit or a probability.
fn probabilities(kind: PredictionKind, values: &[f64]) -> Vec<f64> {
    match kind {
        PredictionKind::Classes => {
            let top = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = values.iter().map(|v| (v - top).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|e| e / sum).collect()
        }
        PredictionKind::Logit => {
            let p = 1.0 / (1.0 + (-values[0]).exp());
            vec![1.0 - p, p]
        }
        PredictionKind::Probability => vec![1.0 - values[0], values[0]],
        PredictionKind::Regression => values.to_vec(),
    }
}
