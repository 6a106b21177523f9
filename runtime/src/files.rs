//! File access shared by every reader and writer of the project: bounded reads and atomic
//! writes. Everything nabla reads from disk (models, data, weights) goes through
//! [`read_limited`] or [`open_limited`], so no file, however large or endless (`/dev/zero`, a
//! FIFO), can make it allocate without bound; everything it writes goes through
//! [`write_atomically`], so no interruption leaves a truncated file at the destination. The
//! one exception is a log that grows line by line ([`open_append`]), whose earlier lines an
//! append cannot damage.
//!
//! An output path is the user's: [`destination`] follows a symlink to the file it names (the
//! link stays a link), takes a named pipe, a character device and anything under `/dev` as a
//! stream that only a log may be written to, and refuses anything else, so that no write ever
//! replaces a link, a pipe or a device node with a regular file.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Opens `path` for reading after checking that it is a regular file of at most `limit` bytes;
/// `what` names the file's role in errors ("model file", "weights file"). Returns the file and
/// its size.
pub fn open_limited(path: &Path, what: &str, limit: u64) -> Result<(File, u64), String> {
    let cannot = |e: std::io::Error| format!("cannot read {what} `{}`: {e}", path.display());
    let file = File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read {what} `{}`: it is not a regular file",
            path.display()
        ));
    }
    if meta.len() > limit {
        return Err(format!(
            "{what} `{}` is {} bytes, more than the {limit} bytes it may have",
            path.display(),
            meta.len()
        ));
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes (see [`open_limited`]). Reading stops at
/// the limit even if the file grows meanwhile.
pub fn read_limited(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>, String> {
    let (file, len) = open_limited(path, what, limit)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|_| format!("not enough memory to read {what} `{}`", path.display()))?;
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{what} `{}` grew past the {limit} bytes it may have while being read",
            path.display()
        ));
    }
    Ok(bytes)
}

/// What an output path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A regular file, existing or new: the path to write, a symlink's target resolved.
    File(PathBuf),
    /// A named pipe or a device (`/dev/stdout`): written in place as a stream, never replaced.
    Stream,
}

/// What `path` names as an output. `what` names its role in errors ("--save").
pub fn destination(path: &Path, what: &str) -> Result<Destination, String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    if path.starts_with("/dev") {
        return Ok(Destination::Stream);
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => std::fs::canonicalize(path)
            .map(Destination::File)
            .map_err(|e| format!("cannot write {what} `{shown}`: {e}")),
        Ok(meta) if meta.is_dir() => {
            Err(format!("{what} `{shown}` is a directory; give a file path"))
        }
        Ok(meta) if meta.file_type().is_fifo() || meta.file_type().is_char_device() => {
            Ok(Destination::Stream)
        }
        Ok(_) => Err(format!(
            "{what} `{shown}` is neither a file, a named pipe nor a character device; give a file path"
        )),
        // A dangling symlink: writing through it creates the file it names.
        Err(_) if path.is_symlink() => {
            let target = std::fs::read_link(path)
                .map_err(|e| format!("cannot write {what} `{shown}`: {e}"))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            Ok(Destination::File(dir.join(target)))
        }
        Err(_) => Ok(Destination::File(path.to_path_buf())),
    }
}

/// Writes `bytes` to `path` atomically: to a temporary file beside it, synced, renamed over it,
/// then the directory synced, so that the destination always holds either the old or the whole
/// new contents. Through a symlink, the file it names is replaced and the link kept; a pipe or
/// device is refused (see [`destination`]). Temporaries that earlier interrupted writes to the
/// same destination left behind are removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let resolved = match destination(path, "output")? {
        Destination::File(file) => file,
        Destination::Stream => {
            return Err(format!(
                "cannot write `{}`: it is a named pipe or a device, and this output is written whole and atomically; give a file path",
                path.display()
            ));
        }
    };
    let path = resolved.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("`{}` is not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    let prefix = format!(".{file_name}.tmp");
    remove_stale_temporaries(dir, Some(&file_name));
    let temp = dir.join(format!("{prefix}{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot write `{}`: {e}", path.display())
    })
}

/// A directory of intermediate files (`.nabla-work.tmpPID` inside an output directory), whose
/// finished files are moved into place atomically; removed with what is left in it when
/// dropped.
pub struct WorkDir {
    path: PathBuf,
    out: PathBuf,
}

