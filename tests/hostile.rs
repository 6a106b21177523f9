//! Hostile input through the binary, as a user gives it: every case must end with a clear
//! message naming what is wrong, exit code 1, no panic, and bounded memory. The cases are the
//! ones found by trying nabla as a new user would (issue 6); each failed before its fix.
//!
//! Memory is bounded for real: the endless and oversized cases run under `ulimit -v` (1 GiB of
//! address space beyond the compiler thread's stack), where reading `/dev/zero` whole or
//! inflating a gzip bomb would fail with an abort rather than the expected message.

use std::path::PathBuf;
use std::process::{Command, Output};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn write(name: &str, text: &str) -> String {
    let path = temp(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

/// Runs nabla with its address space limited to 1.5 GiB.
fn nabla_bounded(args: &[&str]) -> Output {
    nabla_within_memory(1536, args)
}

/// Runs nabla with its address space limited to `mib` MiB.
fn nabla_within_memory(mib: u64, args: &[&str]) -> Output {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", mib * 1024))
        .arg(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    command.output().expect("runs")
}

/// Asserts exit code 1, `message` on stderr, and no panic.
fn fails_with(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1 and `{message}`:\n{stderr}"
    );
    assert!(
        stderr.contains(message),
        "expected `{message}` in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const XOR: &str = "examples/xor.nn";

#[test]
fn endless_and_oversized_files_are_refused_before_reading() {
    if std::path::Path::new("/dev/zero").exists() {
        fails_with(
            &nabla_bounded(&["check", "/dev/zero"]),
            "not a regular file",
        );
        fails_with(
            &nabla_bounded(&["eval", XOR, "--weights", "/dev/zero"]),
            "cannot read weights file `/dev/zero`: it is not a regular file",
        );
    }
    // A weights file far larger than the model's parameters could need.
    let big = temp("big.safetensors");
    std::fs::write(&big, vec![0u8; 4 << 20]).expect("write");
    fails_with(
        &nabla_bounded(&["eval", XOR, "--weights", big.to_str().expect("utf-8")]),
        "more than the",
    );
    // A model file of 20 MiB.
    let huge = write("huge.nn", &"#".repeat(20 << 20));
    fails_with(
        &nabla_bounded(&["check", &huge]),
        "more than the 16777216 bytes",
    );
}

#[test]
fn a_gzip_bomb_is_not_inflated() {
    use std::io::Write;
    let mut header = 2051u32.to_be_bytes().to_vec();
    for d in [4u32, 28, 28] {
        header.extend(d.to_be_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&header).expect("gzip");
    let zeros = vec![0u8; 1 << 20];
    // 1.1 GiB of zeros behind a header for four images: inflating it whole needs more address
    // space than the limit allows.
    for _ in 0..1100 {
        gz.write_all(&zeros).expect("gzip");
    }
    let images = temp("bomb-images-idx3-ubyte.gz");
    std::fs::write(&images, gz.finish().expect("gzip")).expect("write");
    let labels = temp("bomb-labels-idx1-ubyte");
    let mut label_bytes = 2049u32.to_be_bytes().to_vec();
    label_bytes.extend(4u32.to_be_bytes());
    label_bytes.extend([0, 1, 2, 3]);
    std::fs::write(&labels, label_bytes).expect("write");
    let model = write(
        "bomb.nn",
        &format!(
            "model m {{\n  input x[B, 784]\n  target y[B] : class\n  loss = cross_entropy(dense(x, 10), y)\n}}\ntrain t {{\n  data = idx(images = \"{}\", labels = \"{}\")\n}}\n",
            images.display(),
            labels.display()
        ),
    );
    fails_with(
        &nabla_bounded(&["train", &model]),
        "need 3136 data bytes, found more",
    );
}

#[test]
fn models_larger_than_memory_are_refused_with_a_located_error() {
    // Eight tensors of 2^31 values: 64 GiB of f32 parameters alone, more than any machine here.
    let params: String = (0..8)
        .map(|i| format!("  param w{i}[46340, 46340] = ones\n"))
        .collect();
    let sum: Vec<String> = (0..8).map(|i| format!("sum(w{i})")).collect();
    let model = write(
        "huge_params.nn",
        &format!(
            "model m {{\n  input x[B, 1]\n{params}  loss = {}\n}}\ntrain t {{\n  data = inline(x = [[1]])\n}}\n",
            sum.join(" + ")
        ),
    );
    let train = nabla_bounded(&["train", &model]);
    fails_with(&train, "training at batch 32 needs about");
    fails_with(&train, "huge_params.nn:3:9");
    fails_with(
        &nabla_bounded(&["gradcheck", &model]),
        "gradcheck (f64, batch 3) needs about",
    );
    // `check` warns and succeeds: the model may be meant for a larger machine.
    let check = nabla_bounded(&["check", &model]);
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("warning: training at batch 32"));
}

#[test]
fn flags_are_checked() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", XOR, "--epochs", "9223372036854775808"],
            "not in 1..=16777216",
        ),
        (&["train", XOR, "--epochs", "0"], "not in 1..=16777216"),
        (
            &["train", XOR, "--steps", "0"],
            "0 is not in 1..=1099511627776",
        ),
        (
            &["train", XOR, "--batch", "0"],
            "'--batch <BATCH>': 0 is not in",
        ),
        (
            &["train", XOR, "--lr=-1"],
            "expected a finite number of 0 or more",
        ),
        (
            &["train", XOR, "--lr", "inf"],
            "expected a finite number of 0 or more",
        ),
        (&["graph", XOR, "--batch", "0"], "0 is not in 1..=16777216"),
        (
            &["graph", XOR, "--stage", "clif", "--format", "dot"],
            "they have no `--format dot` or `json`",
        ),
        (
            &["gradcheck", XOR, "--cases", "0"],
            "0 is not in 1..=1048576",
        ),
    ];
    for (args, message) in cases {
        let output = nabla_bounded(args);
        fails_with(&output, message);
        if args.contains(&"--batch") && args[0] == "train" {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !stderr.contains("--lr"),
                "the batch error blames --lr: {stderr}"
            );
        }
    }
}

