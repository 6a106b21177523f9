//! `nabla export --format native` as a user meets it: a C program compiled with the system's C
//! compiler against the header and library it writes. The MNIST models classify the test set in
//! C with outputs equal, bit for bit, to `nabla predict --batch` with the same sizes (the same
//! programs on the same rows; the scratch starts as NaN garbage, so a kernel reading what it
//! did not write would show); every example model's prediction, through the shared library, is
//! equal bit for bit too; a recurrent model generates in C what `nabla generate` does; bad
//! flags and a missing run time are errors that write nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::scratch;
use serde_json::Value;

/// The run-time archive this build made: `libnabla_aot.a` beside the binary when a build of
/// the package put it there, else the newest one cargo built as the binary's dependency.
fn runtime_archive() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_nabla"))
        .parent()
        .unwrap()
        .to_path_buf();
    let deps = std::fs::read_dir(dir.join("deps")).expect("the build's deps");
    let candidates = deps
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("libnabla_aot-") && name.ends_with(".a")
        })
        .chain(Some(dir.join("libnabla_aot.a")).filter(|p| p.exists()));
    candidates
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("cargo builds nabla-aot's archive with the binary")
}

/// Runs the `nabla` binary from the repository root with this machine's run-time archive
/// named, unless the arguments name another target (whose archive nabla finds where
/// `cargo build --target` puts it).
fn nabla(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nabla"));
    if !args.contains(&"--target") || args.contains(&HOST_TRIPLE) {
        command.env("NABLA_AOT_LIB", runtime_archive());
    }
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the nabla binary runs")
}

/// This machine's triple, as a target named explicitly.
const HOST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// How a C program for a target is built and run: its C compiler and what runs it.
struct Toolchain {
    cc: String,
    runner: &'static [&'static str],
}

impl Toolchain {
    /// This machine's compiler; programs run directly.
    fn host() -> Toolchain {
        Toolchain {
            cc: std::env::var("CC").unwrap_or("cc".into()),
            runner: &[],
        }
    }

    /// 64-bit ARM: Debian's cross compiler, programs run under QEMU's user-mode emulation with
    /// the cross C library (`.ci/install-cross`).
    fn aarch64() -> Toolchain {
        Toolchain {
            cc: "aarch64-linux-gnu-gcc".into(),
            runner: &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
        }
    }

