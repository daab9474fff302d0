//! Remote recipe bases: `extends` entries naming `s3://bucket/key.toml`, `http(s)://host/path.toml`
//! (read through [`crate::storage::Storage`], with its retries and timeouts) or
//! `hf://owner/repo@revision/path.toml` (through hf-hub and its cache).
//!
//! A remote base is read from its server and kept in the local cache; when the server cannot be
//! reached the cached copy is used (with a warning), so a recipe that ran once keeps loading offline.
//! Relative `extends` inside a remote base resolve against the base's own folder and never leave the
//! folder of the remote base a local recipe named (its *root*); a remote base never names a local file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::storage::{Location, Storage, StorageConfig};

/// The largest recipe file read (recipes are a few KB; a bound keeps a shared recipe that `extends`
/// `/dev/zero` or a huge file from exhausting memory).
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;

/// Where a remote base lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    S3 { bucket: String },
    /// `http://host:port` or `https://host`.
    Http { origin: String },
    /// A Hugging Face model repository at a revision (branch, tag or commit).
    Hf { repo: String, revision: String },
}

/// A remote recipe file: the store, the path segments of the file, and how many leading folder
/// segments form its root (relative `extends` may not climb above them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub store: Store,
    segs: Vec<String>,
    root_depth: usize,
}

/// Whether an `extends` entry is a remote URI (`s3://`, `http://`, `https://`, `hf://`).
pub fn is_remote_uri(s: &str) -> bool {
    ["s3://", "http://", "https://", "hf://"].iter().any(|p| s.trim_start().starts_with(p))
}

impl RemoteRef {
    /// Parses a remote URI; its root is its own folder. Errors say what is wrong with `uri`.
    pub fn parse(uri: &str) -> Result<RemoteRef, String> {
        let uri = uri.trim();
        let (store, path) = if let Some(rest) = uri.strip_prefix("hf://") {
            let (repo, after) = rest
                .split_once('@')
                .ok_or_else(|| "an hf:// base needs a revision: hf://owner/repo@REVISION/path.toml (a commit hash pins it for good)".to_string())?;
            let (revision, path) = after.split_once('/').unwrap_or((after, ""));
            if repo.is_empty() || repo.split('/').any(str::is_empty) || repo.split('/').count() > 2 {
                return Err("expected hf://owner/repo@revision/path.toml".into());
            }
            if revision.is_empty() {
                return Err("empty revision after `@` (expected hf://owner/repo@revision/path.toml)".into());
            }
            (Store::Hf { repo: repo.to_string(), revision: revision.to_string() }, path)
        } else if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("an S3 URI needs a bucket: s3://bucket/path.toml".into());
            }
            (Store::S3 { bucket: bucket.to_string() }, key)
        } else if let Some(scheme) = ["http://", "https://"].iter().find(|p| uri.starts_with(**p)) {
            let rest = &uri[scheme.len()..];
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() {
                return Err("a URL needs a host: https://host/path.toml".into());
            }
            (Store::Http { origin: format!("{scheme}{host}") }, path)
        } else {
            return Err("not a remote URI (expected s3://, http(s):// or hf://)".into());
        };
        let mut segs = Vec::new();
        for s in path.split('/') {
            match s {
                "" | "." => {}
                ".." => return Err("`..` in a remote URI; write the path without it".into()),
                s if s.contains('\\') => return Err("a backslash in a remote path".into()),
                s => segs.push(s.to_string()),
            }
        }
        if segs.is_empty() {
            return Err("names no file (expected a path to a .toml file after the bucket, host or revision)".into());
        }
        let root_depth = segs.len() - 1;
        Ok(RemoteRef { store, segs, root_depth })
    }

    /// The URI, as written back: `s3://bucket/a/b.toml`, `https://host/a/b.toml`, `hf://o/r@rev/a/b.toml`.
    pub fn uri(&self) -> String {
        let path = self.segs.join("/");
        match &self.store {
            Store::S3 { bucket } => format!("s3://{bucket}/{path}"),
            Store::Http { origin } => format!("{origin}/{path}"),
            Store::Hf { repo, revision } => format!("hf://{repo}@{revision}/{path}"),
        }
    }

    /// The URI of the root folder, for errors.
    fn root_uri(&self) -> String {
        let path = self.segs[..self.root_depth].join("/");
        match &self.store {
            Store::S3 { bucket } => format!("s3://{bucket}/{path}"),
            Store::Http { origin } => format!("{origin}/{path}"),
            Store::Hf { repo, revision } => format!("hf://{repo}@{revision}/{path}"),
        }
    }

    /// The base named by `entry` in this file's `extends`: a remote URI (its own root), or a path
    /// relative to this file's folder that stays below the root. Local paths are refused.
    pub fn resolve(&self, entry: &str) -> Result<RemoteRef, String> {
        let entry = entry.trim();
        if is_remote_uri(entry) {
            return RemoteRef::parse(entry);
        }
        if entry.starts_with("file://") || entry.starts_with('/') || entry.starts_with('\\') || entry.starts_with('~') || entry.get(1..3) == Some(":\\") || entry.get(1..3) == Some(":/") {
            return Err(format!("`{entry}` is a local path; a remote base cannot extend files on this machine (name a remote URI or a path relative to the base)"));
        }
        if let Some((scheme, _)) = entry.split_once("://") {
            return Err(format!("unsupported scheme `{scheme}` (use s3://, http(s):// or hf://, or a relative path)"));
        }
        if entry.contains('\\') {
            return Err(format!("`{entry}` contains a backslash; use `/`"));
        }
        let mut segs: Vec<String> = self.segs[..self.segs.len() - 1].to_vec();
        for s in entry.split('/') {
            match s {
                "" | "." => {}
                ".." => {
                    if segs.len() <= self.root_depth {
                        return Err(format!("`{entry}` leaves the base's root {} (`..` above the folder of the remote base the local recipe named)", self.root_uri()));
                    }
                    segs.pop();
                }
                s => segs.push(s.to_string()),
            }
        }
        if segs.len() <= self.root_depth {
            return Err(format!("`{entry}` names a folder, not a file"));
        }
        Ok(RemoteRef { store: self.store.clone(), segs, root_depth: self.root_depth })
    }

    fn location(&self) -> Location {
        let path = self.segs.join("/");
        match &self.store {
            Store::S3 { bucket } => Location::S3 { bucket: bucket.clone(), key: path },
            Store::Http { origin } => Location::Http(format!("{origin}/{path}")),
            Store::Hf { .. } => Location::Http(self.uri()),
        }
    }
}