#[test]
fn settings_that_cannot_work_are_rejected_where_they_are_written() {
    let model = "model m {\n  input x[B, 1]\n  target y[B, 1]\n  loss = mse(dense(x, 1), y)\n}\n";
    let cases = [
        (
            "schedule = piecewise([1], [-5, -5])",
            "`piecewise` values are learning rates and must not be negative, got -5",
        ),
        (
            "schedule = exponential(-1000)",
            "needs a rate `k` of 0 or more, got -1000",
        ),
        (
            "optimizer = adam(beta1 = 1)",
            "`beta1` must be at least 0 and below 1, got 1",
        ),
        (
            "optimizer = sgd(1e400)",
            "the number `1e400` is out of range",
        ),
    ];
    for (i, (setting, message)) in cases.iter().enumerate() {
        let file = write(
            &format!("setting{i}.nn"),
            &format!("{model}train t {{\n  data = inline(x = [[1]], y = [[1]])\n  {setting}\n}}\n"),
        );
        let output = nabla_bounded(&["check", &file]);
        fails_with(&output, message);
        fails_with(&output, &format!("setting{i}.nn:8:"));
    }
    // `--lr` cannot override absolute learning rates.
    let file = write(
        "piecewise.nn",
        &format!(
            "{model}train t {{\n  data = inline(x = [[1]], y = [[1]])\n  schedule = piecewise([1], [0.1, 0.01])\n}}\n"
        ),
    );
    fails_with(
        &nabla_bounded(&["train", &file, "--lr", "0.5"]),
        "`--lr` has no effect with train block `t`",
    );
}

