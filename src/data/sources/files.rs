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
