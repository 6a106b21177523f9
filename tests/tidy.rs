//! Tidy tests, after rust-analyzer's: the invariants of ARCHITECTURE.md that a reading of the
//! sources can check, checked on every test run, so that the map stays true as the code changes.
//! Each test names the rule, and each failure names the file and line that breaks it.

use std::path::{Path, PathBuf};

/// The source folders of the workspace's crates.
const CRATES: [&str; 6] = [
    "src",
    "dsl/src",
    "compiler/src",
    "kernels/src",
    "runtime/src",
    "aot/src",
];

/// Files over this many lines say at their top why they are long.
const LONG_FILE: usize = 600;

/// A source file: its path from the workspace root and its lines, without the unit tests at its
/// end (`#[cfg(test)] mod tests`), which may do what the code may not.
struct Source {
    path: String,
    lines: Vec<String>,
    all_lines: usize,
}

impl Source {
    /// Lines of code (not comments), numbered from 1.
    fn code(&self) -> impl Iterator<Item = (usize, &str)> {
        self.lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, l.as_str()))
            .filter(|(_, l)| !l.trim_start().starts_with("//"))
    }

    fn under(&self, folder: &str) -> bool {
        self.path.starts_with(folder)
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<Source> {
    let mut paths = Vec::new();
    for dir in CRATES {
        rust_files(Path::new(dir), &mut paths);
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let all: Vec<String> = text.lines().map(str::to_string).collect();
            let end = all
                .windows(2)
                .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim() == "mod tests {")
                .unwrap_or(all.len());
            Source {
                path: path.to_string_lossy().into_owned(),
                all_lines: all.len(),
                lines: all[..end].to_vec(),
            }
        })
        .collect()
}

/// The `[dependencies]`-like sections of a Cargo.toml, as (section, line) pairs.
fn manifest_lines(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            out.push((section.clone(), line.to_string()));
        }
    }
    out
}

/// Every line of code outside `home` that uses one of `uses`, but for the `allowed` uses
/// (`(file, what the line holds)`).
fn uses_outside(home: &str, uses: &[&str], allowed: &[(&str, &str)]) -> Vec<String> {
    let mut violations = Vec::new();
    for source in sources().iter().filter(|s| s.path != home) {
        for (n, line) in source.code() {
            let excused = allowed
                .iter()
                .any(|(file, what)| source.path == *file && line.contains(what));
            if !excused && uses.iter().any(|c| line.contains(c)) {
                violations.push(format!("{}:{n}: {}", source.path, line.trim()));
            }
        }
    }
    violations
}

