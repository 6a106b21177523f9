//! `nabla export FILE --weights W [--format native] -o DIR`: a trained model's prediction as
//! a native library with a C header, compiled ahead of time ([`nabla_compiler::native`],
//! linked by [`super::link`]), which a C program links and runs without nabla; `--format onnx
//! -o model.onnx`: as ONNX, the format every inference runtime loads (onnxruntime, tract,
//! TensorRT, OpenVINO; [`nabla_compiler::onnx`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use nabla_compiler::codegen::machine::Machine;
use nabla_compiler::native;
use nabla_compiler::onnx::{self, ExportError};
use nabla_runtime::files;
use serde_json::json;

use super::link::Toolchain;
use super::origin::source_line;
use super::session::WeightsArgs;
use super::{Failure, Outcome, print_json};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    /// A shared and a static library with a C header, in the directory `-o` names: the
    /// prediction (and a recurrent token model's generation step) compiled ahead of time for
    /// this machine's CPU or the target named, weights inside.
    Native,
    /// An ONNX model (opset 17): the evaluation graph from the inputs to the prediction, the
    /// parameters inside, the batch symbolic.
    Onnx,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: WeightsArgs,
    /// What to write (default: ONNX for an output ending in `.onnx`, else native).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The file (ONNX) or directory (native, created if needed) to write; every file is
    /// written atomically.
    #[arg(short, long)]
    output: PathBuf,
    /// Native: the batch sizes the prediction is compiled for (a call runs full batches of
    /// the largest, then the rest in the smallest that holds it).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batch: Vec<usize>,
    /// Native: the prefix of the library's symbols, macros and files (default: the model's
    /// name).
    #[arg(long)]
    name: Option<String>,
    /// Native: threads a large matrix product or convolution may use inside one call.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Native: the target triple the library runs on (default: this machine's), GNU/Linux on
    /// x86_64 or aarch64, like `aarch64-unknown-linux-gnu`.
    #[arg(long)]
    target: Option<String>,
    /// Native: the CPU the code may use every extension of: `native` (this machine's; the
    /// default without --target), `baseline` (any CPU of the architecture; the default with
    /// --target), or LLVM's names (`x86-64-v3`, `haswell`, `znver3`, `skylake-avx512`).
    #[arg(long)]
    target_cpu: Option<String>,
}