    fn run(&self, exe: &Path) -> Command {
        match self.runner.split_first() {
            None => Command::new(exe),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(exe);
                command
            }
        }
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_ok(args: &[&str]) -> String {
    ok(nabla(args), &format!("nabla {args:?}"))
}

/// Trains `model` for `steps` steps and exports it natively at `batches` into `dir`, with
/// `more` arguments; returns the export's JSON report.
fn train_and_export(model: &str, steps: &str, batches: &str, dir: &Path, more: &[&str]) -> Value {
    let weights = dir.join("w.safetensors");
    let w = weights.to_str().unwrap();
    if !weights.exists() {
        run_ok(&["train", model, "--steps", steps, "--quiet", "--save", w]);
    }
    let lib = dir.join("lib");
    let mut args = vec![
        "export",
        model,
        "--weights",
        w,
        "-o",
        lib.to_str().unwrap(),
        "--batch",
        batches,
        "--json",
    ];
    args.extend(more);
    serde_json::from_str(&run_ok(&args)).expect("JSON")
}

/// Compiles `program` (in tests/native) against the exported model of `report` with `tools`,
/// linked statically or with the shared library.
fn compile_c(
    program: &str,
    report: &Value,
    (dir, tools): (&Path, &Toolchain),
    statically: bool,
) -> PathBuf {
    let name = report["name"].as_str().unwrap();
    let lib = Path::new(report["header"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let exe = dir.join(format!("{program}-{name}"));
    let mut cc = Command::new(&tools.cc);
    cc.arg("-O2")
        .arg("-Wall")
        .arg("-Werror")
        .arg(format!("-DMODEL={name}"))
        .arg(format!("-DUPPER={}", name.to_uppercase()))
        .arg("-include")
        .arg(report["header"].as_str().unwrap())
        .arg("-Itests/native")
        .arg(format!("tests/native/{program}.c"))
        .arg("-o")
        .arg(&exe);
    if statically {
        cc.arg(report["static"]["file"].as_str().unwrap())
            .arg(report["runtime"]["file"].as_str().unwrap())
            .args(nabla_compiler::native::system_libraries().split(' '));
    } else {
        cc.arg(format!("-L{}", lib.display()))
            .arg(format!("-l{name}"))
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    ok(
        cc.current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cc runs"),
        "cc",
    );
    exe
}

/// The f32 bits of every value `nabla predict --json --batch BATCHES` gives for the CSV
/// `rows` with the weights `dir` holds.
fn predicted_bits(model: &str, dir: &Path, rows: &Path, batches: &str) -> Vec<u32> {
    let json_lines = run_ok(&[
        "predict",
        model,
        "--weights",
        dir.join("w.safetensors").to_str().unwrap(),
        "--input",
        rows.to_str().unwrap(),
        "--batch",
        batches,
        "--json",
    ]);
    json_lines
        .lines()
        .flat_map(|l| {
            let row: Value = serde_json::from_str(l).expect("a JSON row");
            row["prediction"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v.as_f64().unwrap() as f32).to_bits())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn bits_of(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The uncompressed bytes of a gzipped file of the repository.
fn gunzip(path: &str) -> Vec<u8> {
    use std::io::Read;
    let file = std::fs::File::open(path).expect("the MNIST test set");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Trains `model` for `steps` steps, exports it with `more` arguments, classifies the first `n`
/// examples of the MNIST test set with a C program built and run by `tools`, checks that its
/// logits equal `nabla predict`'s bit for bit and returns the export's report.
fn classify_mnist(
    (model, steps): (&str, &str),
    n: usize,
    more: &[&str],
    (dir, tools): (&Path, &Toolchain),
) -> Value {
    let images = gunzip("data/mnist/t10k-images-idx3-ubyte.gz");
    let labels = gunzip("data/mnist/t10k-labels-idx1-ubyte.gz");
    let (images, labels) = (&images[..16 + n * 784], &labels[..8 + n]);
    let csv: String = images[16..]
        .chunks(784)
        .map(|row| {
            let row: Vec<String> = row
                .iter()
                .map(|&b| (b as f32 / 255.0).to_string())
                .collect();
            row.join(",") + "\n"
        })
        .collect();
    let (images_path, labels_path) = (dir.join("images"), dir.join("labels"));
    std::fs::write(&images_path, images).unwrap();
    std::fs::write(&labels_path, labels).unwrap();
    let rows = dir.join("rows.csv");
    std::fs::write(&rows, &csv).unwrap();
    let report = train_and_export(model, steps, "1,64", dir, more);
    let exe = compile_c("mnist", &report, (dir, tools), true);
    let logits = dir.join("logits.bin");
    let said = ok(
        tools
            .run(&exe)
            .args([&images_path, &labels_path, &logits])
            .output()
            .unwrap(),
        "the C program",
    );
    assert!(said.contains(&format!("of {n} correct")), "{said}");
    let accuracy: f64 = said
        .split('(')
        .nth(1)
        .unwrap()
        .trim_end_matches("%)\n")
        .parse()
        .unwrap();
    assert!(accuracy > 50.0, "{model}: {said}");
    let expected = predicted_bits(model, dir, &rows, "1,64");
    let got = bits_of(&std::fs::read(&logits).unwrap());
    assert_eq!(expected.len(), n * 10);
    let differing = expected.iter().zip(&got).filter(|(a, b)| a != b).count();
    assert_eq!(
        (got.len(), differing),
        (expected.len(), 0),
        "{model}: logits differ from nabla predict"
    );
    report
}

#[test]
fn the_mnist_models_classify_the_test_set_in_c_as_nabla_predict_does_bit_for_bit() {
    for model in [
        ("examples/mnist_mlp.nn", "60"),
        ("examples/mnist_cnn.nn", "20"),
    ] {
        let dir = scratch(&format!("native-{}", model.0.replace('/', "-")));
        let report = classify_mnist(model, 10000, &[], (&dir, &Toolchain::host()));
        assert_eq!(report["target"], HOST_TRIPLE);
        assert_eq!(report["cpu"], "native");
    }
}

/// Exported for any x86-64 (`--target` without a CPU: SSE2 and nothing more), the MLP runs
/// here as the native export does: the extensions change instructions, not results.
#[cfg(target_arch = "x86_64")]
#[test]
fn an_export_for_any_x86_64_classifies_as_the_native_one_does() {
    let dir = scratch("native-baseline");
    let tools = Toolchain::host();
    let model = ("examples/mnist_mlp.nn", "60");
    let native = classify_mnist(model, 1000, &[], (&dir, &tools));
    assert!(native["features"].as_array().unwrap().len() > 2, "{native}");
    let baseline = classify_mnist(model, 1000, &["--target", HOST_TRIPLE], (&dir, &tools));
    assert_eq!(baseline["cpu"], "baseline");
    assert_eq!(baseline["features"], serde_json::json!([]));
}

/// Whether this CPU has `feature`, one of the AVX-512 family the newest presets add (asked
/// of the standard library, not of the run time under test); others are assumed present.
#[cfg(target_arch = "x86_64")]
fn this_cpu_has(feature: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match feature {
        "avx512f" => has!("avx512f"),
        "avx512dq" => has!("avx512dq"),
        "avx512vl" => has!("avx512vl"),
        "avx512vbmi" => has!("avx512vbmi"),
        "avx512bitalg" => has!("avx512bitalg"),
        "avx512vnni" => has!("avx512vnni"),
        "avx_vnni" => has!("avxvnni"),
        _ => true,
    }
}

/// A library compiled for extensions this CPU lacks refuses every call with its error code
/// (5, before anything runs) instead of dying of an illegal instruction.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_library_for_extensions_this_cpu_lacks_refuses_to_run_with_an_error_code() {
    let dir = scratch("native-foreign-cpu");
    let lacking = ["x86-64-v4", "sapphirerapids", "graniterapids"]
        .into_iter()
        .map(|cpu| {
            let report =
                train_and_export("examples/xor.nn", "1", "1", &dir, &["--target-cpu", cpu]);
            (cpu, report)
        })
        .find(|(_, report)| {
            let features = report["features"].as_array().unwrap();
            features.iter().any(|f| !this_cpu_has(f.as_str().unwrap()))
        });
    let Some((cpu, report)) = lacking else {
        // This CPU has every extension the newest presets name: nothing to refuse.
        return;
    };
    assert_eq!(report["cpu"], cpu);
    let exe = compile_c("predict", &report, (&dir, &Toolchain::host()), true);
    let (_, raw) = random_rows(&report, 1);
    let input = dir.join("in.bin");
    std::fs::write(&input, raw).unwrap();
    let out = Command::new(&exe)
        .arg(&input)
        .arg("1")
        .arg(dir.join("out.bin"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("predict failed: 5"),
        "{cpu}: {err}"
    );
    let header = std::fs::read_to_string(report["header"].as_str().unwrap()).unwrap();
    assert!(header.contains("#define XOR_ERROR_CPU 5"), "{header}");
}

/// Exported for 64-bit ARM from this machine and run under emulation: the MNIST models'
/// logits and the char-RNN's generated text equal nabla's here bit for bit (the kernel
/// library's products sum `k` in the same blocks on both architectures: on an Intel Ice Lake,
/// before it fixed them, the `gemm` crate's own blocks differed and so did 8,176 of 10,000
/// logits). Needs Debian's cross
/// compiler and QEMU and the run-time archive built for the target (`.ci/install-cross`).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "needs the aarch64 cross tools that .ci/install-cross installs"]
fn an_export_for_aarch64_runs_under_emulation_as_nabla_does_here() {
    let tools = Toolchain::aarch64();
    let target = ["--target", "aarch64-unknown-linux-gnu"];
    for (model, n) in [
        (("examples/mnist_mlp.nn", "60"), 1000),
        (("examples/mnist_cnn.nn", "20"), 200),
    ] {
        let dir = scratch(&format!("native-aarch64-{}", model.0.replace('/', "-")));
        let report = classify_mnist(model, n, &target, (&dir, &tools));
        assert_eq!(report["target"], "aarch64-unknown-linux-gnu");
    }
    generates_as_nabla_does("native-aarch64-generate", &target, &tools, false);
}

/// Rows of inputs for `report`'s model: `count` rows per input, indices below each input's
/// classes or reals in [-1, 1]; as CSV for `nabla predict` and as the C program's raw floats.
fn random_rows(report: &Value, count: usize) -> (String, Vec<u8>) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let inputs = report["inputs"].as_array().unwrap();
    let columns: Vec<Vec<Vec<f32>>> = inputs
        .iter()
        .map(|input| {
            let (size, classes) = (
                input["size"].as_u64().unwrap(),
                input["classes"].as_u64().unwrap(),
            );
            (0..count)
                .map(|_| {
                    (0..size)
                        .map(|_| match classes {
                            0 => (next() % 2001) as f32 / 1000.0 - 1.0,
                            c => (next() % c.min(1 << 20)) as f32,
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let csv = (0..count)
        .map(|r| {
            let row: Vec<String> = columns
                .iter()
                .flat_map(|c| c[r].iter().map(|v| v.to_string()))
                .collect();
            row.join(",") + "\n"
        })
        .collect();
    let raw = columns
        .iter()
        .flatten()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    (csv, raw)
}

#[test]
fn every_example_model_predicts_through_the_shared_library_as_nabla_predict_does() {
    let examples = [
        "backprop",
        "char_rnn",
        "gpt_shakespeare",
        "linear_regression",
        "mnist_cnn_bn",
        "mnist_pytorch_recipe",
        "spiral",
        "xor",
    ];
    for example in examples {
        let model = format!("examples/{example}.nn");
        let dir = scratch(&format!("native-every-{example}"));
        let report = train_and_export(&model, "1", "1,4", &dir, &[]);
        let exe = compile_c("predict", &report, (&dir, &Toolchain::host()), false);
        // Two batches of 4 and one of 1: every program.
        let (csv, raw) = random_rows(&report, 9);
        let (rows, input, output) = (
            dir.join("rows.csv"),
            dir.join("in.bin"),
            dir.join("out.bin"),
        );
        std::fs::write(&rows, csv).unwrap();
        std::fs::write(&input, raw).unwrap();
        ok(
            Command::new(&exe)
                .arg(&input)
                .arg("9")
                .arg(&output)
                .output()
                .unwrap(),
            "the C program",
        );
        let expected = predicted_bits(&model, &dir, &rows, "1,4");
        let got = bits_of(&std::fs::read(&output).unwrap());
        assert_eq!(
            expected.len(),
            9 * report["output_size"].as_u64().unwrap() as usize,
            "{example}"
        );
        assert!(
            expected == got,
            "{example}: the library's prediction differs from nabla predict's"
        );
    }
}

/// Exports the char-RNN with `more` arguments into the scratch directory `name`; checks that a
/// C program built and run by `tools` (linked statically or not) generates, from the library's
/// step program, the text `nabla generate --top-k 1` does.
fn generates_as_nabla_does(name: &str, more: &[&str], tools: &Toolchain, statically: bool) {
    let dir = scratch(name);
    let report = train_and_export("examples/char_rnn.nn", "30", "1", &dir, more);
    assert_eq!(report["step"], true);
    let exe = compile_c("generate", &report, (&dir, tools), statically);
    let c = ok(
        tools.run(&exe).args(["The ", "60"]).output().unwrap(),
        "the C program",
    );
    let w = dir.join("w.safetensors");
    let nabla_text = run_ok(&[
        "generate",
        "examples/char_rnn.nn",
        "--weights",
        w.to_str().unwrap(),
        "--prompt",
        "The ",
        "--length",
        "60",
        "--top-k",
        "1",
    ]);
    assert_eq!(nabla_text, format!("The {c}"));
}

#[test]
fn a_recurrent_model_generates_in_c_what_nabla_generate_does() {
    generates_as_nabla_does("native-generate", &[], &Toolchain::host(), true);
}

#[test]
fn bad_flags_and_a_missing_run_time_are_errors_that_write_nothing() {
    let dir = scratch("native-errors");
    let weights = dir.join("w.safetensors");
    let w = weights.to_str().unwrap();
    run_ok(&[
        "train",
        "examples/xor.nn",
        "--steps",
        "1",
        "--quiet",
        "--save",
        w,
    ]);
    let out_dir = dir.join("out");
    let o = out_dir.to_str().unwrap();
    for (args, says) in [
        (vec!["--batch", "0,4"], "batch sizes from 1"),
        (
            vec!["--name", "9lives"],
            "must be letters, digits and underscores",
        ),
        (vec!["--threads", "0"], "at least 1"),
        (
            vec!["--target", "riscv64gc-unknown-linux-gnu"],
            "GNU/Linux on x86_64 and aarch64",
        ),
        (
            vec!["--target-cpu", "pentium9"],
            "not a CPU Cranelift knows",
        ),
        (
            vec![
                "--target",
                "aarch64-unknown-linux-gnu",
                "--target-cpu",
                "native",
            ],
            "cannot run",
        ),
    ] {
        let mut all = vec!["export", "examples/xor.nn", "--weights", w, "-o", o];
        all.extend(args);
        let out = nabla(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{all:?}: {err}"
        );
        assert!(!out_dir.exists(), "{all:?} wrote something");
    }
    // The export's error under the environment `vars`.
    let export_error = |vars: &[(&str, PathBuf)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args(["export", "examples/xor.nn", "--weights", w, "-o", o])
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = export_error(&[("NABLA_AOT_LIB", dir.join("nowhere.a"))]);
    assert!(err.contains("NABLA_AOT_LIB"), "{err}");
    assert!(!out_dir.exists());
    let err = export_error(&[
        ("NABLA_AOT_LIB", runtime_archive()),
        ("CC", dir.join("no-such-cc")),
    ]);
    assert!(err.contains("set $CC to the tool to use"), "{err}");
    let written: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().collect();
    assert!(written.is_empty(), "{written:?}");
}