/// Panics with every violation, one per line.
fn report(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{rule}:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn data_flows_one_way_dsl_compiler_runtime() {
    let mut violations = Vec::new();
    // Which workspace crates each may name, in its manifest (any section) and its code.
    for (dir, banned) in [
        (
            "runtime",
            &["nabla-dsl", "nabla-compiler", "nabla-kernels"][..],
        ),
        (
            "kernels",
            &["nabla-dsl", "nabla-compiler", "nabla-runtime", "nabla-aot"][..],
        ),
        ("aot", &["nabla-dsl", "nabla-compiler", "nabla-runtime"][..]),
        ("compiler", &["nabla-dsl"][..]),
    ] {
        for (section, line) in manifest_lines(&format!("{dir}/Cargo.toml")) {
            if banned.iter().any(|b| line.starts_with(b)) {
                violations.push(format!("{dir}/Cargo.toml {section}: {line}"));
            }
        }
        for source in sources().iter().filter(|s| s.under(&format!("{dir}/"))) {
            for (n, line) in source.code() {
                if banned.iter().any(|b| line.contains(&b.replace('-', "_"))) {
                    violations.push(format!("{}:{n}: {}", source.path, line.trim()));
                }
            }
        }
    }
    report(
        "the runtime depends on no workspace crate, the compiler not on the DSL",
        violations,
    );
}

#[test]
fn only_codegen_names_cranelift() {
    let mut violations = Vec::new();
    for source in sources()
        .iter()
        .filter(|s| !s.under("compiler/src/codegen/"))
    {
        for (n, line) in source.code() {
            if line.contains("cranelift_") {
                violations.push(format!("{}:{n}: {}", source.path, line.trim()));
            }
        }
    }
    for manifest in [
        "Cargo.toml",
        "dsl/Cargo.toml",
        "kernels/Cargo.toml",
        "runtime/Cargo.toml",
        "aot/Cargo.toml",
    ] {
        for (section, line) in manifest_lines(manifest) {
            if line.starts_with("cranelift") && section != "[workspace.dependencies]" {
                violations.push(format!("{manifest} {section}: {line}"));
            }
        }
    }
    report("only compiler/src/codegen/ names Cranelift", violations);
}

/// Reads that are not a user's files: the machine's own state under `/proc`.
const FILE_IO_ALLOWED: [(&str, &str); 2] = [
    ("runtime/src/buffer.rs", "\"/proc/meminfo\""),
    ("src/commands/bench.rs", "\"/proc/self/status\""),
];

#[test]
fn file_io_goes_through_files_rs() {
    let calls = [
        "fs::read",
        "fs::write",
        "fs::create",
        "fs::remove",
        "fs::rename",
        "fs::copy",
        "fs::open",
        "File::open",
        "File::create",
        "OpenOptions",
    ];
    report(
        "every file nabla reads or writes goes through runtime/src/files.rs",
        uses_outside("runtime/src/files.rs", &calls, &FILE_IO_ALLOWED),
    );
}

/// Buffers the aborting constructors may make: sizes fixed small by their nature.
const SMALL_BUFFERS: [(&str, &str); 4] = [
    // A step's learning rate and bias corrections: one number each.
    ("runtime/src/train/store.rs", "Buffer::zeros(1, elem)"),
    // One token, and the recurrent states of one sequence.
    ("src/commands/generate.rs", "Buffer::zeros(1, Elem::F32)"),
    ("src/commands/generate.rs", "Buffer::zeros(len, Elem::F32)"),
    // The differential tests' and gradcheck's feeds, already held as tensors.
    ("compiler/src/evaluator.rs", "Buffer::from_f64(&t.data"),
];

#[test]
fn large_buffers_are_allocated_fallibly() {
    let aborting = ["Buffer::zeros(", "Buffer::from_f64("];
    report(
        "parameters, state, batches and temporaries are allocated with Buffer::try_zeros",
        uses_outside("runtime/src/buffer.rs", &aborting, &SMALL_BUFFERS),
    );
}

/// The code every training step runs.
const FAST_PATH: [&str; 10] = [
    "aot/src/",
    "compiler/src/codegen/",
    "kernels/src/",
    "compiler/src/kernel.rs",
    "compiler/src/fusion.rs",
    "compiler/src/lower.rs",
    "compiler/src/memory.rs",
    "compiler/src/pipeline.rs",
    "compiler/src/programs.rs",
    "runtime/src/",
];

#[test]
fn the_interpreter_stays_off_the_fast_path() {
    let mut violations = Vec::new();
    for source in sources()
        .iter()
        .filter(|s| FAST_PATH.iter().any(|f| s.under(f)))
    {
        for (n, line) in source.code() {
            if line.contains("interp") {
                violations.push(format!("{}:{n}: {}", source.path, line.trim()));
            }
        }
    }
    report(
        "the interpreter is the oracle, never imported by fast-path code",
        violations,
    );
}

#[test]
fn every_file_says_why_and_long_ones_why_they_are_long() {
    let mut violations = Vec::new();
    for source in sources() {
        if !source.lines.first().is_some_and(|l| l.starts_with("//!")) {
            violations.push(format!("{}: no module doc (`//!`) at the top", source.path));
        }
        let says_why = source
            .lines
            .iter()
            .take_while(|l| l.starts_with("//!"))
            .any(|l| l.contains("This file is long because"));
        if source.all_lines > LONG_FILE && !says_why {
            violations.push(format!(
                "{}: {} lines and no `This file is long because` in its module doc",
                source.path, source.all_lines
            ));
        }
    }
    report("files hold one concept and say why", violations);
}

#[test]
fn every_module_is_on_the_architecture_map() {
    let map = std::fs::read_to_string("ARCHITECTURE.md").unwrap();
    let mut violations = Vec::new();
    for source in sources() {
        let path = Path::new(&source.path);
        let stem = path.file_stem().unwrap().to_string_lossy();
        let name = match &*stem {
            "mod" | "lib" | "main" => continue,
            _ => stem.into_owned(),
        };
        let named = map.contains(&format!("`{name}`"))
            || map.contains(&format!("`{name}.rs`"))
            || map.contains(&format!("{name}.rs`"))
            || map.contains(&format!("/{name}/`"))
            || map.contains(&format!("/{name}`"));
        if !named {
            violations.push(format!(
                "{}: `{name}` is not in ARCHITECTURE.md's code map",
                source.path
            ));
        }
    }
    report("ARCHITECTURE.md names every module", violations);
}

#[test]
fn ci_runs_the_readme_tests_clippy_and_rustfmt() {
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut violations = Vec::new();
    for command in [
        "cargo test --release --workspace --locked",
        "cargo clippy --workspace --all-targets --locked -- -D warnings",
        "cargo fmt --check",
    ] {
        if !ci.contains(command) {
            violations.push(format!(".ci/run does not run `{command}`"));
        }
    }
    if !readme.contains("cargo test --release --workspace --locked") {
        violations.push("README.md does not give the test command CI runs".into());
    }
    report(
        "CI runs the README's test command, clippy and rustfmt",
        violations,
    );
}
