//! `nabla train`, `eval` and `predict` end to end, through the binary as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nabla_runtime::checkpoint;

fn nabla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn tensor(path: &Path, name: &str) -> Vec<f64> {
    let all = checkpoint::load(path).expect("a checkpoint");
    all.into_iter()
        .find(|(n, _, _)| n == name)
        .expect("the tensor")
        .2
        .into_iter()
        .map(f64::from)
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The hand-worked 2-2-2 network: the loss before the step and every updated parameter. The
/// weights are the tutorial's published values (as PyTorch computes them); the biases, which
/// the tutorial leaves fixed but PyTorch updates, are derived here by the chain rule in f64.
#[test]
fn one_sgd_step_reproduces_the_tutorial() {
    let save = temp("backprop.safetensors");
    let o = nabla(&[
        "train",
        "examples/backprop.nn",
        "--json",
        "--save",
        save.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    let loss = lines[0]["loss"].as_f64().expect("loss");
    assert!((loss - 0.298371).abs() < 1e-6, "loss {loss}");
    for key in ["epoch", "step", "loss", "accuracy"] {
        assert!(lines[0].get(key).is_some(), "missing {key}");
    }

    let close = |name: &str, expected: &[f64]| {
        let got = tensor(&save, name);
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{name}: {got:?} vs {expected:?}");
        }
    };
    close("w1", &[0.149780716, 0.24975114, 0.19956143, 0.29950229]);
    close("w2", &[0.35891648, 0.511301270, 0.408666186, 0.561370121]);

    let (x, y) = ([0.05, 0.10], [0.01, 0.99]);
    let h: Vec<f64> = (0..2)
        .map(|j| sigmoid(x[0] * [0.15, 0.25][j] + x[1] * [0.20, 0.30][j] + 0.35))
        .collect();
    let out: Vec<f64> = (0..2)
        .map(|k| sigmoid(h[0] * [0.40, 0.50][k] + h[1] * [0.45, 0.55][k] + 0.60))
        .collect();
    let delta_out: Vec<f64> = (0..2)
        .map(|k| (out[k] - y[k]) * out[k] * (1.0 - out[k]))
        .collect();
    let w2 = [[0.40, 0.50], [0.45, 0.55]];
    let delta_h: Vec<f64> = (0..2)
        .map(|j| (delta_out[0] * w2[j][0] + delta_out[1] * w2[j][1]) * h[j] * (1.0 - h[j]))
        .collect();
    assert!((out[0] - 0.751365).abs() < 1e-6 && (out[1] - 0.772928).abs() < 1e-6);
    close(
        "b2",
        &[0.60 - 0.5 * delta_out[0], 0.60 - 0.5 * delta_out[1]],
    );
    close("b1", &[0.35 - 0.5 * delta_h[0], 0.35 - 0.5 * delta_h[1]]);
}

#[test]
fn xor_reaches_full_accuracy_and_predicts_it() {
    let save = temp("xor.safetensors");
    let o = nabla(&[
        "train",
        "examples/xor.nn",
        "--json",
        "--save",
        save.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = json_lines(&o).pop().expect("a line per epoch");
    assert_eq!(last["accuracy"].as_f64(), Some(1.0), "{last}");

    let eval = nabla(&[
        "eval",
        "examples/xor.nn",
        "--weights",
        save.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    assert_eq!(json_lines(&eval)[0]["accuracy"].as_f64(), Some(1.0));

    let csv = temp("xor.csv");
    std::fs::write(&csv, "0,0\n0,1\n1,0\n1,1\n").expect("write");
    let p = nabla(&[
        "predict",
        "examples/xor.nn",
        "--weights",
        save.to_str().expect("utf-8"),
        "--input",
        csv.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(p.status.success(), "{}", stderr(&p));
    let classes: Vec<u64> = json_lines(&p)
        .iter()
        .map(|l| l["class"].as_u64().expect("class"))
        .collect();
    assert_eq!(classes, [0, 1, 1, 0]);
}

#[test]
fn a_fixed_seed_reproduces_a_run_bit_for_bit() {
    let run = |seed: &str, name: &str| {
        let path = temp(name);
        let o = nabla(&[
            "train",
            "examples/xor.nn",
            "--epochs",
            "20",
            "--seed",
            seed,
            "--json",
            "--save",
            path.to_str().expect("utf-8"),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(path).expect("saved")
    };
    assert_eq!(run("5", "a.safetensors"), run("5", "b.safetensors"));
    assert_ne!(run("5", "c.safetensors"), run("6", "d.safetensors"));
}

#[test]
fn bad_data_gives_a_clear_error() {
    let model = "model m {\n  input x[B, 2]\n  target y[B] : class\n  loss = cross_entropy(dense(x, 3), y)\n}\n";
    let cases = [
        (
            "train t {\n  data = mnist(\"no/such/dir\")\n}\n",
            "no MNIST images-idx3-ubyte file",
        ),
        (
            "train t {\n  data = csv(\"no/such.csv\", x = 0..2, y = 2)\n}\n",
            "cannot read `no/such.csv`",
        ),
        (
            "train t {\n  data = inline(x = [[1, 2], [3, 4]], y = [[0], [5]])\n}\n",
            "label 5 of example 1 is not a class index in 0..3",
        ),
        (
            "train t {\n  data = inline(x = [[1, 2, 3]], y = [[0]])\n}\n",
            "gives `x` 3 values per example, but the model needs 2",
        ),
    ];
    for (i, (train, message)) in cases.iter().enumerate() {
        let file = temp(&format!("bad{i}.nn"));
        std::fs::write(&file, format!("{model}{train}")).expect("write");
        let o = nabla(&["train", file.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(message),
            "expected `{message}` in: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"));
    }
    let corrupt = temp("corrupt-images-idx3-ubyte");
    std::fs::write(&corrupt, [0u8, 0, 8, 3, 0, 0, 0, 9]).expect("write");
    let file = temp("corrupt.nn");
    let labels = temp("labels-idx1-ubyte");
    std::fs::write(&labels, [0u8, 0, 8, 1, 0, 0, 0, 0]).expect("write");
    std::fs::write(
        &file,
        format!(
            "{model}train t {{\n  data = idx(images = \"{}\", labels = \"{}\")\n}}\n",
            corrupt.display(),
            labels.display()
        ),
    )
    .expect("write");
    let o = nabla(&["train", file.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("corrupt-images-idx3-ubyte` is not a valid IDX file"),
        "{}",
        stderr(&o)
    );
}