pub fn run(args: Args) -> Outcome {
    let onnx_file = args.output.extension().is_some_and(|e| e == "onnx");
    if args.format.unwrap_or(if onnx_file {
        Format::Onnx
    } else {
        Format::Native
    }) == Format::Native
    {
        return native(args);
    }
    if args.target.is_some() || args.target_cpu.is_some() {
        return Err(Failure::Message(
            "`--target` and `--target-cpu` choose the machine code of a native export; an ONNX file runs on whatever machine loads it".into(),
        ));
    }
    files::check_writable(&args.output, "the exported model", false).map_err(Failure::Message)?;
    let (session, store) = args.common.open()?;
    let loaded = &session.loaded;
    let model = &loaded.compiled.eval_model;
    let values = |name: &str| -> Option<Vec<f32>> {
        store
            .get(name)
            .map(|b| b.to_f64().into_iter().map(|v| v as f32).collect())
    };
    let exported = onnx::export(model, &values).map_err(|e| match &e {
        ExportError::Unsupported {
            near: Some(name), ..
        } => match source_line(loaded, name) {
            Some(line) => Failure::Message(format!("{}:{line}: {e}", loaded.path.display())),
            None => Failure::Message(e.to_string()),
        },
        _ => Failure::Message(e.to_string()),
    })?;
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

/// `--format native`: the object compiled, linked twice, the header beside.
fn native(args: Args) -> Outcome {
    let mut batches = args.batch.clone();
    batches.sort_unstable();
    batches.dedup();
    if batches.first().is_none_or(|&b| b == 0) || batches.last().is_some_and(|&b| b > MAX_BATCH) {
        return Err(Failure::Message(format!(
            "`--batch`: give batch sizes from 1 to {MAX_BATCH}, like `--batch 1,64`"
        )));
    }
    if args.threads == 0 {
        return Err(Failure::Message("`--threads` must be at least 1".into()));
    }
    if let Some(name) = args.name.as_ref().filter(|n| !is_c_identifier(n)) {
        return Err(Failure::Message(format!(
            "`--name {name}`: the name prefixes C symbols, so it must be letters, digits and underscores, not starting with a digit"
        )));
    }
    let machine = Machine::named(args.target.as_deref(), args.target_cpu.as_deref())
        .map_err(Failure::Message)?;
    let tools = Toolchain::for_machine(&machine).map_err(Failure::Message)?;
    files::prepare_directory(&args.output, "export").map_err(Failure::Message)?;
    let (mut session, store) = args.common.open()?;
    let loaded = &session.loaded;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| c_identifier(&loaded.compiled.eval_model.name));
    session.programs.threads = args.threads;
    let values = |name: &str| -> Option<Vec<f32>> {
        store
            .get(name)
            .map(|b| b.to_f64().into_iter().map(|v| v as f32).collect())
    };
    let source = loaded.path.display().to_string();
    let vocabulary = session.vocabulary(&args.common.weights)?;
    let options = native::Options {
        name: &name,
        batches: &batches,
        source: &source,
        tokens: vocabulary.as_ref().map(|v| (&v.tokens[..], v.separator())),
        machine: &machine,
    };
    let exported =
        native::export(&session.programs, &values, &options).map_err(Failure::Message)?;
    let linked = super::link::link(&args.output, &name, &exported.object, &tools)
        .map_err(Failure::Message)?;
    let header = args.output.join(format!("{name}.h"));
    files::write_atomically(&header, exported.header.as_bytes()).map_err(Failure::Message)?;
    let (shared, shared_bytes) = &linked.shared;
    let (r#static, static_bytes) = &linked.r#static;
    let (runtime, runtime_bytes) = &linked.runtime;
    if args.common.json {
        print_json(&json!({
            "format": "native",
            "name": name,
            "target": machine.triple().to_string(),
            "cpu": machine.cpu_name(),
            "features": exported.features,
            "header": header.display().to_string(),
            "shared": {"file": shared.display().to_string(), "bytes": shared_bytes},
            "static": {"file": r#static.display().to_string(), "bytes": static_bytes},
            "runtime": {"file": runtime.display().to_string(), "bytes": runtime_bytes},
            "object_bytes": exported.object.len(),
            "weights_bytes": exported.weights,
            "scratch_bytes": exported.scratch,
            "batches": batches,
            "threads": args.threads,
            "step": exported.step,
            "inputs": exported.inputs.iter().map(|(n, size, classes)| json!({"name": n, "size": size, "classes": classes})).collect::<Vec<_>>(),
            "output_size": exported.output_row,
        }));
    } else {
        out!(
            "wrote {} ({}), {} ({}, linked with {}, {}) and {}: `{name}_predict` at batches {}{}, weights inside ({}), {} of scratch per call; for {} (CPU {}, extensions: {})",
            shared.display(),
            super::bytes(*shared_bytes),
            r#static.display(),
            super::bytes(*static_bytes),
            runtime.display(),
            super::bytes(*runtime_bytes),
            header.display(),
            batches
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if exported.step {
                format!(", `{name}_step` for generation")
            } else {
                String::new()
            },
            super::bytes(exported.weights as u64),
            super::bytes(exported.scratch as u64),
            machine.triple(),
            machine.cpu_name(),
            if exported.features.is_empty() {
                "none".to_string()
            } else {
                exported.features.join(", ")
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The largest batch a library is compiled for.
const MAX_BATCH: usize = 4096;

/// Whether `name` can prefix C identifiers.
fn is_c_identifier(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| !c.is_ascii_digit())
}

/// A model's name as a C identifier: lower case, anything else an underscore.
fn c_identifier(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if is_c_identifier(&name) {
        name
    } else {
        format!("model_{name}")
    }
}
