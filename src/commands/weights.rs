//! `nabla weights PATH`: what a weights file or checkpoint holds: every tensor's name, shape,
//! type and summary statistics (and the values of small tensors), and a checkpoint's position.

use std::path::PathBuf;
use std::process::ExitCode;

use nabla_runtime::checkpoint;
use serde_json::json;

use super::{Failure, Outcome, group, number, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// A safetensors file written by `nabla train` (`--save` or `--checkpoint`).
    path: PathBuf,
    /// One JSON object per tensor.
    #[arg(long)]
    json: bool,
}

/// Tensors of at most this many elements are printed in full.
const SHOWN: usize = 8;

/// The largest file read: a model of a billion parameters, with its optimizer state.
const LIMIT: u64 = 16 << 30;

pub fn run(args: Args) -> Outcome {
    let contents = checkpoint::load(&args.path, "weights file", LIMIT).map_err(Failure::Message)?;
    if !args.json {
        let values: usize = contents.tensors.iter().map(|(_, _, v)| v.len()).sum();
        out!(
            "{}: {} tensors, {} values",
            args.path.display(),
            contents.tensors.len(),
            group(values)
        );
        if let Some(position) = contents.metadata.get("nabla.position") {
            out!("{}", describe(position));
        }
    }
    for ((name, shape, values), dtype) in contents.tensors.iter().zip(&contents.dtypes) {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let small = (values.len() <= SHOWN).then_some(values);
        if args.json {
            print_json(&json!({
                "name": name, "shape": shape, "dtype": dtype, "min": min, "max": max,
                "mean": number(mean), "std": number(var.sqrt()), "values": small,
            }));
            continue;
        }
        let mut line = format!(
            "{name:<16} {:<12} {dtype}  min {min:>10.4}  max {max:>10.4}  mean {mean:>10.4}  std {:>9.4}",
            format!("{shape:?}"),
            var.sqrt()
        );
        if let Some(v) = small {
            let shown: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
            line += &format!("  [{}]", shown.join(", "));
        }
        out!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A checkpoint's position in words: `checkpoint after epoch 155 (step 5,270); best epoch 125`.
fn describe(position: &str) -> String {
    let Ok(p) = serde_json::from_str::<serde_json::Value>(position) else {
        return format!("checkpoint position: {position}");
    };
    let number = |key: &str| p[key].as_u64().unwrap_or(0) as usize;
    let mut text = format!(
        "checkpoint after epoch {} (step {})",
        number("epoch"),
        group(number("step"))
    );
    if let Some(best) = p["best"].as_f64() {
        text += &format!(
            "; early stopping: best {best:.6} at epoch {}, {} epochs since",
            number("best_epoch"),
            number("wait")
        );
    }
    text
}
