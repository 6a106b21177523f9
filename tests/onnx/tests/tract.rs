//! `nabla export --format onnx`: every example model, exported with parameters saved by `nabla
//! train`, is loaded and run by tract (an ONNX runtime nabla did not write), and its outputs
//! equal `nabla predict`'s on the same rows within 1e-5.
//!
//! It runs the `nabla` binary the repository's build made (`target/release/nabla`, or the path
//! in `$NABLA`), from the repository's root, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tract_onnx::prelude::*;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the `nabla` binary from the repository's root.
fn nabla(args: &[&str]) -> Output {
    let binary = std::env::var_os("NABLA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/nabla"));
    assert!(
        binary.exists(),
        "no nabla binary at {}: build it first (cargo build --release --locked)",
        binary.display()
    );
    Command::new(binary)
        .args(args)
        .current_dir(root())
        .output()
        .expect("the nabla binary runs")
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn run_ok(args: &[&str]) -> String {
    let out = nabla(args);
    assert!(
        out.status.success(),
        "nabla {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows of input values: indices below `vocab` for a token model, else reals in [-1, 1].
fn rows(count: usize, width: usize, vocab: Option<usize>) -> Vec<Vec<f64>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            (0..width)
                .map(|_| match vocab {
                    Some(v) => (next() % v as u64) as f64,
                    None => (next() % 20_001) as f64 / 10_000.0 - 1.0,
                })
                .collect()
        })
        .collect()
}

/// The ONNX model at `path` run by tract on `rows`, one output row per input row.
fn tract_outputs(path: &Path, shape: &[usize], rows: &[Vec<f64>], indices: bool) -> Vec<Vec<f64>> {
    let mut dims = vec![rows.len()];
    dims.extend(shape);
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let (fact, input): (InferenceFact, Tensor) = if indices {
        let data: Vec<i64> = flat.iter().map(|&v| v as i64).collect();
        (
            i64::fact(&dims).into(),
            tract_ndarray::ArrayD::from_shape_vec(dims.clone(), data)
                .expect("a shape for the rows")
                .into(),
        )
    } else {
        let data: Vec<f32> = flat.iter().map(|&v| v as f32).collect();
        (
            f32::fact(&dims).into(),
            tract_ndarray::ArrayD::from_shape_vec(dims.clone(), data)
                .expect("a shape for the rows")
                .into(),
        )
    };
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, fact))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract loads {}: {e:?}", path.display()));
    let outputs = model
        .run(tvec!(input.into()))
        .unwrap_or_else(|e| panic!("tract runs {}: {e:?}", path.display()));
    let view = outputs[0]
        .to_plain_array_view::<f32>()
        .expect("f32 outputs");
    let values: Vec<f64> = view.iter().map(|&v| f64::from(v)).collect();
    values
        .chunks(values.len() / rows.len())
        .map(<[f64]>::to_vec)
        .collect()
}

/// Trains `example` (a name under `examples/`, or a path) for two steps, exports it, and
/// compares tract's outputs on three rows with `nabla predict`'s.
fn exported_matches_predict(example: &str, vocab: Option<usize>) {
    let file = if example.ends_with(".nn") {
        example.to_string()
    } else {
        format!("examples/{example}.nn")
    };
    let name = Path::new(&file)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = scratch(&name);
    let weights = dir.join("w.safetensors");
    let onnx = dir.join("model.onnx");
    let (w, o) = (weights.to_str().unwrap(), onnx.to_str().unwrap());
    run_ok(&["train", &file, "--steps", "2", "--quiet", "--save", w]);
    let info: Value = serde_json::from_str(&run_ok(&[
        "export",
        &file,
        "--weights",
        w,
        "--format",
        "onnx",
        "-o",
        o,
        "--json",
    ]))
    .expect("JSON");
    let input_shape: Vec<usize> = info["inputs"][0]["shape"]
        .as_array()
        .expect("a shape")
        .iter()
        .skip(1)
        .map(|d| {
            d.as_str()
                .and_then(|d| d.parse().ok())
                .expect("known sizes after the batch")
        })
        .collect();
    assert_eq!(
        info["inputs"][0]["shape"][0], "B",
        "the batch stays symbolic"
    );
    let rows = rows(3, input_shape.iter().product(), vocab);
    let csv = dir.join("rows.csv");
    let text: Vec<String> = rows
        .iter()
        .map(|r| r.iter().map(f64::to_string).collect::<Vec<_>>().join(","))
        .collect();
    std::fs::write(&csv, text.join("\n") + "\n").unwrap();
    let predicted: Vec<Vec<f64>> = run_ok(&[
        "predict",
        &file,
        "--weights",
        w,
        "--input",
        csv.to_str().unwrap(),
        "--json",
    ])
    .lines()
    .map(|l| {
        let v: Value = serde_json::from_str(l).expect("JSON");
        v["prediction"]
            .as_array()
            .expect("values")
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect()
    })
    .collect();
    let ran = tract_outputs(&onnx, &input_shape, &rows, vocab.is_some());
    assert_eq!(ran.len(), predicted.len());
    for (row, (a, b)) in ran.iter().zip(&predicted).enumerate() {
        assert_eq!(a.len(), b.len(), "{example} row {row}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5,
                "{example} row {row} output {i}: tract {x}, nabla predict {y}"
            );
        }
    }
}

#[test]
fn the_mlps_run_in_tract_as_in_nabla() {
    for example in [
        "xor",
        "spiral",
        "linear_regression",
        "backprop",
        "mnist_mlp",
        "mnist_pytorch_recipe",
    ] {
        exported_matches_predict(example, None);
    }
}

#[test]
fn the_cnns_run_in_tract_as_in_nabla() {
    exported_matches_predict("mnist_cnn", None);
    exported_matches_predict("mnist_cnn_bn", None);
}

#[test]
fn the_char_rnn_runs_in_tract_as_in_nabla() {
    exported_matches_predict("char_rnn", Some(76));
}

#[test]
fn the_gpt_runs_in_tract_as_in_nabla() {
    exported_matches_predict("gpt_shakespeare", Some(65));
}

#[test]
fn average_pooling_runs_in_tract_as_in_nabla() {
    let dir = scratch("pool-model");
    let file = dir.join("pool.nn");
    let image: Vec<String> = (0..25).map(|i| format!("{}", i % 7)).collect();
    let rows: Vec<String> = image
        .chunks(5)
        .map(|r| format!("[{}]", r.join(", ")))
        .collect();
    std::fs::write(
        &file,
        format!(
            "model pool {{\n  input x[B, 2, 5, 5]\n  target y[B] : class\n  p = avg_pool2d(x, 3, stride = 2, padding = 1)\n  logits = dense(flatten(p), 3)\n  loss = cross_entropy(logits, y)\n}}\n\ntrain default {{\n  data = inline(x = [[[{0}], [{0}]]], y = [1])\n  batch = 1\n}}\n",
            rows.join(", ")
        ),
    )
    .unwrap();
    exported_matches_predict(file.to_str().unwrap(), None);
}
