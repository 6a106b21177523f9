//! `nabla export FILE --weights W --format onnx -o model.onnx`: a trained model's prediction as
//! a file another runtime runs. ONNX is the format every inference runtime loads
//! (onnxruntime, tract, TensorRT, OpenVINO); what it holds is [`nabla_compiler::onnx`]'s.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use nabla_compiler::onnx::{self, ExportError};
use nabla_runtime::files;
use serde_json::json;

use super::origin::source_line;
use super::session::WeightsArgs;
use super::{Failure, Outcome, print_json};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    /// An ONNX model (opset 17): the evaluation graph from the inputs to the prediction, the
    /// parameters inside, the batch symbolic.
    Onnx,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: WeightsArgs,
    /// What to write.
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// The file to write (atomically).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Outcome {
    files::check_writable(&args.output, "the exported model", false).map_err(Failure::Message)?;
    let (session, store) = args.common.open()?;
    let loaded = &session.loaded;
    let model = &loaded.compiled.eval_model;
    let values = |name: &str| -> Option<Vec<f32>> {
        store
            .get(name)
            .map(|b| b.to_f64().into_iter().map(|v| v as f32).collect())
    };
    let exported = match args.format {
        Format::Onnx => onnx::export(model, &values).map_err(|e| match &e {
            ExportError::Unsupported {
                near: Some(name), ..
            } => match source_line(loaded, name) {
                Some(line) => Failure::Message(format!("{}:{line}: {e}", loaded.path.display())),
                None => Failure::Message(e.to_string()),
            },
            _ => Failure::Message(e.to_string()),
        })?,
    };
    files::write_atomically(&args.output, &exported.bytes).map_err(Failure::Message)?;
    let (output, output_shape) = &exported.output;
    if args.common.json {
        print_json(&json!({
            "file": args.output.display().to_string(),
            "format": "onnx",
            "opset": onnx::OPSET,
            "bytes": exported.bytes.len(),
            "nodes": exported.nodes,
            "initializers": exported.initializers,
            "inputs": exported.inputs.iter().map(|(n, s)| json!({"name": n, "shape": s})).collect::<Vec<_>>(),
            "output": {"name": output, "shape": output_shape},
        }));
    } else {
        let inputs: Vec<String> = exported
            .inputs
            .iter()
            .map(|(name, shape)| format!("{name} [{}]", shape.join(", ")))
            .collect();
        out!(
            "wrote {} ({}, ONNX opset {}): {} nodes, {} initializers; inputs {}, output {output} [{}]",
            args.output.display(),
            super::bytes(exported.bytes.len() as u64),
            onnx::OPSET,
            exported.nodes,
            exported.initializers,
            inputs.join(", "),
            output_shape.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
