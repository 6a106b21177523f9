//! `nabla train`, `eval` and `predict` end to end, through the binary as a user runs them.

use std::path::{Path, PathBuf};
use std::process::Output;

use nabla_runtime::checkpoint;

mod common;
use common::nabla;

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
    let all = checkpoint::load(path, "checkpoint", 1 << 30).expect("a checkpoint");
    all.tensors
        .into_iter()
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
            "no/such.csv`: No such file",
        ),
        (
            "train t {\n  data = inline(x = [[1, 2], [3, 4]], y = [[0], [5]])\n}\n",
            "`y` value 5 of example 1 is not an index in 0..3",
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

/// Three steps of every optimizer on `loss = sum(w^3) / 3` (gradient `w^2`) against the
/// algorithms as `torch.optim` documents them, computed here in f64.
#[test]
fn optimizers_follow_torch_optim() {
    struct Opt {
        source: &'static str,
        kind: &'static str,
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        l1: f64,
    }
    let base = Opt {
        source: "",
        kind: "",
        lr: 0.1,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        l1: 0.0,
    };
    let cases = [
        Opt {
            source: "sgd(0.1)",
            kind: "sgd",
            ..base
        },
        Opt {
            source: "sgd(0.1, momentum = 0.9)",
            kind: "sgd",
            momentum: 0.9,
            ..base
        },
        Opt {
            source: "sgd(0.1, momentum = 0.9, nesterov = true, weight_decay = 0.1)",
            kind: "sgd",
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
            ..base
        },
        Opt {
            source: "sgd(0.1, l1 = 0.05)",
            kind: "sgd",
            l1: 0.05,
            ..base
        },
        Opt {
            source: "adagrad(0.1)",
            kind: "adagrad",
            ..base
        },
        Opt {
            source: "rmsprop(0.01)",
            kind: "rmsprop",
            lr: 0.01,
            ..base
        },
        Opt {
            source: "rmsprop(0.01, momentum = 0.5)",
            kind: "rmsprop",
            lr: 0.01,
            momentum: 0.5,
            ..base
        },
        Opt {
            source: "adam(0.1, weight_decay = 0.01)",
            kind: "adam",
            weight_decay: 0.01,
            ..base
        },
        Opt {
            source: "adamax(0.1)",
            kind: "adamax",
            ..base
        },
    ];
    for (i, o) in cases.iter().enumerate() {
        let file = temp(&format!("opt{i}.nn"));
        std::fs::write(&file, format!(
            "model q {{\n  input x[B, 1]\n  param w[3] = [1.0, -2.0, 0.5]\n  loss = sum(w * w * w) / 3 + 0 * sum(x)\n}}\ntrain t {{\n  data = inline(x = [[0]])\n  optimizer = {}\n  batch = 1\n  steps = 3\n}}\n",
            o.source
        )).expect("write");
        let save = temp(&format!("opt{i}.safetensors"));
        let out = nabla(&[
            "train",
            file.to_str().expect("utf-8"),
            "--json",
            "--save",
            save.to_str().expect("utf-8"),
        ]);
        assert!(out.status.success(), "{}: {}", o.source, stderr(&out));
        let got = tensor(&save, "w");

        let mut w = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        let (beta1, beta2, eps) = match o.kind {
            "adagrad" => (0.9, 0.999, 1e-10),
            "rmsprop" => (0.9, 0.99, 1e-8),
            _ => (0.9, 0.999, 1e-8),
        };
        for t in 1..=3 {
            for j in 0..3 {
                let g = w[j] * w[j] + o.weight_decay * w[j] + o.l1 * w[j].signum();
                let step = match o.kind {
                    "sgd" if o.momentum == 0.0 => g,
                    "sgd" => {
                        m[j] = o.momentum * m[j] + g;
                        if o.nesterov {
                            g + o.momentum * m[j]
                        } else {
                            m[j]
                        }
                    }
                    "adagrad" => {
                        v[j] += g * g;
                        g / (v[j].sqrt() + eps)
                    }
                    "rmsprop" => {
                        v[j] = beta2 * v[j] + (1.0 - beta2) * g * g;
                        let u = g / (v[j].sqrt() + eps);
                        if o.momentum == 0.0 {
                            u
                        } else {
                            m[j] = o.momentum * m[j] + u;
                            m[j]
                        }
                    }
                    "adam" => {
                        m[j] = beta1 * m[j] + (1.0 - beta1) * g;
                        v[j] = beta2 * v[j] + (1.0 - beta2) * g * g;
                        let m_hat = m[j] / (1.0 - beta1.powi(t));
                        let v_hat = v[j] / (1.0 - beta2.powi(t));
                        m_hat / (v_hat.sqrt() + eps)
                    }
                    _ => {
                        m[j] = beta1 * m[j] + (1.0 - beta1) * g;
                        v[j] = (beta2 * v[j]).max(g.abs() + eps);
                        m[j] / (1.0 - beta1.powi(t)) / v[j]
                    }
                };
                w[j] -= o.lr * step;
            }
        }
        for (g, e) in got.iter().zip(&w) {
            assert!(
                (g - e).abs() < 1e-5 * (1.0 + e.abs()),
                "{}: {got:?} vs {w:?}",
                o.source
            );
        }
    }
}

/// Issue 6's reproducer: `bce` on a sigmoid saturated in f32 (logit 40 rounds `p` to 1). One
/// SGD step must match PyTorch (`w = 40.0`, `b = 1.5e-6`), not turn the parameters NaN.
#[test]
fn a_saturated_bce_step_matches_pytorch() {
    let file = temp("saturated.nn");
    std::fs::write(
        &file,
        "model m {\n  input x[B, 1]\n  target y[B, 1]\n  param w[1, 1] = [[40]]\n  param b[1] = [0]\n  p = sigmoid(x @ w + b)\n  loss = bce(p, y)\n}\ntrain t {\n  data = inline(x = [[1], [-0.5], [0.25]], y = [[1], [0], [1]])\n  optimizer = sgd(0.1)\n  batch = 3\n  steps = 1\n}\n",
    )
    .expect("write");
    let save = temp("saturated.safetensors");
    let o = nabla(&[
        "train",
        file.to_str().expect("utf-8"),
        "--save",
        save.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tensor(&save, "w"), [40.0]);
    // PyTorch: b = -0.1 * mean(p - t) over the three examples, with p = sigmoid(40) = 1 in f32.
    let p = |z: f64| sigmoid(z) as f32 as f64;
    let expected_b = -0.1 * ((p(40.0) - 1.0) + p(-20.0) + (p(10.0) - 1.0)) / 3.0;
    let b = tensor(&save, "b")[0];
    assert!(
        (b - expected_b).abs() < 1e-11,
        "b = {b}, expected {expected_b}"
    );
    assert!((b - 1.5e-6).abs() < 1e-7);
}

/// `nabla bench` runs on synthetic data and reports what the peers script reads.
#[test]
fn bench_reports_compile_and_step_times() {
    for args in [&[][..], &["--no-fuse", "--no-simplify"][..]] {
        let mut all = vec!["bench", "examples/xor.nn", "--steps", "3", "--json"];
        all.extend_from_slice(args);
        let o = nabla(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        let report = &json_lines(&o)[0];
        for key in [
            "compile_ms",
            "step_ms",
            "samples_per_s",
            "peak_rss_mb",
            "threads",
            "batch",
        ] {
            assert!(report.get(key).is_some(), "{key} missing from {report}");
        }
        assert!(report["step_ms"].as_f64().is_some_and(|t| t > 0.0));
        assert_eq!(report["batch"], 4);
    }
}

/// `nabla bench --profile` names every kernel of the step with its work, its place under this
/// machine's roofline and its source lines: the first convolution of the CNN does exactly
/// 2 x 64 images x 16 channels x 784 positions x 25 taps operations, and its weight gradient
/// comes from line 7.
#[test]
fn bench_profiles_every_kernel() {
    let o = nabla(&[
        "bench",
        "examples/mnist_cnn.nn",
        "--steps",
        "2",
        "--profile",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    let (kernels, peaks) = (&lines[1..lines.len() - 1], &lines[lines.len() - 1]);
    assert_eq!(
        peaks["kernels"].as_u64(),
        Some(kernels.len() as u64),
        "{peaks}"
    );
    assert!(
        peaks["peak_gflop_per_s"].as_f64().is_some_and(|f| f > 0.1),
        "{peaks}"
    );
    assert!(
        peaks["peak_gb_per_s"].as_f64().is_some_and(|b| b > 0.1),
        "{peaks}"
    );
    let times: Vec<f64> = kernels.iter().map(|k| k["ms"].as_f64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "slowest first: {times:?}"
    );
    for k in kernels {
        assert!(k["bytes"].as_u64().is_some_and(|b| b > 0), "{k}");
        assert!(
            ["compute", "memory"].contains(&k["bound"].as_str().unwrap()),
            "{k}"
        );
    }
    let find = |title: &str| {
        kernels
            .iter()
            .find(|k| k["title"].as_str().unwrap().starts_with(title))
            .unwrap_or_else(|| panic!("no `{title}` kernel in {kernels:?}"))
    };
    let first = kernels.iter().find(|k| k["kernel"] == 0).expect("kernel 0");
    assert_eq!(first["title"], "conv", "{first}");
    assert_eq!(
        first["flops"].as_u64(),
        Some(2 * 64 * 16 * 784 * 25),
        "{first}"
    );
    assert_eq!(
        find("conv_weight_grad (grad c1.w)")["lines"],
        serde_json::json!([7])
    );
    let text = stdout(&nabla(&[
        "bench",
        "examples/mnist_cnn.nn",
        "--steps",
        "2",
        "--profile",
    ]));
    assert!(text.contains("this machine's peaks"), "{text}");
    assert!(text.contains("conv_weight_grad (grad c1.w) [7]"), "{text}");
}

/// Epoch lines fit an 80-column terminal; `--log-every` and `--quiet` thin them out; `check
/// --json` gives shapes as arrays, as `graph --json` does.
#[test]
fn output_is_readable() {
    let o = nabla(&["train", "examples/xor.nn", "--epochs", "12"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let epochs: Vec<&str> = text.lines().filter(|l| l.starts_with("epoch")).collect();
    assert_eq!(epochs.len(), 13, "{text}");
    assert!(epochs.iter().all(|l| l.chars().count() < 80), "{text}");
    let every = nabla(&[
        "train",
        "examples/xor.nn",
        "--epochs",
        "12",
        "--log-every",
        "5",
    ]);
    let shown: Vec<String> = stdout(&every)
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(shown, ["0/12", "1/12", "5/12", "10/12", "12/12"]);
    let quiet = nabla(&["train", "examples/xor.nn", "--epochs", "12", "--quiet"]);
    let lines: Vec<String> = stdout(&quiet).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with("epoch 12/12"), "{lines:?}");
    let check = nabla(&["check", "examples/xor.nn", "--json"]);
    let summary = &json_lines(&check)[0];
    assert_eq!(summary["inputs"][0]["shape"], serde_json::json!(["B", "2"]));
    assert!(
        summary["train"][0]["optimizer"]
            .as_str()
            .unwrap_or("")
            .starts_with("adam(lr = 0.05")
    );
}

/// Twenty steps of the MNIST MLP already classify most of the official test set: the
/// evaluation program's predictions are read right (a result sharing a larger buffer once
/// made the test accuracy 0.03% while the loss was right).
#[test]
fn a_short_mnist_run_predicts_the_test_set() {
    let o = nabla(&["train", "examples/mnist_mlp.nn", "--steps", "20", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = json_lines(&o).pop().expect("epoch lines");
    let accuracy = last["test_accuracy"].as_f64().expect("test accuracy");
    assert!(accuracy > 0.5, "{last}");
}

/// PyTorch's `BatchNorm1d` on a batch worked by hand: x = [[1, 2], [3, 6]] has batch means
/// [2, 4], biased variances [1, 4] (unbiased [2, 8]), so training normalises it to
/// [[-1, -1], [1, 1]] (mse against 0: 1, less eps), and one step with momentum 0.1 moves the
/// running statistics from (0, 1) to mean [0.2, 0.4] and variance [1.1, 1.7]; evaluation then
/// normalises with those.
#[test]
fn batch_norm_trains_on_batch_statistics_and_evaluates_on_running_ones() {
    let file = temp("bn.nn");
    std::fs::write(
        &file,
        "model bn {
  input  x[B, 2]
  target t[B, 2]
  y      = batch_norm(x, affine = false)
  loss   = mse(y, t)
}
train default {
  data      = inline(x = [[1, 2], [3, 6]], t = [[0, 0], [0, 0]])
  optimizer = sgd(0.1)
  batch     = 2
  epochs    = 1
}",
    )
    .unwrap();
    let saved = temp("bn.safetensors");
    let file = file.display().to_string();
    let out = nabla(&[
        "train",
        &file,
        "--json",
        "--save",
        &saved.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = &json_lines(&out)[0];
    let eps = 1e-5;
    let train_loss = (1.0 / (1.0 + eps) + 4.0 / (4.0 + eps)) / 2.0;
    assert!(
        (first["loss"].as_f64().unwrap() - train_loss).abs() < 1e-6,
        "{first}"
    );
    let mean = tensor(&saved, "y.running_mean");
    let var = tensor(&saved, "y.running_var");
    for (got, want) in mean.iter().chain(&var).zip([0.2, 0.4, 1.1, 1.7]) {
        assert!(
            (got - want).abs() < 1e-6,
            "running statistics {mean:?} {var:?}"
        );
    }
    let eval = nabla(&[
        "eval",
        &file,
        "--weights",
        &saved.display().to_string(),
        "--json",
    ]);
    let evaluated: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let normalised = |x: f64, m: f64, v: f64| (x - m) / (v + eps).sqrt();
    let eval_loss = [
        (1.0, 0.2, 1.1),
        (2.0, 0.4, 1.7),
        (3.0, 0.2, 1.1),
        (6.0, 0.4, 1.7),
    ]
    .iter()
    .map(|&(x, m, v)| normalised(x, m, v).powi(2))
    .sum::<f64>()
        / 4.0;
    assert!(
        (evaluated["loss"].as_f64().unwrap() - eval_loss).abs() < 1e-4,
        "{evaluated}"
    );
}
