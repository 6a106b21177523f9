//! An exported object linked into the libraries a C program links: a shared library (the
//! system's C compiler as the linker, unused code dropped, only the model's entry points
//! exported, so that several models load side by side) and a static library of the model
//! alone (the system's `ar`), linked together with the run-time archive `libnabla_aot.a`,
//! copied beside it: one archive serves every model a program links, where an archive per
//! model would bring the Rust standard library twice. The kernels and the run time come from
//! that archive, which the build puts beside the `nabla` binary; `$CC`, `$AR` and
//! `$NABLA_AOT_LIB` override where each comes from.

use std::path::{Path, PathBuf};
use std::process::Command;

use nabla_runtime::files::WorkDir;

/// The libraries written, with their sizes in bytes.
pub struct Linked {
    pub shared: (PathBuf, u64),
    pub r#static: (PathBuf, u64),
    pub runtime: (PathBuf, u64),
}

/// The run-time archive's file name, beside the binary and in the export.
pub const RUNTIME: &str = "libnabla_aot.a";

/// The run-time archive: `$NABLA_AOT_LIB`, else `libnabla_aot.a` beside this executable.
pub fn runtime_archive() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("NABLA_AOT_LIB") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "$NABLA_AOT_LIB names `{}`, which is not a file",
                path.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(RUNTIME)));
    match beside {
        Some(path) if path.is_file() => Ok(path),
        _ => Err("native export links against nabla's run-time archive, libnabla_aot.a, which is not beside this nabla binary: build it with `cargo build --release -p nabla-aot` (it lands in target/release/), or name it in $NABLA_AOT_LIB".into()),
    }
}

/// Runs `command`, or says what failed with its output.
fn run(mut command: Command, what: &str) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.output().map_err(|e| {
        format!("cannot run `{program}` to {what}: {e} (set $CC or $AR to the tool to use)")
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program}` failed to {what} ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    ))
}

/// Links `object` (the model `name`'s) against `archive` into `lib{name}.so` and `lib{name}.a`
/// in `dir`, each moved into place whole.
pub fn link(dir: &Path, name: &str, object: &[u8], archive: &Path) -> Result<Linked, String> {
    let work = WorkDir::new(dir)?;
    let object = work.write(&format!("{name}.o"), object)?;
    let exports = work.write(
        "exports.map",
        format!("{{\n  global: {name}_*;\n  local: *;\n}};\n").as_bytes(),
    )?;
    let shared_name = format!("lib{name}.so");
    let mut cc = Command::new(std::env::var_os("CC").unwrap_or("cc".into()));
    cc.arg("-shared")
        .arg("-o")
        .arg(work.file(&shared_name))
        .arg(&object)
        .arg(archive)
        .arg("-Wl,--gc-sections")
        .arg("-Wl,--strip-all")
        .arg(format!("-Wl,--version-script={}", exports.display()))
        .args(nabla_compiler::native::system_libraries().split(' '));
    run(cc, "link the shared library")?;
    let static_name = format!("lib{name}.a");
    let mut ar = Command::new(std::env::var_os("AR").unwrap_or("ar".into()));
    ar.arg("rcs").arg(work.file(&static_name)).arg(&object);
    run(ar, "archive the model")?;
    work.copy(archive, RUNTIME)?;
    Ok(Linked {
        shared: work.install(&shared_name)?,
        r#static: work.install(&static_name)?,
        runtime: work.install(RUNTIME)?,
    })
}
