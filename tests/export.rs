//! `nabla export` through the binary: what it says it wrote, and that what cannot be exported
//! is a located error naming the construct, nothing written. That the files run, and compute
//! what nabla computes, is checked by two runtimes nabla did not write: tract
//! (`tests/onnx/`, in CI) and onnxruntime (`benches/peers/onnx.sh`).

mod common;

use common::{nabla, scratch};
use serde_json::Value;

fn run_ok(args: &[&str]) -> String {
    let out = nabla(args);
    assert!(
        out.status.success(),
        "nabla {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_export_names_its_inputs_and_output_with_the_batch_symbolic() {
    let dir = scratch("export-names");
    let weights = dir.join("w.safetensors");
    let onnx = dir.join("cnn.onnx");
    let (w, o) = (weights.to_str().unwrap(), onnx.to_str().unwrap());
    run_ok(&[
        "train",
        "examples/mnist_cnn_bn.nn",
        "--steps",
        "1",
        "--quiet",
        "--save",
        w,
    ]);
    let info: Value = serde_json::from_str(&run_ok(&[
        "export",
        "examples/mnist_cnn_bn.nn",
        "--weights",
        w,
        "-o",
        o,
        "--json",
    ]))
    .expect("JSON");
    assert_eq!(info["opset"], 17);
    assert_eq!(
        info["inputs"],
        serde_json::json!([{"name": "x", "shape": ["B", "1", "28", "28"]}])
    );
    assert_eq!(
        info["output"],
        serde_json::json!({"name": "logits", "shape": ["B", "10"]})
    );
    let written = std::fs::metadata(&onnx).expect("the file").len();
    assert_eq!(info["bytes"], written);
    // The parameters are inside: 4 bytes for each of the 215,466 (`nabla check` counts them).
    assert!(written > 4 * 215_466, "{written} bytes");
}

/// A model whose causal attention has more queries than keys: the first queries see no key,
/// which nabla answers with zeros and a softmax cannot.
fn unseeing_attention() -> String {
    let rows = |n: usize, m: usize| -> String {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let row: Vec<String> = (0..8).map(|j| format!("{}", (i * 8 + j) % m)).collect();
                format!("[{}]", row.join(", "))
            })
            .collect();
        format!("[[{}]]", rows.join(", "))
    };
    format!(
        "model att {{\n  input q[B, 4, 8]\n  input kv[B, 2, 8]\n  target y[B, 4, 8]\n  k = dense(kv, 8)\n  a = attention(q, k, k, causal = true)\n  loss = mse(a, y)\n}}\n\ntrain default {{\n  data = inline(q = {}, kv = {}, y = {})\n  batch = 1\n}}\n",
        rows(4, 7),
        rows(2, 5),
        rows(4, 3)
    )
}

#[test]
fn what_cannot_be_exported_is_a_located_error() {
    let dir = scratch("export-unsupported");
    let file = dir.join("att.nn");
    std::fs::write(&file, unseeing_attention()).unwrap();
    let weights = dir.join("w.safetensors");
    let (f, w) = (file.to_str().unwrap(), weights.to_str().unwrap());
    run_ok(&["train", f, "--steps", "1", "--quiet", "--save", w]);
    let onnx = dir.join("att.onnx");
    let out = nabla(&["export", f, "--weights", w, "-o", onnx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "att.nn:6: causal attention with queries that see no key cannot be exported to ONNX (in `a`)"
        ),
        "{err}"
    );
    assert!(!onnx.exists(), "nothing written");
}