impl WorkDir {
    /// A fresh work directory inside `out`, which must exist and take new files.
    pub fn new(out: &Path) -> Result<WorkDir, String> {
        remove_stale_temporaries(out, Some("nabla-work"));
        let path = out.join(format!(".nabla-work.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)
            .map_err(|e| format!("cannot write in `{}`: {e}", out.display()))?;
        Ok(WorkDir {
            path,
            out: out.to_path_buf(),
        })
    }

    /// Where intermediate file `name` goes.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes intermediate file `name`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let path = self.file(name);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        Ok(path)
    }

    /// Copies `from` into intermediate file `name`.
    pub fn copy(&self, from: &Path, name: &str) -> Result<PathBuf, String> {
        let path = self.file(name);
        std::fs::copy(from, &path).map_err(|e| format!("cannot read `{}`: {e}", from.display()))?;
        Ok(path)
    }

    /// Moves the finished intermediate file `name` to `name` in the output directory in one
    /// rename (through a symlink, onto the file it names), then syncs the directory. Returns
    /// the destination and its size in bytes.
    pub fn install(&self, name: &str) -> Result<(PathBuf, u64), String> {
        let wanted = self.out.join(name);
        let target = match destination(&wanted, "output")? {
            Destination::File(file) => file,
            Destination::Stream => {
                return Err(format!(
                    "cannot write `{}`: it is a named pipe or a device; give a directory where it can be a file",
                    wanted.display()
                ));
            }
        };
        let from = self.file(name);
        let result = (|| {
            File::open(&from)?.sync_all()?;
            std::fs::rename(&from, &target)?;
            File::open(&self.out)?.sync_all()?;
            std::fs::metadata(&target).map(|m| m.len())
        })();
        let bytes = result.map_err(|e| format!("cannot write `{}`: {e}", target.display()))?;
        Ok((wanted, bytes))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Opens `path` to append to it (a log written line by line, after [`write_atomically`] has
/// laid its first lines).
pub fn open_append(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Opens a stream [`destination`] (a pipe, a device) to write to it in place.
pub fn open_stream(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Checks, before any work is done, that `path` can be written: a stream when `streams` allows
/// one (a log), else a file whose directory exists and takes a new file (see [`destination`]).
/// `what` names the file's role in errors ("--save").
pub fn check_writable(path: &Path, what: &str, streams: bool) -> Result<Destination, String> {
    let found = destination(path, what)?;
    let file = match &found {
        Destination::File(file) => file,
        Destination::Stream if streams => return Ok(found),
        Destination::Stream => {
            return Err(format!(
                "{what} `{}` is a named pipe or a device; {what} writes a whole file atomically, so give a file path",
                path.display()
            ));
        }
    };
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_directory(dir, &format!("{what} `{}`", path.display()))?;
    Ok(found)
}

/// Removes the temporaries of this tool's atomic writes (`.NAME.tmpPID`) in `dir` whose
/// process no longer runs: a killed run leaves one of a checkpoint's full size behind.
pub fn clean_stale_temporaries(dir: &Path) {
    remove_stale_temporaries(dir, None)
}

/// Creates directory `dir` (and its parents) if needed and checks that it takes new files.
pub fn prepare_directory(dir: &Path, what: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the {what} directory `{}`: {e}",
            dir.display()
        )
    })?;
    check_directory(dir, &format!("{what} directory `{}`", dir.display()))
}

/// Whether a file can be created in `dir`, by creating and removing one.
fn check_directory(dir: &Path, what: &str) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "cannot write {what}: the directory `{}` does not exist",
            dir.display()
        ));
    }
    let probe = dir.join(format!(".nabla-probe.tmp{}", std::process::id()));
    File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write {what}: {e}"))
}

/// Removes the temporaries `.NAME.tmpPID` in `dir` (of destination `NAME` only, when given)
/// whose process no longer runs (temporaries of interrupted writes). A temporary of a live
/// process is another writer's and is left alone.
fn remove_stale_temporaries(dir: &Path, destination: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (of, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
            let pid: u32 = pid.parse().ok()?;
            if destination.is_some_and(|d| d != of) || of.is_empty() {
                return None;
            }
            (!process_is_running(pid)).then(|| entry.path())
        })
        .collect();
    for path in stale {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
}

/// Whether a process with this id runs on this machine. Where that cannot be known, it is
/// assumed to run (a temporary is kept rather than another writer's file removed).
fn process_is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nabla-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_are_bounded_and_only_of_regular_files() {
        let dir = temp_dir("read");
        let path = dir.join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_limited(&path, "file", 5).unwrap(), b"12345");
        let err = read_limited(&path, "model file", 4).unwrap_err();
        assert!(err.contains("is 5 bytes, more than the 4 bytes"), "{err}");
        let err = read_limited(&dir, "model file", 4).unwrap_err();
        assert!(err.ends_with("it is not a regular file"), "{err}");
        if Path::new("/dev/zero").exists() {
            let err = read_limited(Path::new("/dev/zero"), "data file", 1 << 30).unwrap_err();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let err = read_limited(&dir.join("missing"), "weights file", 4).unwrap_err();
        assert!(err.starts_with("cannot read weights file"), "{err}");
    }

    #[test]
    fn atomic_writes_replace_and_clean_up_stale_temporaries() {
        let dir = temp_dir("write");
        let path = dir.join("w.bin");
        // A temporary left by a process that no longer runs (pid 4,000,000 exceeds pid_max),
        // one of another destination, and one of this destination by a live process (us is
        // excluded by design, so use pid 1, which always runs).
        let stale = dir.join(".w.bin.tmp4000000");
        let other = dir.join(".x.bin.tmp4000000");
        let live = dir.join(".w.bin.tmp1");
        for p in [&stale, &other, &live] {
            std::fs::write(p, b"junk").unwrap();
        }
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!stale.exists(), "the stale temporary is removed");
        assert!(other.exists() && live.exists(), "other files are kept");
        write_atomically(&path, b"newer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
    }

    #[test]
    fn writability_is_checked_before_any_work() {
        let dir = temp_dir("writable");
        check_writable(&dir.join("w.safetensors"), "--save", false).unwrap();
        let err = check_writable(&dir.join("missing/w.safetensors"), "--save", false).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = check_writable(&dir, "--save", false).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
        prepare_directory(&dir.join("a/b"), "checkpoint").unwrap();
        assert!(dir.join("a/b").is_dir());
        std::fs::write(dir.join("file"), b"").unwrap();
        let err = prepare_directory(&dir.join("file/sub"), "checkpoint").unwrap_err();
        assert!(
            err.contains("cannot create the checkpoint directory"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "no probe file is left"
        );
    }
}