/// A fetched remote recipe.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub text: String,
    pub sha256: String,
    /// Read from the local cache because the server could not be reached.
    pub from_cache: bool,
}

/// Reads remote bases; the storage client is made on first use.
pub struct Fetcher {
    cfg: StorageConfig,
    cache_root: PathBuf,
    storage: Option<Arc<Storage>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Fetcher {
    /// `cfg`: retries, timeouts and endpoint (the top recipe's `[storage]`); remote bases are cached under
    /// `<cache_root>/objects` like remote media.
    pub fn new(cfg: StorageConfig, cache_root: PathBuf) -> Self {
        Fetcher { cfg, cache_root, storage: None }
    }

    fn storage(&mut self) -> Result<Arc<Storage>, String> {
        if let Some(s) = &self.storage {
            return Ok(s.clone());
        }
        let s = Storage::new(self.cfg.clone(), &self.cache_root).map_err(|e| e.to_string())?;
        self.storage = Some(s.clone());
        Ok(s)
    }

    /// The text of `r`: from its server (then cached, unless it does not match `pin`: the cache keeps the
    /// last accepted content), else, when the server cannot be reached, the cached copy. Errors name what
    /// went wrong (the caller adds the URI and the naming file).
    pub fn fetch(&mut self, r: &RemoteRef, pin: Option<&str>) -> Result<Fetched, String> {
        let (bytes, from_cache) = match &r.store {
            Store::Hf { repo, revision } => fetch_hf(repo, revision, &r.segs.join("/"), self.cfg.retries)?,
            _ => self.fetch_storage(r, pin)?,
        };
        let sha256 = sha256_hex(&bytes);
        let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
        Ok(Fetched { text, sha256, from_cache })
    }

    fn fetch_storage(&mut self, r: &RemoteRef, pin: Option<&str>) -> Result<(Vec<u8>, bool), String> {
        let storage = self.storage()?;
        let loc = r.location();
        let uri = r.uri();
        let online = (|| {
            // The size first, so a huge object is refused before it is downloaded; a server that
            // cannot answer a HEAD is still read (and the length checked after).
            match storage.size(&loc) {
                Ok(Some(n)) if n > MAX_RECIPE_BYTES => return Ok(Err(too_big(n))),
                Err(e) if e.is_outage() => return Err(e),
                _ => {}
            }
            let bytes = storage.read(&loc)?;
            Ok::<_, crate::storage::StorageError>(Ok(bytes))
        })();
        match online {
            Ok(Ok(bytes)) if bytes.len() as u64 > MAX_RECIPE_BYTES => Err(too_big(bytes.len() as u64)),
            Ok(Ok(bytes)) if pin.is_some_and(|p| !p.eq_ignore_ascii_case(&sha256_hex(&bytes))) => Ok((bytes, false)),
            Ok(Ok(bytes)) => {
                if let Err(e) = storage.cache().put(&uri, &bytes, None) {
                    tracing::warn!(uri, error = %e, "cannot cache the remote recipe; it will need the server next time");
                }
                Ok((bytes, false))
            }
            Ok(Err(msg)) => Err(msg),
            Err(e) if e.is_outage() => match storage.cache().get(&uri) {
                Some((path, meta)) => {
                    tracing::warn!(uri, sha256 = meta.sha256, error = %e, "server unreachable; using the cached copy of the remote recipe");
                    let bytes = read_bounded(&path)?;
                    Ok((bytes, true))
                }
                None => Err(format!("{e}; no cached copy either (a remote base is cached the first time it is read)")),
            },
            Err(e) => Err(e.to_string()),
        }
    }
}

fn too_big(n: u64) -> String {
    format!("{n} bytes, larger than {} MiB, the most a recipe may be", MAX_RECIPE_BYTES >> 20)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RECIPE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("reading the cached copy {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_RECIPE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The hf-hub cache: `HF_HUB_CACHE`, else hf-hub's own default (`HF_HOME/hub`, `~/.cache/huggingface/hub`).
fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => hf_hub::Cache::new(PathBuf::from(p)),
        _ => hf_hub::Cache::from_env(),
    }
}

fn hf_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Whether the content behind `uri` can never change: an `hf://` URI at a full commit hash.
pub fn is_immutable_uri(uri: &str) -> bool {
    matches!(RemoteRef::parse(uri), Ok(RemoteRef { store: Store::Hf { revision, .. }, .. }) if is_commit(&revision))
}

/// A full commit hash: the revision can never move, so a cached copy is final.
fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A file of an HF repository: the cached copy for a commit revision or with `HF_HUB_OFFLINE`; else
/// downloaded (a branch may have moved), falling back to the cached copy when the hub cannot be reached.
fn fetch_hf(repo: &str, revision: &str, file: &str, retries: usize) -> Result<(Vec<u8>, bool), String> {
    let hf_repo = hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, revision.to_string());
    let cache = hub_cache();
    let cached = cache.repo(hf_repo.clone()).get(file);
    if let Some(p) = &cached
        && (is_commit(revision) || hf_offline())
    {
        return Ok((read_bounded(p)?, false));
    }
    if hf_offline() {
        return Err(format!("not in the local HF cache ({}) and HF_HUB_OFFLINE is set", cache.path().display()));
    }
    let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(false).with_retries(retries);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        b = b.with_endpoint(endpoint);
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        b = b.with_token(Some(token));
    }
    let downloaded = b.build().map_err(|e| e.to_string()).and_then(|api| api.repo(hf_repo).download(file).map_err(|e| e.to_string()));
    match downloaded {
        Ok(p) => Ok((read_bounded(&p)?, false)),
        Err(e) => match cached {
            Some(p) => {
                tracing::warn!(repo, revision, file, error = %e, "Hugging Face Hub unreachable; using the cached copy of the remote recipe");
                Ok((read_bounded(&p)?, true))
            }
            None => Err(format!("{e} (check the network, HF_ENDPOINT, and HF_TOKEN for private repositories; or set HF_HUB_CACHE to a cache holding the file)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_uris() {
        for u in ["s3://team/recipes/base.toml", "https://h:8080/r/x.toml", "hf://owner/repo@v1.0/recipes/base.toml", "hf://gpt2@main/a.toml"] {
            assert_eq!(RemoteRef::parse(u).unwrap().uri(), u);
        }
        let hf = RemoteRef::parse("hf://owner/repo@0123456789abcdef0123456789abcdef01234567/r/b.toml").unwrap();
        assert_eq!(hf.store, Store::Hf { repo: "owner/repo".into(), revision: "0123456789abcdef0123456789abcdef01234567".into() });
        for (bad, why) in [
            ("hf://owner/repo/base.toml", "needs a revision"),
            ("hf://owner/repo@/base.toml", "empty revision"),
            ("hf://a/b/c@main/x.toml", "expected hf://"),
            ("s3://bucket", "names no file"),
            ("s3:///x.toml", "needs a bucket"),
            ("https://h/a/../b.toml", "`..`"),
        ] {
            let e = RemoteRef::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn relative_entries_stay_below_the_root() {
        let root = RemoteRef::parse("s3://team/recipes/base.toml").unwrap();
        let enc = root.resolve("parts/enc.toml").unwrap();
        assert_eq!(enc.uri(), "s3://team/recipes/parts/enc.toml");
        // From a nested file, `..` may climb back to the root, not above it.
        assert_eq!(enc.resolve("../sched.toml").unwrap().uri(), "s3://team/recipes/sched.toml");
        assert!(enc.resolve("../../x.toml").unwrap_err().contains("leaves the base's root s3://team/recipes"));
        assert!(root.resolve("../x.toml").unwrap_err().contains("leaves the base's root"));
        for local in ["/etc/passwd", "file:///etc/x.toml", "~/x.toml", "C:\\x.toml"] {
            assert!(root.resolve(local).unwrap_err().contains("local path"), "{local}");
        }
        assert!(root.resolve("gs://b/x.toml").unwrap_err().contains("unsupported scheme"));
        // An absolute remote URI starts a new root.
        assert_eq!(root.resolve("https://other/x/y.toml").unwrap().uri(), "https://other/x/y.toml");
        assert!(is_immutable_uri("hf://o/r@0123456789abcdef0123456789abcdef01234567/a.toml"));
        assert!(!is_immutable_uri("hf://o/r@main/a.toml") && !is_immutable_uri("s3://b/a.toml"));
        let hf = RemoteRef::parse("hf://o/r@main/recipes/a.toml").unwrap();
        assert_eq!(hf.resolve("b.toml").unwrap().uri(), "hf://o/r@main/recipes/b.toml");
    }
}
