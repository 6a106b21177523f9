//! File access shared by every reader and writer of the project: bounded reads and atomic
//! writes. Everything nabla reads from disk (models, data, weights) goes through
//! [`read_limited`] or [`open_limited`], so no file, however large or endless (`/dev/zero`, a
//! FIFO), can make it allocate without bound; everything it writes goes through
//! [`write_atomically`], so no interruption leaves a truncated file at the destination. The
//! one exception is a log that grows line by line ([`open_append`]), whose earlier lines an
//! append cannot damage.

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
    file.take(limit + 1)
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

/// Writes `bytes` to `path` atomically: to a temporary file beside it, synced, renamed over it,
/// then the directory synced, so that the destination always holds either the old or the whole
/// new contents. Temporaries that earlier interrupted writes to the same destination left
/// behind are removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
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
    remove_stale_temporaries(dir, &prefix);
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

/// Opens `path` to append to it (a log written line by line, after [`write_atomically`] has
/// laid its first lines).
pub fn open_append(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Checks, before any work is done, that [`write_atomically`] will be able to write `path`:
/// its directory exists and takes a new file, and `path` is not a directory. `what` names the
/// file's role in errors ("--save").
pub fn check_writable(path: &Path, what: &str) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "{what} `{}` is a directory; give a file path",
            path.display()
        ));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_directory(dir, &format!("{what} `{}`", path.display()))
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

/// Removes `PREFIX<pid>` files in `dir` whose process no longer runs (temporaries of
/// interrupted writes). A temporary of a live process is another writer's and is left alone.
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let pid: u32 = name.strip_prefix(prefix)?.parse().ok()?;
            (!process_is_running(pid)).then(|| entry.path())
        })
        .collect();
    for path in stale {
        let _ = std::fs::remove_file(path);
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
        check_writable(&dir.join("w.safetensors"), "--save").unwrap();
        let err = check_writable(&dir.join("missing/w.safetensors"), "--save").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = check_writable(&dir, "--save").unwrap_err();
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
