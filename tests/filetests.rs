//! File-driven tests, in the manner of rustc's UI tests: every `.nn` file under
//! `tests/filetests/{check,errors}` is run through `nabla check`, and what a user sees (exit
//! code, stdout, stderr) must equal the `.expected` file beside it. `check/` files must succeed
//! and `errors/` files must fail with a located diagnostic and exit code 1. `fused/` files are
//! run through `nabla graph --stage fused --batch 4`: the kernels fusion forms, each listing its
//! ops, so a change in grouping shows as a diff.
//!
//! After an intended change of output, rewrite the expectations with
//! `NABLA_BLESS=1 cargo test --test filetests` and review the diff.

use std::path::{Path, PathBuf};

mod common;
use common::nabla;

/// What a user sees, as one text.
fn transcript(output: &std::process::Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output
            .status
            .code()
            .map_or("signal".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn nn_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .expect("the filetest directory exists")
            .map(|e| e.expect("a readable entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "nn"))
            .collect();
    files.sort();
    files
}

fn run_dir(dir: &str, expect_success: bool) {
    run_dir_with(dir, &["check"], expect_success);
}

fn run_dir_with(dir: &str, command: &[&str], expect_success: bool) {
    let bless = std::env::var_os("NABLA_BLESS").is_some();
    let mut failures = Vec::new();
    let files = nn_files(dir);
    assert!(!files.is_empty(), "no filetests in {dir}");
    for file in files {
        let relative = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("under the manifest dir");
        let mut args = vec![command[0], relative.to_str().expect("utf-8 path")];
        args.extend_from_slice(&command[1..]);
        let output = nabla(&args);
        let actual = transcript(&output);
        assert_eq!(
            output.status.success(),
            expect_success,
            "{}:\n{actual}",
            relative.display()
        );
        assert!(
            !actual.contains("panicked"),
            "{} panicked:\n{actual}",
            relative.display()
        );
        let expected_path = file.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).expect("write the expectation");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
                relative.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} filetests differ (NABLA_BLESS=1 to update):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn check_summaries() {
    run_dir("tests/filetests/check", true);
}

#[test]
fn fused_kernels() {
    run_dir_with(
        "tests/filetests/fused",
        &["graph", "--stage", "fused", "--batch", "4"],
        true,
    );
}

/// `--stage clif` and `--stage asm` list every kernel `--stage fused` forms, under the same
/// headers: its Cranelift IR, and the machine code Cranelift made of it.
#[test]
fn every_kernel_lists_its_ir_and_machine_code() {
    let stage = |stage: &str| {
        let output = nabla(&["graph", "examples/xor.nn", "--stage", stage]);
        assert!(output.status.success(), "{}", transcript(&output));
        String::from_utf8(output.stdout).expect("utf-8 output")
    };
    let fused = stage("fused");
    let kernels: Vec<&str> = fused.lines().filter(|l| l.starts_with("kernel ")).collect();
    assert!(kernels.len() > 1, "{fused}");
    for (name, every_kernel_has) in [("clif", "function u0:"), ("asm", "ret")] {
        let listing = stage(name);
        let headers: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("; "))
            .collect();
        assert_eq!(headers, kernels, "{name}");
        for (kernel, text) in listing.split("\n; kernel ").enumerate() {
            assert!(
                text.contains(every_kernel_has),
                "{name}, kernel {kernel}:\n{text}"
            );
        }
    }
}

#[test]
fn error_diagnostics() {
    run_dir("tests/filetests/errors", false);
}

#[test]
fn every_example_checks() {
    for file in nn_files("examples") {
        let output = nabla(&["check", file.to_str().expect("utf-8 path")]);
        assert!(output.status.success(), "{}", transcript(&output));
    }
}

/// Large models that are valid compile, and one mistake repeated on every line of a large model
/// is reported a few times and counted, with long lines cut around the mistake.
#[test]
fn large_models_compile_and_repeated_errors_are_counted() {
    let dir = std::env::temp_dir().join(format!("nabla-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write the case");
        path.to_str().expect("utf-8 path").to_string()
    };
    // A flat sum of many terms is one level deep, not one level per term.
    let sum = |n: usize, last: &str| {
        format!(
            "model m {{\n  input x[B, 1]\n  loss = sum({} + {last})\n}}\n",
            vec!["x"; n].join(" + ")
        )
    };
    for n in [300, 20_000] {
        let output = nabla(&["check", &write("sum.nn", sum(n, "x"))]);
        assert!(
            output.status.success(),
            "{n} terms: {}",
            transcript(&output)
        );
    }
    let output = nabla(&["check", &write("typo.nn", sum(300, "xx"))]);
    let text = transcript(&output);
    assert!(text.contains("typo.nn:3:1214"), "{text}");
    assert!(
        text.contains("│ … x + x") && text.contains("+ xx)"),
        "the line is cut around the error: {text}"
    );
    assert!(
        text.lines().all(|l| l.chars().count() < 200),
        "no line of the report is long: {text}"
    );
    // The same mistake on 1,000 lines, and a model beyond the size limit.
    let lines: String = (1..=1000)
        .map(|i| format!("  h{i} = relu(dense(x, units))\n"))
        .collect();
    let repeated = format!("model m {{\n  input x[B, 2]\n{lines}  loss = mean(h1000)\n}}\n");
    let output = nabla(&["check", &write("repeated.nn", repeated)]);
    let text = transcript(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(
        text.matches("error: unknown name `units`").count(),
        3,
        "{text}"
    );
    assert!(
        text.contains("note: 997 more diagnostics are not shown"),
        "{text}"
    );
    assert!(text.contains("due to 1000 previous errors"), "{text}");
    let deep: String = (1..=100_000)
        .map(|i| format!("  h{i} = relu(dense(h{}, 2))\n", i - 1))
        .collect();
    let deep = format!("model m {{\n  input x[B, 2]\n  h0 = x\n{deep}  loss = mean(h100000)\n}}\n");
    let output = nabla(&["check", &write("deep.nn", deep)]);
    let text = transcript(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(
        text.matches("error: the model is too large").count(),
        1,
        "{text}"
    );
    assert!(text.lines().count() < 40, "{text}");
}

/// Inputs too awkward to keep as files: each must fail with a located error, exit code 1 and
/// no panic.
#[test]
fn pathological_inputs_fail_cleanly() {
    let dir = std::env::temp_dir().join(format!("nabla-filetests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let deep = format!(
        "model m {{\n  input x[B, 1]\n  loss = sum({}x{})\n}}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let huge_sum = format!(
        "model m {{\n  input x[B, 1]\n  loss = sum({})\n}}\n",
        vec!["x"; 300_000].join(" + ")
    );
    let exponential = "fn f0(x) = x + x\n".to_string()
        + &(1..40)
            .map(|i| format!("fn f{i}(x) = f{}(x) + f{}(x)\n", i - 1, i - 1))
            .collect::<String>()
        + "model m {\n  input x[B, 1]\n  loss = sum(f39(x))\n}\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "invalid_utf8.nn",
            b"model m {\n  input x[B, \xff\xfe]\n}\n".to_vec(),
            "not valid UTF-8",
        ),
        ("deep.nn", deep.into_bytes(), "nested too deeply"),
        (
            "huge_sum.nn",
            huge_sum.into_bytes(),
            "the model is too large",
        ),
        (
            "exponential.nn",
            exponential.into_bytes(),
            "the model is too large",
        ),
    ];
    for (name, bytes, message) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write the case");
        let output = nabla(&["check", path.to_str().expect("utf-8 path")]);
        let text = transcript(&output);
        assert_eq!(output.status.code(), Some(1), "{name}: {text}");
        assert!(
            text.contains(message),
            "{name}: expected `{message}` in\n{text}"
        );
        assert!(
            text.contains(&format!("{name}:")),
            "{name}: the error is not located:\n{text}"
        );
    }
    // Missing files, directories and endless files are refused before anything is read.
    let dir_arg = dir.to_str().expect("utf-8 path");
    let mut refused = vec![
        (
            "no/such/file.nn",
            "cannot read model file `no/such/file.nn`",
        ),
        (dir_arg, "is not a regular file"),
    ];
    if Path::new("/dev/zero").exists() {
        refused.push((
            "/dev/zero",
            "cannot read model file `/dev/zero`: it is not a regular file",
        ));
    }
    for (path, message) in refused {
        let output = nabla(&["check", path]);
        assert_eq!(output.status.code(), Some(1), "{path}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{path}: {stderr}");
    }
}
