//! Local read-through cache of remote objects: one file per URI, a sidecar with its size and sha256
//! (checked before a cached copy is trusted), least-recently-used eviction above a size bound.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the sidecar `<hash>.json` records of a cached object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedMeta {
    pub uri: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub etag: Option<String>,
}

#[derive(Debug)]
pub struct ReadCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Entries whose content was hashed and matched in this process (hash each file once).
    verified: Mutex<HashSet<String>>,
    /// Bytes in the cache, once scanned.
    total: Mutex<Option<u64>>,
}

impl ReadCache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        ReadCache { dir, max_bytes, verified: Mutex::new(HashSet::new()), total: Mutex::new(None) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(uri: &str) -> String {
        hex::encode(Sha256::digest(uri.as_bytes()))
    }

    /// Data file of `uri` (keeps the extension: ffmpeg and humans like it).
    pub fn path(&self, uri: &str) -> PathBuf {
        let key = Self::key(uri);
        let ext = Path::new(uri.rsplit('/').next().unwrap_or_default()).extension().and_then(|e| e.to_str()).filter(|e| e.len() <= 8);
        let name = match ext {
            Some(e) => format!("{key}.{e}"),
            None => key.clone(),
        };
        self.dir.join(&key[..2]).join(name)
    }

    fn meta_path(&self, uri: &str) -> PathBuf {
        let key = Self::key(uri);
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The cached copy of `uri` if it is complete and its content matches the recorded sha256; a
    /// damaged copy is removed (and will be fetched again).
    pub fn get(&self, uri: &str) -> Option<(PathBuf, CachedMeta)> {
        let path = self.path(uri);
        let meta: CachedMeta = serde_json::from_slice(&fs::read(self.meta_path(uri)).ok()?).ok()?;
        let len = fs::metadata(&path).ok()?.len();
        let known = self.verified.lock().map(|v| v.contains(uri)).unwrap_or(false);
        let ok = meta.uri == uri && len == meta.size && (known || sha256_file(&path).ok().as_deref() == Some(meta.sha256.as_str()));
        if !ok {
            tracing::warn!(uri, path = %path.display(), "cached copy does not match its checksum; fetching again");
            self.remove(uri);
            return None;
        }
        if let Ok(mut v) = self.verified.lock() {
            v.insert(uri.to_string());
        }
        // Mark as recently used for eviction.
        if let Ok(f) = fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some((path, meta))
    }

    /// Stores `bytes` as the content of `uri` (temp file, fsync, rename; the sidecar last), then evicts
    /// least-recently-used entries above the bound.
    pub fn put(&self, uri: &str, bytes: &[u8], etag: Option<String>) -> std::io::Result<PathBuf> {
        let path = self.path(uri);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent)?;
        let sha = hex::encode(Sha256::digest(bytes));
        let tmp = parent.join(format!(".{}.{}.{:?}.tmp", Self::key(uri), std::process::id(), std::thread::current().id()));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        let meta = CachedMeta { uri: uri.to_string(), size: bytes.len() as u64, sha256: sha, etag };
        let meta_tmp = tmp.with_extension("json.tmp");
        fs::write(&meta_tmp, serde_json::to_vec(&meta).unwrap_or_default())?;
        fs::rename(&meta_tmp, self.meta_path(uri))?;
        if let Ok(mut v) = self.verified.lock() {
            v.insert(uri.to_string());
        }
        self.account(bytes.len() as u64, &path);
        Ok(path)
    }

    pub fn remove(&self, uri: &str) {
        let path = self.path(uri);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let _ = fs::remove_file(self.meta_path(uri));
        let _ = fs::remove_file(&path);
        if let Ok(mut t) = self.total.lock()
            && let Some(t) = t.as_mut()
        {
            *t = t.saturating_sub(len);
        }
        if let Ok(mut v) = self.verified.lock() {
            v.remove(uri);
        }
    }

    /// Adds `added` bytes to the running total and evicts the oldest entries (not `keep`) while over.
    fn account(&self, added: u64, keep: &Path) {
        let Ok(mut total) = self.total.lock() else { return };
        let mut now = match *total {
            Some(t) => t + added,
            None => self.entries().iter().map(|e| e.1).sum(),
        };
        if now > self.max_bytes {
            let mut entries = self.entries();
            entries.sort_by_key(|e| e.2);
            for (path, len, _) in entries {
                if now <= self.max_bytes {
                    break;
                }
                if path == keep {
                    continue;
                }
                let _ = fs::remove_file(path.with_extension("json"));
                if fs::remove_file(&path).is_ok() {
                    now = now.saturating_sub(len);
                    tracing::debug!(path = %path.display(), "evicted from the object cache");
                }
            }
        }
        *total = Some(now);
    }

    /// (data file, size, last used) of every complete entry.
    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(&self.dir) else { return out };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else { continue };
            for f in files.flatten() {
                let p = f.path();
                let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if name.starts_with('.') || name.ends_with(".json") {
                    continue;
                }
                if let Ok(m) = f.metadata() {
                    out.push((p, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
        out
    }

    /// Bytes held (scans the directory).
    pub fn size(&self) -> u64 {
        self.entries().iter().map(|e| e.1).sum()
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_content_and_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::new(dir.path().to_path_buf(), 25);
        let a = cache.put("s3://b/a.mp4", &[1u8; 10], None).unwrap();
        assert!(a.to_string_lossy().ends_with(".mp4"));
        assert_eq!(cache.get("s3://b/a.mp4").unwrap().0, a);
        // A damaged copy (same size, other bytes) is not trusted by a new process.
        fs::write(&a, [2u8; 10]).unwrap();
        let fresh = ReadCache::new(dir.path().to_path_buf(), 25);
        assert!(fresh.get("s3://b/a.mp4").is_none());
        assert!(!a.exists());
        // LRU: b is touched after c, so c goes when d needs room.
        fresh.put("s3://b/b", &[3u8; 10], None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fresh.put("s3://b/c", &[4u8; 10], None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(fresh.get("s3://b/b").is_some());
        fresh.put("s3://b/d", &[5u8; 10], None).unwrap();
        assert!(fresh.get("s3://b/c").is_none());
        assert!(fresh.get("s3://b/b").is_some() && fresh.get("s3://b/d").is_some());
        assert!(fresh.size() <= 25);
    }
}