#[test]
fn paths_are_printed_verbatim_and_resolved_from_the_model_file() {
    let dir = temp("My_Mnist_Data");
    std::fs::create_dir_all(&dir).expect("dir");
    let model = "model m {\n  input x[B, 784]\n  target y[B] : class\n  loss = cross_entropy(dense(x, 10), y)\n}\n";
    let file = write(
        "verbatim.nn",
        &format!("{model}train t {{\n  data = mnist(\"My_Mnist_Data\")\n}}\n"),
    );
    let output = nabla_bounded(&["train", &file]);
    fails_with(&output, "My_Mnist_Data`");
    fails_with(
        &output,
        "no MNIST images-idx3-ubyte file for the training split",
    );
    // The bundled examples train from any working directory.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mnist_mlp.nn");
    let output = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args([
            "train",
            example.to_str().expect("utf-8"),
            "--steps",
            "1",
            "--json",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A log of 1.2 million epochs (about 200 MB) plots within 1 GiB of address space: it is read
/// line by line into the few numbers a curve needs. Holding every line as a JSON value took
/// about 6 times the file and aborted here.
#[test]
fn a_long_log_plots_in_bounded_memory() {
    use std::io::Write;
    let path = temp("long.jsonl");
    let mut log = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    for i in 0..1_200_000u64 {
        writeln!(
            log,
            "{{\"accuracy\":0.5,\"epoch\":{i},\"loss\":{},\"lr\":0.05,\"seconds\":{},\"step\":{i},\"test_accuracy\":null,\"test_loss\":null,\"val_accuracy\":null,\"val_loss\":null}}",
            1.0 / (1.0 + i as f64 * 1e-3),
            i as f64 * 0.01
        )
        .expect("write");
    }
    log.flush().expect("flush");
    drop(log);
    let picture = temp("long.png");
    let out = nabla_within_memory(
        1024,
        &[
            "plot",
            path.to_str().unwrap(),
            "-o",
            picture.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(picture.exists());
    std::fs::remove_file(&path).expect("remove the log");
}

/// A 40 MB text trains within 1 GiB of address space (token indices, then the windows that
/// training keeps, the held-out tail cut off in place; the first text loader needed about 25
/// times the file and aborted here), and with less memory it is refused with a message, not
/// an abort.
#[test]
fn a_large_text_trains_in_bounded_memory_or_says_it_cannot() {
    let text = temp("large.txt");
    let line = "the king shall not be moved and yet ROMEO loves JULIET by night\n";
    std::fs::write(&text, line.repeat(40_000_000 / line.len())).expect("write");
    let model = write(
        "large_text.nn",
        &format!(
            "model tiny_text {{\n  input  tokens[B, 64] : index\n  target next[B, 64] : class\n  e      = embedding(tokens, 76, 4)\n  h      = rnn(e, 8)\n  loss   = cross_entropy(dense(h, 76), next)\n}}\ntrain t {{\n  data       = text(\"{}\", seq = 64, level = \"char\")\n  validation = 0.1\n  batch      = 32\n}}\n",
            text.display()
        ),
    );
    let out = nabla_within_memory(1024, &["train", &model, "--steps", "1", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fails_with(
        &nabla_within_memory(600, &["train", &model, "--steps", "1", "--quiet"]),
        "is too large for this machine's memory",
    );
    std::fs::remove_file(&text).expect("remove the text");
}

/// Evaluation batches are sized to keep their temporaries within 256 MiB: a model with causal
/// attention over 256 positions (a quarter of a MiB of scores per example and head) is
/// evaluated on 1,200 windows within 1 GiB of address space, where batches of 1,000 needed
/// more than 1.4 GiB for a GPT's validation pass.
#[test]
fn evaluation_of_attention_over_long_contexts_stays_in_bounded_memory() {
    let text = temp("attention.txt");
    let line = "the king shall not be moved and yet ROMEO loves JULIET by night\n";
    std::fs::write(&text, line.repeat(1_200 * 257 / line.len() + 1)).expect("write");
    let model = write(
        "long_attention.nn",
        &format!(
            "model long_attention {{
  input  tokens[B, 256] : index
  target next[B, 256] : class
  e      = embedding(tokens, 76, 8)
  q      = transpose(reshape(e, [B, 256, 2, 4]), [0, 2, 1, 3])
  a      = reshape(transpose(attention(q, q, q, causal = true), [0, 2, 1, 3]), [B, 256, 8])
  loss   = cross_entropy(dense(e + a, 76), next)
}}
train t {{
  data  = text(\"{}\", seq = 256, level = \"char\")
  batch = 4
  steps = 1
}}
",
            text.display()
        ),
    );
    let weights = temp("long_attention.safetensors");
    let weights = weights.to_str().unwrap();
    let trained = nabla_bounded(&["train", &model, "--save", weights]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let out = nabla_within_memory(1024, &["eval", &model, "--weights", weights]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("loss"));
}
