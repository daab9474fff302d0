//! The feature cache for frozen encoders: one safetensors file per clip under
//! `<cache_dir>/features/<kk>/<key>.safetensors`, where the key is the sha256 of the encoders'
//! identity (manifests, weights, seed), the preprocessing (frame sampling, size, audio length, which
//! frame the global view sees) and the media file's content. Any change to one of them is a new key,
//! so a stale feature is never read; the same clip under the same settings is decoded and encoded once
//! across epochs, stages and runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

/// Bumped when the stored layout changes.
const FORMAT: &str = "emollama-features-v1";

#[derive(Debug, thiserror::Error)]
pub enum FeatureCacheError {
    #[error("feature cache: reading media `{path}` to hash it: {source}")]
    Media { path: String, source: std::io::Error },
    #[error("feature cache: writing `{path}`: {message} (check free space and permissions of runtime.cache_dir)")]
    Write { path: String, message: String },
}

pub struct FeatureCache {
    dir: PathBuf,
    /// sha256 of the encoder identity and preprocessing.
    settings: String,
    media_hashes: Mutex<HashMap<PathBuf, String>>,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

/// Hits and misses since the cache was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

impl FeatureCache {
    /// `settings`: every input of the features besides the media (encoder manifests and weights,
    /// preprocessing), as text; its hash is part of every key.
    pub fn new(cache_root: &Path, settings: &str) -> Self {
        let digest = hex::encode(Sha256::digest(format!("{FORMAT}\n{settings}").as_bytes()));
        Self {
            dir: cache_root.join("features"),
            settings: digest,
            media_hashes: Mutex::new(HashMap::new()),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// sha256 of a media file's bytes (once per file per run).
    fn media_hash(&self, media: &Path) -> Result<String, FeatureCacheError> {
        if let Some(h) = self.media_hashes.lock().ok().and_then(|m| m.get(media).cloned()) {
            return Ok(h);
        }
        let err = |source| FeatureCacheError::Media { path: media.display().to_string(), source };
        let mut f = std::fs::File::open(media).map_err(err)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(err)?;
        let h = hex::encode(h.finalize());
        if let Ok(mut m) = self.media_hashes.lock() {
            m.insert(media.to_path_buf(), h.clone());
        }
        Ok(h)
    }

    /// The cache key of a clip under these settings.
    pub fn key(&self, media: &Path) -> Result<String, FeatureCacheError> {
        Ok(self.key_of_hash(&self.media_hash(media)?))
    }

    /// The cache key of a clip whose content's sha256 is already known (as `predict` knows it).
    pub fn key_of_hash(&self, media_sha256: &str) -> String {
        hex::encode(Sha256::digest(format!("{}:{media_sha256}", self.settings).as_bytes()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.safetensors"))
    }

    /// The stored features of `key`, counting a hit or a miss. An unreadable file is a miss (and is
    /// written again).
    pub fn load(&self, key: &str, device: &Device) -> Option<HashMap<String, Tensor>> {
        let path = self.path(key);
        let found = path.exists().then(|| candle_core::safetensors::load(&path, device)).and_then(|r| match r {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unreadable cached features; recomputing");
                None
            }
        });
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Stores features atomically (temp file + rename: a reader never sees half a file).
    pub fn store(&self, key: &str, tensors: &HashMap<String, Tensor>) -> Result<(), FeatureCacheError> {
        let path = self.path(key);
        let werr = |message: String| FeatureCacheError::Write { path: path.display().to_string(), message };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| werr(e.to_string()))?;
        }
        crate::storage::write_atomic_with(&path, |tmp| candle_core::safetensors::save(tensors, tmp).map_err(std::io::Error::other)).map_err(|e| werr(e.source.to_string()))
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { hits: self.hits.load(Ordering::Relaxed), misses: self.misses.load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_settings_and_content_and_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("a.mp4");
        std::fs::write(&clip, b"clip bytes").unwrap();
        let a = FeatureCache::new(dir.path(), "enc=x;frames=8");
        let b = FeatureCache::new(dir.path(), "enc=x;frames=16");
        let k = a.key(&clip).unwrap();
        assert_ne!(k, b.key(&clip).unwrap());
        assert!(a.load(&k, &Device::Cpu).is_none());
        let t = HashMap::from([("audio".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())]);
        a.store(&k, &t).unwrap();
        assert_eq!(a.load(&k, &Device::Cpu).unwrap()["audio"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(a.stats(), CacheStats { hits: 1, misses: 1 });
        // New content, new key (a fresh cache: hashes are memoised per run).
        std::fs::write(&clip, b"other bytes").unwrap();
        assert_ne!(FeatureCache::new(dir.path(), "enc=x;frames=8").key(&clip).unwrap(), k);
    }
}
