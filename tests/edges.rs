//! Where a user's files and long runs meet the tool (issue 22), through the binary: damaged
//! or foreign checkpoints are refused naming the field, files that are not plain are written
//! as what they are, and nothing hangs. Each case failed before its fix.

mod common;

use common::scratch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nabla_runtime::checkpoint;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts nabla in the project's folder with its output piped.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the nabla binary runs")
}

/// Runs nabla, killing it after `seconds` (a hang fails the test instead of stalling it).
fn nabla_within(seconds: u64, args: &[&str]) -> Output {
    let mut child = spawn(args);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("`nabla {}` ran past {seconds} s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Starts nabla with its output piped, once it has printed its first line: the process and the
/// rest of its output.
fn after_first_line(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = spawn(args);
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    lines.next().expect("a first line").expect("a line");
    (child, lines)
}

/// Asserts exit code 1, `message` on stderr, and no panic.
fn fails_with(out: &Output, message: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected `{message}`:\n{err}");
    assert!(err.contains(message), "expected `{message}` in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

const XOR: &str = "examples/xor.nn";

/// A checkpoint of XOR after 3 epochs of 1 step, whose metadata `edit` changes (the JSON of
/// the run's settings and of its position).
fn damaged_checkpoint(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut serde_json::Value, &mut serde_json::Value),
) -> String {
    let good = dir.join("good.safetensors");
    if !good.exists() {
        let run = dir.join("run");
        let out = common::nabla(&[
            "train",
            XOR,
            "--epochs",
            "3",
            "--quiet",
            "--checkpoint",
            &s(&run),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::rename(run.join("last.safetensors"), &good).unwrap();
    }
    let mut contents = checkpoint::load(&good, "checkpoint", 1 << 20).unwrap();
    let field =
        |key: &str| -> serde_json::Value { serde_json::from_str(&contents.metadata[key]).unwrap() };
    let (mut run, mut position) = (field("nabla.run"), field("nabla.position"));
    edit(&mut run, &mut position);
    let metadata: HashMap<String, String> = HashMap::from([
        ("nabla.run".to_string(), run.to_string()),
        ("nabla.position".to_string(), position.to_string()),
    ]);
    contents.metadata = metadata;
    let path = dir.join(format!("{name}.safetensors"));
    checkpoint::save(&path, &contents.tensors, contents.metadata).unwrap();
    s(&path)
}

#[test]
fn damaged_checkpoints_are_refused_naming_the_field() {
    let dir = scratch("edges-checkpoints");
    type Edit = fn(&mut serde_json::Value, &mut serde_json::Value);
    let cases: [(&str, Edit, &str); 9] = [
        (
            "far_epoch",
            |_, p| p["epoch"] = 1_000_000_000_000_000_000u64.into(),
            "its position says epoch 1000000000000000000, step 3, past the 3 steps its run asked for",
        ),
        (
            "batch_zero",
            |r, _| r["batch"] = 0.into(),
            "its `batch` is 0",
        ),
        (
            "negative_lr",
            |r, _| r["lr"] = (-0.05).into(),
            "its `lr` is -0.05",
        ),
        (
            "step_without_epochs",
            |_, p| p["epoch"] = 0.into(),
            "its position (`epoch` 0, `step` 3",
        ),
        (
            "negative_seconds",
            |_, p| p["seconds"] = (-4.0).into(),
            "its `seconds` is -4",
        ),
        (
            "more_correct_than_seen",
            |_, p| p["tally"]["correct"] = 9.into(),
            "its tally counts 9 correct answers out of 0",
        ),
        (
            "counters_at_the_top",
            |_, p| {
                p["step"] = u64::MAX.into();
                p["epoch"] = u64::MAX.into();
            },
            "its position says epoch 18446744073709551615",
        ),
        (
            "best_epoch_ahead",
            |_, p| p["best_epoch"] = 7.into(),
            "its early stopping (`best_epoch` 7",
        ),
        (
            "huge_seed",
            |r, _| r["seed"] = (1u64 << 40).into(),
            "its `seed` is 1099511627776",
        ),
    ];
    for (name, edit, message) in cases {
        let path = damaged_checkpoint(&dir, name, edit);
        let out = nabla_within(60, &["train", XOR, "--resume", &path, "--epochs", "5"]);
        fails_with(&out, message);
        fails_with(&out, "cannot be resumed");
    }
    // The undamaged file resumes, so the refusals above are the edits'.
    let good = damaged_checkpoint(&dir, "good_copy", |_, _| {});
    let out = nabla_within(60, &["train", XOR, "--resume", &good, "--epochs", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("resuming") && stdout(&out).contains("after epoch 3, step 3"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_finished_run_is_not_trained_on_silently_and_a_missing_one_is_called_a_checkpoint() {
    let dir = scratch("edges-finished");
    let run = s(&dir.join("run"));
    let out = common::nabla(&[
        "train",
        XOR,
        "--epochs",
        "2",
        "--quiet",
        "--checkpoint",
        &run,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // XOR's train block asks for 300 epochs; the run asked for 2 and has them.
    fails_with(
        &common::nabla(&["train", XOR, "--resume", &run]),
        "the checkpoint's run stands after epoch 2, step 2, the end of the 2 epochs asked for; train it further with `--epochs N`, N above 2",
    );
    let out = common::nabla(&["train", XOR, "--resume", &run, "--epochs", "4", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let missing = s(&dir.join("missing"));
    fails_with(
        &common::nabla(&["train", XOR, "--resume", &missing]),
        &format!("cannot read checkpoint `{missing}`"),
    );
}

#[test]
fn json_writes_non_finite_numbers_as_text_and_plot_leaves_them_out() {
    let dir = scratch("edges-nonfinite");
    let log = s(&dir.join("log.jsonl"));
    let out = common::nabla(&[
        "train",
        "examples/linear_regression.nn",
        "--lr",
        "1e10",
        "--allow-nonfinite",
        "--epochs",
        "4",
        "--json",
        "--log",
        &log,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let losses: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].clone())
        .collect();
    assert!(
        losses.iter().any(|l| l == "NaN") && losses.iter().any(|l| l == "inf"),
        "{losses:?}"
    );
    // `--log` holds the same lines; plotting them draws the finite ones and says so.
    let png = s(&dir.join("curves.png"));
    let out = nabla_within(60, &["plot", &log, "-o", &png]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("left out 3 non-finite `loss` values (from epoch 2)"),
        "{}",
        stderr(&out)
    );
    // A log with no finite loss at all (older logs wrote `null`) is refused, not a panic.
    let none = dir.join("none.jsonl");
    std::fs::write(
        &none,
        "{\"epoch\":1,\"loss\":\"NaN\"}\n{\"epoch\":2,\"loss\":null}\n",
    )
    .unwrap();
    fails_with(
        &nabla_within(60, &["plot", &s(&none), "-o", &png]),
        "has no finished epoch with a finite value to plot; it has only 2 non-finite `loss` values (from epoch 1)",
    );
    // Losses at the ends of f64's range are drawn, not spun on.
    let huge = dir.join("huge.jsonl");
    std::fs::write(
        &huge,
        "{\"epoch\":1,\"loss\":1e308}\n{\"epoch\":2,\"loss\":-1e308}\n{\"epoch\":3,\"loss\":5}\n",
    )
    .unwrap();
    let out = nabla_within(60, &["plot", &s(&huge), "-o", &png]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_users_files_are_written_as_what_they_are() {
    let dir = scratch("edges-files");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", XOR, "--epochs", "2", "--quiet"];
        args.extend_from_slice(extra);
        nabla_within(120, &args)
    };
    // A symlink is written through: the file it names is replaced, the link stays.
    let real = dir.join("real.safetensors");
    let link = dir.join("link.safetensors");
    std::fs::write(&real, b"old").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = train(&["--save", &s(&link), "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(link.is_symlink(), "the link is kept");
    assert!(checkpoint::load(&real, "weights file", 1 << 20).is_ok());
    // A named pipe takes the log as a stream and stays a pipe.
    let pipe = dir.join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let pipe = pipe.clone();
        std::thread::spawn(move || std::fs::read_to_string(pipe).unwrap())
    };
    let out = train(&["--log", &s(&pipe)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        reader.join().unwrap().lines().count(),
        3,
        "epochs 0, 1 and 2"
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&pipe).unwrap().file_type().is_fifo());
    // Whole files are never written over a pipe or a device.
    fails_with(
        &train(&["--save", &s(&pipe)]),
        "is a named pipe or a device",
    );
    if Path::new("/dev/full").exists() {
        fails_with(
            &train(&["--save", "/dev/full"]),
            "is a named pipe or a device",
        );
    }
    // What is not this model's is kept unless told.
    let csv = dir.join("data.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    fails_with(
        &train(&["--log", &s(&csv)]),
        "exists and is not a metrics log of `nabla train`; give `--overwrite` to replace it",
    );
    fails_with(
        &train(&["--save", &s(&csv)]),
        "is not a weights file of model `xor`",
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "a,b\n1,2\n");
    let other = dir.join("other");
    let out = common::nabla(&[
        "train",
        "examples/linear_regression.nn",
        "--epochs",
        "1",
        "--quiet",
        "--checkpoint",
        &s(&other),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    fails_with(
        &train(&["--checkpoint", &s(&other)]),
        "is not a checkpoint of model `xor`",
    );
    let out = train(&["--checkpoint", &s(&other), "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A killed run's temporary (pid 4,000,000 exceeds pid_max) is removed at the start.
    let stale = other.join(".best.safetensors.tmp4000000");
    std::fs::write(&stale, b"a killed run's partial checkpoint").unwrap();
    let out = train(&["--checkpoint", &s(&other)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stale.exists(), "the stale temporary is removed");
}

/// A second interrupt 30 ms after the first (`timeout -s INT` and some terminals deliver one
/// interrupt twice) arrives while the current step, about a tenth of a second of products,
/// still runs: it must not skip the save. Before the grace period it exited at once.
#[test]
fn a_doubled_interrupt_still_saves_the_run() {
    let dir = scratch("edges-interrupt");
    let model = dir.join("slow.nn");
    std::fs::write(
        &model,
        "model slow {\n  input  x[B, 2]\n  target y[B] : class\n  h1     = relu(dense(x, 2048))\n  h2     = relu(dense(h1, 2048))\n  loss   = cross_entropy(dense(h2, 2), y)\n}\ntrain t {\n  data   = spiral(1024)\n  batch  = 512\n  epochs = 1000000\n}\n",
    )
    .unwrap();
    let checkpoints = s(&dir.join("run"));
    let (child, lines) = after_first_line(&[
        "train",
        &s(&model),
        "--json",
        "--threads",
        "1",
        "--checkpoint",
        &checkpoints,
        "--every",
        "1000000",
    ]);
    let drain = std::thread::spawn(move || lines.count());
    let id = child.id().to_string();
    for _ in 0..2 {
        let sent = Command::new("kill").args(["-INT", &id]).status();
        assert!(sent.unwrap().success());
        std::thread::sleep(Duration::from_millis(30));
    }
    let out = child.wait_with_output().expect("ends");
    drain.join().expect("drained");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("saved the run to"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn papercuts_of_a_new_user() {
    let dir = scratch("edges-papercuts");
    // A finite loss that grows a thousandfold is called what it is.
    let out = common::nabla(&["train", XOR, "--lr", "1e30", "--epochs", "5", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: the loss grew from 0.706298 (epoch 0)"),
        "{}",
        stderr(&out)
    );
    // A run that saves nothing says so, and how to keep it.
    assert!(
        stderr(&out).contains("note: the trained parameters were not saved: give `--save PATH`"),
        "{}",
        stderr(&out)
    );
    // `predict --input` reads the current directory's file, not a same-named one beside the
    // model.
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let model = models.join("xor.nn");
    std::fs::copy(XOR, &model).unwrap();
    std::fs::write(models.join("input.csv"), "0,0\n").unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input.csv"), "0,0\n0,1\n1,1\n").unwrap();
    let weights = s(&dir.join("w.safetensors"));
    let out = common::nabla(&["train", &s(&model), "--epochs", "1", "--save", &weights]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args([
            "predict",
            &s(&model),
            "--weights",
            &weights,
            "--input",
            "input.csv",
        ])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
}

#[test]
fn a_data_width_error_names_the_file_that_holds_the_values() {
    let dir = scratch("edges-width");
    let model = dir.join("small.nn");
    let source = std::fs::read_to_string("examples/mnist_mlp.nn")
        .unwrap()
        .replace("x[B, 784]", "x[B, 196]")
        .replace(
            "\"../data/mnist\"",
            &format!("\"{}/data/mnist\"", env!("CARGO_MANIFEST_DIR")),
        );
    assert!(source.contains("x[B, 196]"), "{source}");
    std::fs::write(&model, source).unwrap();
    fails_with(
        &common::nabla(&["train", &s(&model), "--steps", "1"]),
        "images-idx3-ubyte.gz` gives `x` 784 values per example, but the model needs 196",
    );
}

/// A model with batch normalisation over features, on `data` in batches of 2.
fn batch_norm_model(dir: &Path, data: &str) -> String {
    let model = dir.join("bn.nn");
    std::fs::write(
        &model,
        format!(
            "model m {{\n  input  x[B, 2]\n  target y[B] : class\n  h      = relu(batch_norm(dense(x, 4)))\n  loss   = cross_entropy(dense(h, 2), y)\n}}\ntrain t {{\n  data   = inline(x = {data}, y = [0, 1, 1, 0, 1])\n  batch  = 2\n  epochs = 3\n}}\n"
        ),
    )
    .unwrap();
    s(&model)
}

#[test]
fn batch_norm_never_sees_a_batch_of_one_and_the_guard_blames_the_cause() {
    let dir = scratch("edges-bn");
    // Five examples in batches of two: the last batch of each epoch would hold one.
    let model = batch_norm_model(&dir, "[[0, 0], [0, 1], [1, 0], [1, 1], [0.5, 0.5]]");
    let weights = s(&dir.join("w.safetensors"));
    let out = common::nabla(&["train", &model, "--save", &weights]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "note: each epoch's last batch would hold 1 example, too few for batch normalisation"
        ),
        "{}",
        stderr(&out)
    );
    let saved = checkpoint::load(Path::new(&weights), "weights", 1 << 20).unwrap();
    let (_, _, var) = saved
        .tensors
        .iter()
        .find(|(name, _, _)| name == "h.running_var")
        .expect("the running variance is saved");
    assert!(var.iter().all(|v| v.is_finite()), "{var:?}");
    fails_with(
        &common::nabla(&["train", &model, "--batch", "1"]),
        "a batch of 1 is too small for batch normalisation over features",
    );
    fails_with(
        &common::nabla(&["bench", &model, "--batch", "1"]),
        "a batch of 1 is too small for batch normalisation over features",
    );
    // Statistics that overflow f32 with a finite loss: not the learning rate.
    let model = batch_norm_model(&dir, "[[1e20, 0], [-1e20, 1], [1, 0], [1, 1], [2, 2]]");
    let out = common::nabla(&["train", &model]);
    fails_with(&out, "`h.running_var` became inf");
    assert!(
        stderr(&out).contains("the learning rate is not the cause"),
        "{}",
        stderr(&out)
    );
    // A loss that is not finite before any update: not the learning rate either.
    let log = dir.join("log.nn");
    std::fs::write(
        &log,
        std::fs::read_to_string(XOR)
            .unwrap()
            .replacen("loss", "bad = mean(log(x))\n  loss", 1)
            .replace("loss   =", "loss   = bad +"),
    )
    .unwrap();
    let out = common::nabla(&["train", &s(&log)]);
    fails_with(
        &out,
        "training diverged in epoch 1, step 1: the loss is -inf",
    );
    assert!(
        stderr(&out)
            .contains("the parameters were as initialised, so the learning rate is not the cause"),
        "{}",
        stderr(&out)
    );
}

/// A seed reproduces a run bit for bit whatever the thread count: every example, three steps
/// on one, two and three threads (each band split differently), gives the same parameters.
#[test]
fn every_example_trains_to_the_same_bits_on_any_number_of_threads() {
    let dir = scratch("edges-threads");
    let mut examples: Vec<PathBuf> = std::fs::read_dir("examples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nn"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 9, "{examples:?}");
    for example in &examples {
        let name = example.file_stem().unwrap().to_string_lossy().into_owned();
        let weights = |threads: &str| {
            let path = dir.join(format!("{name}-{threads}.safetensors"));
            let out = common::nabla(&[
                "train",
                &s(example),
                "--steps",
                "3",
                "--threads",
                threads,
                "--save",
                &s(&path),
                "--quiet",
            ]);
            assert!(out.status.success(), "{name}: {}", stderr(&out));
            checkpoint::load(&path, "weights", 1 << 30).unwrap().tensors
        };
        let one = weights("1");
        for threads in ["2", "3"] {
            for ((p, _, a), (_, _, b)) in one.iter().zip(&weights(threads)) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{name}: `{p}` differs between 1 and {threads} threads"
                );
            }
        }
    }
}

/// A nudge that crosses a kink is not a failure: `gradcheck` of the CNN example passes with its
/// defaults (one draw's random direction crosses a relu or pooling switch), and a parameter
/// sitting on a kink is reported as not checked, one near it checked with a smaller step.
#[test]
fn gradcheck_tells_a_kink_from_a_wrong_gradient() {
    let out = common::nabla(&["gradcheck", "examples/mnist_cnn.nn"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("crossed a kink"), "{}", stdout(&out));
    let dir = scratch("edges-kinks");
    let model = dir.join("abs.nn");
    std::fs::write(
        &model,
        "model m {\n  input  x[B, 1]\n  param  near[1, 1] = [[1e-7]]\n  param  at[1, 1] = [[1e-9]]\n  loss   = mean(x * x) + sum(abs(near)) + sum(abs(at))\n}\n",
    )
    .unwrap();
    let out = common::nabla(&["gradcheck", &s(&model), "--json"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (near, at) = (&lines[0], &lines[1]);
    assert_eq!(
        (near["checked"].as_u64(), near["kinks"].as_u64()),
        (Some(3), Some(3)),
        "{near}"
    );
    assert_eq!(
        (at["checked"].as_u64(), at["skipped"].as_u64()),
        (Some(0), Some(3)),
        "{at}"
    );
    let text = stdout(&common::nabla(&["gradcheck", &s(&model)]));
    assert!(text.contains("kink: not checked"), "{text}");
}

/// `--log /dev/stdout | head`: when the log's reader goes away, the run stops and saves as on
/// Ctrl-C, rather than end with "Broken pipe" and lose its work. (The log is given as
/// `/proc/self/fd/1`, what `/dev/stdout` names on Linux, since some sandboxes make `/dev/stdout`
/// a plain file.)
#[test]
fn a_log_whose_reader_goes_away_stops_the_run_as_ctrl_c_does() {
    let dir = scratch("edges-reader");
    let cases = [
        (
            &["--quiet", "--log", "/proc/self/fd/1"][..],
            "`/proc/self/fd/1`",
        ),
        (&[][..], "standard output"),
    ];
    for (i, (flags, reader)) in cases.into_iter().enumerate() {
        let weights = s(&dir.join(format!("w{i}.safetensors")));
        let mut args = vec!["train", XOR, "--epochs", "10000000", "--save", &weights];
        args.extend_from_slice(flags);
        let (child, lines) = after_first_line(&args);
        drop(lines);
        let out = child.wait_with_output().expect("ends");
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        let stopped = format!("the reader of {reader} has gone: stopping as on Ctrl-C");
        for expected in [stopped.as_str(), "saved the run to"] {
            assert!(stderr(&out).contains(expected), "{}", stderr(&out));
        }
        assert!(Path::new(&weights).exists(), "{}", stderr(&out));
    }
}
