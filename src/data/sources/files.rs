//! What a source parser sees of its dataset: files below a root, read or listed, and media locations.

use std::path::PathBuf;

use crate::storage::Location;

use super::SourceError;

/// Read access to the files below a dataset root. Parsers only go through this, so the same code reads
/// a local folder, an S3 prefix or an HTTP mirror.
pub trait DatasetFiles: Send + Sync {
    /// The dataset root, for messages.
    fn root(&self) -> &Location;
    /// The whole content of a file below the root (label lists, CSVs, JSON).
    fn read(&self, rel: &str) -> Result<Vec<u8>, SourceError>;
    /// Whether a file exists below the root.
    fn exists(&self, rel: &str) -> Result<bool, SourceError>;
    /// Files below a folder of the root (recursively), as paths relative to the root, sorted.
    fn list(&self, rel_dir: &str) -> Result<Vec<String>, SourceError>;
    /// Location of a file below the root; paths leaving the root are rejected.
    fn locate(&self, rel: &str) -> Result<Location, SourceError> {
        self.root().join(rel).map_err(|e| SourceError::Location { source: e })
    }
    /// `root/rel` for messages.
    fn describe(&self, rel: &str) -> String {
        self.root().join(rel).map(|l| l.to_string()).unwrap_or_else(|_| format!("{}/{rel}", self.root()))
    }
}

/// A local folder, read with std::fs (tests, and plain-path roots).
pub struct LocalFiles {
    root: Location,
    dir: PathBuf,
}

impl LocalFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        LocalFiles { root: Location::Local(dir.clone()), dir }
    }

    fn path(&self, rel: &str) -> Result<PathBuf, SourceError> {
        match DatasetFiles::locate(self, rel)? {
            Location::Local(p) => Ok(p),
            other => Err(SourceError::Other(format!("{other}: not local"))),
        }
    }
}

impl DatasetFiles for LocalFiles {
    fn root(&self) -> &Location {
        &self.root
    }

    /// Also rejects a path that exists and resolves (through symlinks) outside the root.
    fn locate(&self, rel: &str) -> Result<Location, SourceError> {
        let loc = self.root.join(rel).map_err(|e| SourceError::Location { source: e })?;
        if let Location::Local(p) = &loc
            && let (Ok(real), Ok(real_root)) = (p.canonicalize(), self.dir.canonicalize())
            && !real.starts_with(&real_root)
        {
            return Err(SourceError::Location {
                source: crate::storage::LocationError::Escapes { root: self.root.to_string(), path: rel.to_string(), why: "a symlink to outside the root" },
            });
        }
        Ok(loc)
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, SourceError> {
        let p = self.path(rel)?;
        std::fs::read(&p).map_err(|e| SourceError::Read { file: p.display().to_string(), message: e.to_string() })
    }

    fn exists(&self, rel: &str) -> Result<bool, SourceError> {
        Ok(self.path(rel)?.is_file())
    }

    fn list(&self, rel_dir: &str) -> Result<Vec<String>, SourceError> {
        let base = self.path(rel_dir)?;
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| SourceError::Read { file: d.display().to_string(), message: e.to_string() })?;
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(r) = p.strip_prefix(&self.dir) {
                    out.push(r.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_stay_below_the_root_even_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ds");
        std::fs::create_dir_all(root.join("video")).unwrap();
        std::fs::write(root.join("video/a.mp4"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret.mp4"), b"s").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.mp4"), root.join("video/out.mp4")).unwrap();
        std::os::unix::fs::symlink(root.join("video/a.mp4"), root.join("video/in.mp4")).unwrap();
        let files = LocalFiles::new(&root);
        assert_eq!(files.locate("video/a.mp4").unwrap(), Location::Local(root.join("video/a.mp4")));
        assert!(files.locate("video/in.mp4").is_ok(), "a symlink inside the root is fine");
        assert!(files.locate("video/missing.mp4").is_ok(), "a missing file is the run's on_error business");
        for bad in ["video/out.mp4", "../secret.mp4", "/etc/passwd"] {
            let e = files.locate(bad).unwrap_err().to_string();
            assert!(e.contains("leaves the dataset root"), "{bad}: {e}");
        }
        assert!(files.locate("video/out.mp4").unwrap_err().to_string().contains("symlink"));
        assert_eq!(files.list("video").unwrap(), vec!["video/a.mp4", "video/in.mp4", "video/out.mp4"]);
        assert!(files.read("video/nope.txt").unwrap_err().to_string().contains("video/nope.txt"));
    }
}
