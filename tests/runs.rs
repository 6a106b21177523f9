//! Long training runs as a user lives them, through the binary: checkpoints and exact resume,
//! Ctrl-C and SIGKILL, the divergence guard, validation and early stopping, fine-tuning,
//! output paths, metrics logs and pictures, and inspecting saved weights.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nabla_runtime::checkpoint;

mod common;
use common::nabla;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory for one test.
fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-runs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes a model file into `dir`.
fn model(dir: &Path, name: &str, source: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, source).expect("model written");
    path.display().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A two-class problem with 250 steps an epoch: long enough to be interrupted mid-epoch. Its
/// dropout masks are drawn afresh every step, so an exact resume must draw them again.
const CIRCLE: &str = "model circle {
  input  x[B, 2]
  target y[B, 1]
  h      = dropout(relu(dense(x, 8)), 0.1)
  loss   = bce_with_logits(dense(h, 1), y)
}
train default {
  data      = circle(2000, noise = 0.1)
  optimizer = sgd(0.05, momentum = 0.9)
  batch     = 8
  epochs    = 100000
  seed      = 5
}";

#[test]
fn an_interrupted_run_resumes_bit_identical_to_the_uninterrupted_one() {
    let dir = temp("resume");
    let file = model(&dir, "circle.nn", CIRCLE);
    let checkpoints = dir.join("ck");
    let log = dir.join("metrics.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["train", &file, "--json", "--checkpoint", &s(&checkpoints)])
        .args(["--log", &s(&log)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        let epoch = serde_json::from_str::<serde_json::Value>(&line).expect("JSON")["epoch"]
            .as_u64()
            .expect("an epoch");
        if epoch >= 3 {
            break;
        }
    }
    // Keep reading, so that the run never sees a closed pipe.
    let drain = std::thread::spawn(move || lines.count());
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let out = child.wait_with_output().expect("ends");
    drain.join().expect("drained");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "Ctrl-C exits 130: {stderr}");
    assert!(
        stderr.contains("saved the run to") && stderr.contains("--resume"),
        "{stderr}"
    );

    let last = checkpoints.join("last.safetensors");
    let saved = checkpoint::load(&last, "checkpoint", 1 << 30).expect("a whole checkpoint");
    let position: serde_json::Value =
        serde_json::from_str(&saved.metadata["nabla.position"]).expect("a position");
    let stopped_at = position["epoch"].as_u64().expect("epoch");
    assert!(
        (3..40).contains(&stopped_at),
        "stopped in epoch {stopped_at}"
    );

    let resumed = dir.join("resumed.safetensors");
    let out = nabla(&[
        "train",
        &file,
        "--resume",
        &s(&checkpoints),
        "--epochs",
        "40",
        "--save",
        &s(&resumed),
        "--log",
        &s(&log),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The interruption and the resumption name the same position in the same words.
    let at = stderr
        .split("interrupted ")
        .nth(1)
        .and_then(|rest| rest.split(" of ").next())
        .expect("where the run stopped");
    assert!(
        text(&out.stdout).contains(&format!("resuming {}, {at}\n", s(&checkpoints))),
        "`{at}` in:\n{}",
        text(&out.stdout)
    );
    let straight = dir.join("straight.safetensors");
    let out = nabla(&["train", &file, "--epochs", "40", "--save", &s(&straight)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read(&resumed).unwrap() == std::fs::read(&straight).unwrap(),
        "the resumed run ends with the uninterrupted run's parameters, bit for bit"
    );
    let epochs: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        epochs,
        (0..=40).collect::<Vec<_>>(),
        "the log reads as one run"
    );

    let out = nabla(&[
        "train",
        &file,
        "--resume",
        &s(&checkpoints),
        "--batch",
        "16",
    ]);
    assert!(text(&out.stderr).contains("`--batch 16` differs from the checkpoint's batch 8"));
    let out = nabla(&["train", &file, "--resume", &s(&straight)]);
    assert!(text(&out.stderr).contains("is a weights file, not a checkpoint"));
}

/// A transformer with every per-step setting: AdamW, a warm-up and cosine decay counted in
/// steps, clipping. 1,249 windows in batches of 8: 157 steps an epoch.
const STEPPED: &str = "model lm {
  input  tokens[B, 16] : index
  target next[B, 16] : class
  tok    = embedding(tokens, 76, 16, init = normal(0, 0.02))
  param  pos[16, 16] = normal(0, 0.02)
  x      = tok + pos
  h      = x + causal_self_attention(layer_norm(x, bias = false), 2)
  logits = layer_norm(h, bias = false) @ transpose(tok.w)
  loss   = cross_entropy(logits, next)
}
train default {
  data           = text(\"text.txt\", seq = 16, level = \"char\")
  optimizer      = adamw(0.01, beta2 = 0.99, weight_decay = 0.1, decay_vectors = false)
  schedule       = cosine(60, min_lr = 0.001, warmup = 10)
  clip_grad_norm = 0.5
  batch          = 8
  seed           = 3
}";

/// A run that `--steps` ended mid-epoch resumes with more steps bit for bit as one run of
/// them all, the step-counted schedule included. It used to count the ended epoch as whole,
/// look for the next step in the next epoch, find none, and report empty epochs forever.
#[test]
fn a_run_ended_by_its_step_count_resumes_with_more_steps_bit_identical() {
    let dir = temp("steps");
    let text_file = dir.join("text.txt");
    let source = std::fs::read_to_string("data/text/shakespeare.txt").expect("the bundled text");
    std::fs::write(&text_file, &source[..20_000]).expect("text written");
    let file = model(&dir, "lm.nn", STEPPED);
    let (straight, resumed, checkpoints) = (
        dir.join("straight.safetensors"),
        dir.join("resumed.safetensors"),
        dir.join("ck"),
    );
    let out = nabla(&["train", &file, "--steps", "60", "--save", &s(&straight)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = nabla(&[
        "train",
        &file,
        "--steps",
        "25",
        "--checkpoint",
        &s(&checkpoints),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args([
            "train",
            &file,
            "--resume",
            &s(&checkpoints),
            "--steps",
            "60",
        ])
        .args(["--save", &s(&resumed), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let started = std::time::Instant::now();
    while child.try_wait().expect("waits").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().expect("SIGKILL");
            panic!("the resumed run did not end within a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        std::fs::read(&resumed).unwrap() == std::fs::read(&straight).unwrap(),
        "the resumed run ends with the uninterrupted run's parameters, bit for bit"
    );
}

#[test]
fn a_killed_run_never_leaves_a_torn_checkpoint() {
    let dir = temp("sigkill");
    let file = model(&dir, "circle.nn", CIRCLE);
    let checkpoints = dir.join("ck");
    for delay_ms in [150, 230, 310] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args(["train", &file, "--quiet", "--checkpoint", &s(&checkpoints)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts");
        let last = checkpoints.join("last.safetensors");
        // On a loaded machine the start alone may take longer than the delay: the kill lands
        // `delay_ms` after the first checkpoint exists, while later ones are being written.
        let started = std::time::Instant::now();
        while !last.exists() && started.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("ends");
        assert!(
            last.exists(),
            "epochs take milliseconds: checkpoints were being written"
        );
        let out = nabla(&["weights", &s(&last)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn divergence_stops_training_and_names_the_first_non_finite_tensor() {
    let dir = temp("diverge");
    let out = nabla(&["train", "examples/linear_regression.nn", "--lr", "1e3"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("training diverged in epoch") && stderr.contains("the loss is inf"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`--lr 100`") && stderr.contains("--allow-nonfinite"),
        "{stderr}"
    );
    let out = nabla(&[
        "train",
        "examples/linear_regression.nn",
        "--lr",
        "1e3",
        "--allow-nonfinite",
    ]);
    assert!(out.status.success(), "the guard can be turned off");

    let sqrt = model(
        &dir,
        "sqrt.nn",
        "model g {
  input  x[B, 1]
  target y[B, 1]
  param  w[1, 1] = zeros
  loss   = mean(sqrt(abs(x @ w))) + mse(x, y)
}
train default {
  data  = inline(x = [[1], [2]], y = [[1], [2]])
  batch = 2
}",
    );
    let out = nabla(&["train", &sqrt]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("epoch 1, step 1: the gradient of `w` is NaN at element 0"),
        "{stderr}"
    );

    let linear = model(
        &dir,
        "linear.nn",
        "model l {
  input  x[B, 1]
  target y[B, 1]
  param  w[1, 1] = zeros
  loss   = mse(x @ w, y)
}
train default {
  data   = inline(x = [[1]], y = [[1]])
  batch  = 1
  epochs = 5
}",
    );
    let checkpoints = dir.join("ck");
    let out = nabla(&[
        "train",
        &linear,
        "--lr",
        "3e38",
        "--checkpoint",
        &s(&checkpoints),
    ]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("epoch 1, step 1: `w` became inf at element 0 in the update"),
        "{stderr}"
    );
    assert!(
        !checkpoints.join("last.safetensors").exists(),
        "nothing non-finite is saved"
    );
}

/// Two interleaved spirals, a tenth held out, stopped early on the validation loss.
const SPIRAL: &str = "model spiral {
  input  x[B, 2]
  target y[B, 1]
  h1     = tanh(dense(x, 16))
  h2     = tanh(dense(h1, 16))
  logit  = dense(h2, 1)
  loss   = bce_with_logits(logit, y)
}
train default {
  data           = spiral(400, noise = 0.3)
  validation     = 0.1
  early_stopping = early_stopping(patience = 4)
  optimizer      = adam(0.03)
  batch          = 16
  epochs         = 500
  seed           = 2
}";

#[test]
fn early_stopping_stops_and_keeps_the_best_epoch() {
    let dir = temp("early");
    let file = model(&dir, "spiral.nn", SPIRAL);
    let saved = dir.join("w.safetensors");
    let checkpoints = dir.join("ck");
    let out = nabla(&[
        "train",
        &file,
        "--json",
        "--save",
        &s(&saved),
        "--checkpoint",
        &s(&checkpoints),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epochs = &reports[1..];
    assert!(
        epochs.len() < 500,
        "stopped early, after {} epochs",
        epochs.len()
    );
    let val = |r: &serde_json::Value| r["val_loss"].as_f64().expect("val_loss every epoch");
    let best = epochs
        .iter()
        .min_by(|a, b| val(a).total_cmp(&val(b)))
        .unwrap();
    let best_epoch = best["epoch"].as_u64().unwrap();
    assert_eq!(
        epochs.len() as u64,
        best_epoch + 4,
        "stopped `patience` epochs after the best"
    );
    let tensors = |p: &Path| checkpoint::load(p, "checkpoint", 1 << 30).unwrap().tensors;
    assert_eq!(
        tensors(&saved),
        tensors(&checkpoints.join("best.safetensors")),
        "the saved parameters are the best epoch's"
    );
    let eval = nabla(&["eval", &file, "--weights", &s(&saved), "--json"]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));

    let out = nabla(&["train", &file, "--epochs", "3"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("on 360 examples (validation: 40)"),
        "{stdout}"
    );
    assert!(stdout.contains("  val "), "{stdout}");
}

#[test]
fn bad_output_paths_are_rejected_before_training_starts() {
    let dir = temp("paths");
    std::fs::write(dir.join("file"), b"").unwrap();
    let missing = s(&dir.join("missing/w.safetensors"));
    let under_file = s(&dir.join("file/sub"));
    let as_dir = s(&dir);
    for (flag, path, says) in [
        ("--save", missing.as_str(), "does not exist"),
        ("--save", as_dir.as_str(), "is a directory"),
        ("--log", missing.as_str(), "does not exist"),
        (
            "--checkpoint",
            under_file.as_str(),
            "cannot create the --checkpoint directory",
        ),
        (
            "--plot",
            under_file.as_str(),
            "cannot create the --plot directory",
        ),
    ] {
        let out = nabla(&["train", "examples/mnist_mlp.nn", flag, path]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {path}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(says),
            "{flag} {path}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing was trained: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn fine_tuning_starts_from_saved_weights_and_names_what_does_not_fit() {
    let dir = temp("finetune");
    let saved = dir.join("xor.safetensors");
    assert!(
        nabla(&["train", "examples/xor.nn", "--save", &s(&saved)])
            .status
            .success()
    );
    let eval = nabla(&["eval", "examples/xor.nn", "--weights", &s(&saved), "--json"]);
    let evaluated: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("JSON");
    let out = nabla(&[
        "train",
        "examples/xor.nn",
        "--weights",
        &s(&saved),
        "--epochs",
        "1",
        "--json",
    ]);
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        first["loss"], evaluated["loss"],
        "training starts where the saved run ended"
    );

    let wider = model(
        &dir,
        "wider.nn",
        &std::fs::read_to_string("examples/xor.nn")
            .unwrap()
            .replace("dense(x, 4)", "dense(x, 16)"),
    );
    let out = nabla(&["train", &wider, "--weights", &s(&saved)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("has shape [2, 4], but the model's `h.w` has shape [2, 16]"),
        "{stderr}"
    );
    let out = nabla(&[
        "train",
        "examples/linear_regression.nn",
        "--weights",
        &s(&saved),
    ]);
    assert!(
        text(&out.stderr).contains("has no tensor `w`"),
        "{}",
        text(&out.stderr)
    );
}

/// A PNG's size and how many distinct colours it has.
fn png_summary(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).expect("pixels");
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..frame.buffer_size()].chunks(3).collect();
    (frame.width, frame.height, colours.len())
}

#[test]
fn training_draws_its_curves_and_decision_boundary() {
    let dir = temp("plots");
    let file = model(&dir, "spiral.nn", SPIRAL);
    let plots = dir.join("plots");
    let log = dir.join("metrics.jsonl");
    let saved = dir.join("w.safetensors");
    let out = nabla(&[
        "train",
        &file,
        "--plot",
        &s(&plots),
        "--log",
        &s(&log),
        "--save",
        &s(&saved),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (w, h, colours) = png_summary(&plots.join("curves.png"));
    assert_eq!((w, h), (1200, 480), "loss and accuracy side by side");
    assert!(
        colours > 50,
        "curves, labels and legend are drawn ({colours} colours)"
    );
    let (_, _, colours) = png_summary(&plots.join("boundary.png"));
    assert!(
        colours > 200,
        "shaded regions and points ({colours} colours)"
    );

    let svg = dir.join("curves.svg");
    let out = nabla(&["plot", &s(&log), "-o", &s(&svg)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drawn = std::fs::read_to_string(&svg).unwrap();
    for label in ["loss", "accuracy (%)", "epoch", "train", "validation"] {
        assert!(
            drawn.contains(&format!(">\n{label}\n<")),
            "the SVG has the text {label}"
        );
    }
    let boundary = dir.join("boundary.svg");
    let out = nabla(&[
        "plot",
        "boundary",
        &file,
        "--weights",
        &s(&saved),
        "-o",
        &s(&boundary),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(&boundary)
            .unwrap()
            .contains(">\nclass 1\n<")
    );

    let out = nabla(&[
        "plot",
        "boundary",
        "examples/linear_regression.nn",
        "--weights",
        &s(&saved),
        "-o",
        &s(&boundary),
    ]);
    assert!(
        text(&out.stderr).contains("does not take 2-D input"),
        "{}",
        text(&out.stderr)
    );
    let out = nabla(&["plot", &s(&log), "-o", &s(&dir.join("curves.gif"))]);
    assert!(text(&out.stderr).contains("name it `.png` or `.svg`"));
}

#[test]
fn weights_and_probabilities_can_be_inspected() {
    let dir = temp("inspect");
    let saved = dir.join("xor.safetensors");
    assert!(
        nabla(&["train", "examples/xor.nn", "--save", &s(&saved)])
            .status
            .success()
    );
    let out = nabla(&["weights", &s(&saved), "--json"]);
    let tensors: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = tensors
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["h.b", "h.w", "logit.b", "logit.w"]);
    let bias = &tensors[0];
    assert_eq!(bias["shape"], serde_json::json!([4]));
    assert_eq!(bias["dtype"], "F32");
    let values: Vec<f64> = bias["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mean = values.iter().sum::<f64>() / 4.0;
    assert!((bias["mean"].as_f64().unwrap() - mean).abs() < 1e-6);
    assert!(text(&nabla(&["weights", &s(&saved)]).stdout).contains("4 tensors"));

    let input = dir.join("points.csv");
    std::fs::write(&input, "0,0\n0,1\n").unwrap();
    let out = nabla(&[
        "predict",
        "examples/xor.nn",
        "--weights",
        &s(&saved),
        "--input",
        &s(&input),
        "--probabilities",
        "--json",
    ]);
    for line in text(&out.stdout).lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let p: Vec<f64> = row["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(p.len(), 2);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        assert_eq!(
            row["class"].as_u64().unwrap() as usize,
            usize::from(p[1] > 0.5)
        );
    }
}

#[test]
fn dropout_is_seeded_per_step_and_absent_from_evaluation() {
    let dir = temp("dropout");
    let file = model(&dir, "circle.nn", CIRCLE);
    // Every report's losses and accuracies, without the timings.
    let reports = |out: Output| -> Vec<serde_json::Value> {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| {
                let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
                r.as_object_mut().unwrap().remove("seconds");
                r
            })
            .collect()
    };
    let run = |file: &str, seed: &str| {
        reports(nabla(&[
            "train", file, "--epochs", "2", "--seed", seed, "--json",
        ]))
    };
    assert_eq!(
        run(&file, "3"),
        run(&file, "3"),
        "a seed reproduces the masks"
    );
    assert_ne!(run(&file, "3"), run(&file, "4"));
    let plain = CIRCLE.replace("dropout(relu(dense(x, 8)), 0.1)", "relu(dense(x, 8))");
    let without = model(&dir, "plain.nn", &plain);
    assert_ne!(
        run(&file, "3"),
        run(&without, "3"),
        "the masks change training"
    );

    let eval = nabla(&["graph", &file, "--mode", "eval"]);
    assert!(
        !text(&eval.stdout).contains("dropout#"),
        "evaluation has no mask"
    );
    let train = nabla(&["graph", &file, "--mode", "train"]);
    assert!(
        text(&train.stdout).contains("input dropout#1 : [B, 8]"),
        "{}",
        text(&train.stdout)
    );
    let saved = dir.join("w.safetensors");
    assert!(
        nabla(&["train", &file, "--epochs", "1", "--save", &s(&saved)])
            .status
            .success()
    );
    let a = nabla(&["eval", &file, "--weights", &s(&saved), "--json"]);
    let b = nabla(&["eval", &file, "--weights", &s(&saved), "--json"]);
    assert_eq!(a.stdout, b.stdout, "evaluation draws nothing");
}
