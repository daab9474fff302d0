//! Where a file lives: a local path, an S3 object or an HTTP(S) URL, and safe joins below a dataset root.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A file or folder location. Written as a plain path, `file:///abs/path`, `s3://bucket/key` or
/// `http(s)://host/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    Local(PathBuf),
    /// `key` has no leading `/`; empty for the bucket root.
    S3 { bucket: String, key: String },
    /// Full URL, read-only.
    Http(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("`{0}`: an S3 URI needs a bucket, like s3://bucket/prefix")]
    NoBucket(String),
    #[error("`{0}`: unsupported scheme `{1}` (use a path, file://, s3:// or http(s)://)")]
    Scheme(String, String),
    #[error("`{path}` leaves the dataset root {root} ({why}); entries must be relative paths below the root")]
    Escapes { root: String, path: String, why: &'static str },
}

impl Location {
    pub fn parse(s: &str) -> Result<Location, LocationError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(LocationError::NoBucket(s.to_string()));
            }
            return Ok(Location::S3 { bucket: bucket.to_string(), key: key.trim_matches('/').to_string() });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Location::Http(s.trim_end_matches('/').to_string()));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = s.split_once("://")
            && !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        {
            return Err(LocationError::Scheme(s.to_string(), scheme.to_string()));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    pub fn is_remote(&self) -> bool {
        !matches!(self, Location::Local(_))
    }

    /// The location of `rel` below `self`. `rel` must be relative and stay below: no leading `/`,
    /// no `..`, no drive or scheme. (Symlinks leaving a local root are checked when the file is opened.)
    pub fn join(&self, rel: &str) -> Result<Location, LocationError> {
        let escapes = |why| LocationError::Escapes { root: self.to_string(), path: rel.to_string(), why };
        if rel.contains("://") {
            return Err(escapes("a URI, not a relative path"));
        }
        let p = Path::new(rel);
        let mut parts: Vec<&str> = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| escapes("not UTF-8"))?),
                Component::CurDir => {}
                Component::ParentDir => return Err(escapes("contains `..`")),
                Component::RootDir | Component::Prefix(_) => return Err(escapes("an absolute path")),
            }
        }
        if rel.contains('\\') {
            return Err(escapes("contains a backslash"));
        }
        let tail = parts.join("/");
        Ok(match self {
            Location::Local(root) => Location::Local(if tail.is_empty() { root.clone() } else { root.join(&tail) }),
            Location::S3 { bucket, key } => Location::S3 { bucket: bucket.clone(), key: join_key(key, &tail) },
            Location::Http(url) => Location::Http(if tail.is_empty() { url.clone() } else { format!("{url}/{tail}") }),
        })
    }

    /// The local path, for local locations.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            _ => None,
        }
    }

    /// Last path component (file name).
    pub fn file_name(&self) -> String {
        let s = self.to_string();
        s.rsplit('/').next().unwrap_or_default().to_string()
    }
}

fn join_key(prefix: &str, tail: &str) -> String {
    match (prefix.is_empty(), tail.is_empty()) {
        (true, _) => tail.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}/{tail}"),
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, key } if key.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Location::Http(u) => f.write_str(u),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Local(p.to_path_buf())
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Location::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(Location::parse("s3://b/pre/fix/").unwrap(), Location::S3 { bucket: "b".into(), key: "pre/fix".into() });
        assert_eq!(Location::parse("s3://b").unwrap(), Location::S3 { bucket: "b".into(), key: "".into() });
        assert_eq!(Location::parse("file:///data/x").unwrap(), Location::Local("/data/x".into()));
        assert_eq!(Location::parse("rel/dir").unwrap(), Location::Local("rel/dir".into()));
        assert_eq!(Location::parse("https://h/a/").unwrap(), Location::Http("https://h/a".into()));
        assert!(matches!(Location::parse("s3:///x"), Err(LocationError::NoBucket(_))));
        assert!(matches!(Location::parse("gs://b/x"), Err(LocationError::Scheme(_, _))));
        for s in ["s3://b/k", "https://h/a", "/abs/p"] {
            assert_eq!(Location::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn joins_stay_below_the_root() {
        let root = Location::parse("s3://b/ds").unwrap();
        assert_eq!(root.join("video/a.mp4").unwrap().to_string(), "s3://b/ds/video/a.mp4");
        assert_eq!(root.join("./video//a.mp4").unwrap().to_string(), "s3://b/ds/video/a.mp4");
        for bad in ["../x.mp4", "video/../../x", "/etc/passwd", "s3://other/x", "a\\..\\b"] {
            let e = root.join(bad).unwrap_err();
            assert!(e.to_string().contains("leaves the dataset root s3://b/ds"), "{bad}: {e}");
        }
        let local = Location::parse("/data/mer").unwrap();
        assert_eq!(local.join("v/a.mp4").unwrap(), Location::Local("/data/mer/v/a.mp4".into()));
        assert_eq!(Location::parse("http://h/r").unwrap().join("a b.mp4").unwrap().to_string(), "http://h/r/a b.mp4");
    }
}
