//! Where a run writes, checked before any work: every output can be written, the temporaries
//! of killed runs are cleaned, and no file that is not this model's is replaced unless
//! `--overwrite` says so.

use std::path::PathBuf;

use nabla_runtime::resume;
use nabla_runtime::{Elem, files};

use super::{Args, BEST, LAST};
use crate::commands::Failure;
use crate::commands::session::Session;

/// Fails before any work when an output path cannot be written, and removes the temporaries
/// that killed runs left where this run writes.
pub(super) fn check_outputs(args: &Args) -> Result<(), Failure> {
    let check = || -> Result<(), String> {
        let mut dirs = Vec::new();
        for (path, flag, streams) in [(&args.save, "--save", false), (&args.log, "--log", true)] {
            if let Some(path) = path
                && let files::Destination::File(file) = files::check_writable(path, flag, streams)?
            {
                dirs.push(file.parent().map(PathBuf::from).unwrap_or_default());
            }
        }
        if let Some(dir) = &args.checkpoint {
            files::prepare_directory(dir, "--checkpoint")?;
            dirs.push(dir.clone());
        }
        if let Some(dir) = &args.plot {
            files::prepare_directory(dir, "--plot")?;
        }
        for dir in dirs {
            files::clean_stale_temporaries(if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                &dir
            });
        }
        Ok(())
    };
    check().map_err(Failure::Message)
}

/// Refuses, unless `--overwrite` says to, to replace what is not this model's: a `--save` file
/// that is not a weights file of the model, a checkpoint of another model in `--checkpoint`,
/// and a `--log` file that is not a metrics log (a CSV, say).
pub(super) fn check_overwrites(args: &Args, session: &Session) -> Result<(), Failure> {
    if args.overwrite {
        return Ok(());
    }
    let model = &session.loaded.compiled.model.name;
    let refuse = |path: &std::path::Path, what: String| {
        Err(Failure::Message(format!(
            "`{}` exists and {what}; give `--overwrite` to replace it",
            path.display()
        )))
    };
    if let Some(path) = args.save.as_ref().filter(|p| p.is_file())
        && let Err(e) = resume::load_parameters(path, &session.info, Elem::F32)
    {
        return refuse(
            path,
            format!("is not a weights file of model `{model}` ({e})"),
        );
    }
    if let Some(dir) = &args.checkpoint {
        for file in [dir.join(LAST), dir.join(BEST)]
            .iter()
            .filter(|f| f.is_file())
        {
            if !resume::belongs_to(file, &session.info, model) {
                return refuse(file, format!("is not a checkpoint of model `{model}`"));
            }
        }
    }
    if let Some(path) = args
        .log
        .as_ref()
        .filter(|p| p.is_file() && !p.starts_with("/dev"))
    {
        // Its first line decides; a metrics line is about 200 bytes.
        let mut start = Vec::new();
        if let Ok((file, _)) = files::open_limited(path, "--log file", u64::MAX) {
            use std::io::Read;
            let _ = file.take(1 << 16).read_to_end(&mut start);
        }
        let head = start.split(|&b| b == b'\n').next().unwrap_or_default();
        let is_log = head.is_empty()
            || serde_json::from_slice::<serde_json::Value>(head)
                .is_ok_and(|v| v.get("epoch").is_some());
        if !is_log {
            return refuse(path, "is not a metrics log of `nabla train`".to_string());
        }
    }
    Ok(())
}
