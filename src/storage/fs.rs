//! Local files every layer writes: the cache root, and atomic writes (a reader sees the old file or the
//! whole new one, never a torn one, even if the process dies mid-write).

use std::io::Write;
use std::path::{Path, PathBuf};

/// A local write that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("writing `{path}`: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// emollama's cache directory: `configured` when set (`runtime.cache_dir`), else
/// `$XDG_CACHE_HOME/emollama`, else `~/.cache/emollama`.
pub fn cache_root(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("emollama");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/emollama"),
        None => PathBuf::from(".cache/emollama"),
    }
}

/// Writes `path` atomically: `fill` writes a temporary file beside it (unique per process and thread, so
/// concurrent writers never share one), which is synced and renamed over `path`. The temporary file is
/// removed when anything fails.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    // Unique within the process (one counter for every thread) and across processes (the pid).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = fill(&tmp).and_then(|()| std::fs::File::open(&tmp)?.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// [`write_atomic_with`] of `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |tmp| std::fs::File::create(tmp)?.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("metrics.json");
        write_atomic(&p, b"old").expect("first write");
        write_atomic(&p, b"new").expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        let failed = write_atomic_with(&p, |tmp| {
            std::fs::write(tmp, b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        let e = failed.expect_err("fill failed").to_string();
        assert!(e.contains("metrics.json") && e.contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&p).expect("read"), b"new", "a failed write keeps the old file");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "temporary files left: {names:?}");
        let e = write_atomic(&dir.path().join("missing/dir/x"), b"x").expect_err("no parent").to_string();
        assert!(e.contains("missing/dir/x"), "{e}");
    }
}
