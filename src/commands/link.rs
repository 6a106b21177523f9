//! An exported object linked into the libraries a C program links: a shared library (the
//! system's C compiler as the linker, unused code dropped, only the model's entry points
//! exported, so that several models load side by side) and a static library of the model
//! alone (the system's `ar`), linked together with the run-time archive `libnabla_aot.a`,
//! copied beside it: one archive serves every model a program links, where an archive per
//! model would bring the Rust standard library twice. The kernels and the run time come from
//! that archive, built for the library's machine; the tools are that machine's
//! ([`Toolchain`]): the system's own for this machine's architecture, the GNU cross tools for
//! another.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use nabla_compiler::codegen::machine::Machine;
use nabla_runtime::files::WorkDir;

/// The libraries written, with their sizes in bytes.
pub struct Linked {
    pub shared: (PathBuf, u64),
    pub r#static: (PathBuf, u64),
    pub runtime: (PathBuf, u64),
}

/// The run-time archive's file name, beside the binary and in the export.
pub const RUNTIME: &str = "libnabla_aot.a";

/// What links a library for one machine: its C compiler, its archiver and nabla's run-time
/// archive built for it.
pub struct Toolchain {
    /// The C compiler and the variable that names another.
    cc: (OsString, String),
    /// The archiver and the variable that names another.
    ar: (OsString, String),
    /// The run-time archive.
    pub archive: PathBuf,
}

impl Toolchain {
    /// The tools for `machine`. This machine's architecture: `$CC` (else `cc`), `$AR` (else
    /// `ar`), the archive beside this executable. Another: `$CC_<triple>` and `$AR_<triple>`
    /// (the triple's dashes as underscores, as the `cc` crate reads them), else the GNU cross
    /// tools' names (`aarch64-linux-gnu-gcc`, `-ar`), and the archive where `cargo build
    /// --target <triple>` puts it beside this executable's target directory. `$NABLA_AOT_LIB`
    /// names the archive either way.
    pub fn for_machine(machine: &Machine) -> Result<Toolchain, String> {
        let triple = machine.triple();
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.to_path_buf()));
        let tool = |variable: String, default: String| {
            let tool = std::env::var_os(&variable).unwrap_or(default.into());
            (tool, variable)
        };
        let (cc, ar, beside, build) = if machine.is_host_architecture() {
            (
                tool("CC".into(), "cc".into()),
                tool("AR".into(), "ar".into()),
                exe_dir.map(|d| d.join(RUNTIME)),
                "cargo build --release -p nabla-aot` (it lands in target/release/)".to_string(),
            )
        } else {
            let key = triple.to_string().replace('-', "_");
            let cross = format!("{}-linux-gnu", triple.architecture);
            (
                tool(format!("CC_{key}"), format!("{cross}-gcc")),
                tool(format!("AR_{key}"), format!("{cross}-ar")),
                exe_dir.and_then(|d| {
                    Some(
                        d.parent()?
                            .join(triple.to_string())
                            .join("release")
                            .join(RUNTIME),
                    )
                }),
                format!(
                    "rustup target add {triple} && cargo build --release -p nabla-aot --target {triple}` (it lands in target/{triple}/release/)"
                ),
            )
        };
        let archive = match std::env::var_os("NABLA_AOT_LIB") {
            Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
            Some(path) => {
                return Err(format!(
                    "$NABLA_AOT_LIB names `{}`, which is not a file",
                    Path::new(&path).display()
                ));
            }
            None => beside.filter(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "native export for {triple} links against nabla's run-time archive built for it, libnabla_aot.a, which is not where this nabla binary looks: build it with `{build}, or name it in $NABLA_AOT_LIB"
                )
            })?,
        };
        Ok(Toolchain { cc, ar, archive })
    }
}

/// Runs `command` (the tool `variable` names), or says what failed with its output.
fn run(mut command: Command, variable: &str, what: &str) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.output().map_err(|e| {
        format!("cannot run `{program}` to {what}: {e} (set ${variable} to the tool to use)")
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

/// Links `object` (the model `name`'s) with `tools` into `lib{name}.so` and `lib{name}.a` in
/// `dir`, each moved into place whole.
pub fn link(dir: &Path, name: &str, object: &[u8], tools: &Toolchain) -> Result<Linked, String> {
    let archive = &tools.archive;
    let work = WorkDir::new(dir)?;
    let object = work.write(&format!("{name}.o"), object)?;
    let exports = work.write(
        "exports.map",
        format!("{{\n  global: {name}_*;\n  local: *;\n}};\n").as_bytes(),
    )?;
    let shared_name = format!("lib{name}.so");
    let mut cc = Command::new(&tools.cc.0);
    cc.arg("-shared")
        .arg("-o")
        .arg(work.file(&shared_name))
        .arg(&object)
        .arg(archive)
        .arg("-Wl,--gc-sections")
        .arg("-Wl,--strip-all")
        .arg(format!("-Wl,--version-script={}", exports.display()))
        .args(nabla_compiler::native::system_libraries().split(' '));
    run(cc, &tools.cc.1, "link the shared library")?;
    let static_name = format!("lib{name}.a");
    let mut ar = Command::new(&tools.ar.0);
    ar.arg("rcs").arg(work.file(&static_name)).arg(&object);
    run(ar, &tools.ar.1, "archive the model")?;
    work.copy(archive, RUNTIME)?;
    Ok(Linked {
        shared: work.install(&shared_name)?,
        r#static: work.install(&static_name)?,
        runtime: work.install(RUNTIME)?,
    })
}
