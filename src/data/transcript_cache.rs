//! Speech-to-text transcripts on disk, like the feature cache: keyed by the speech model's fingerprint
//! and the media file's content, so a clip is transcribed once per model whatever its path.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub struct TranscriptCache {
    dir: PathBuf,
}

impl TranscriptCache {
    /// Under `<cache_root>/transcripts/`.
    pub fn new(cache_root: &Path) -> Self {
        Self::named(cache_root, "transcripts")
    }

    /// The same store for other derived texts of a clip, under `<cache_root>/<folder>/`.
    pub fn named(cache_root: &Path, folder: &str) -> Self {
        Self { dir: cache_root.join(folder) }
    }

    fn path(&self, key: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        self.dir.join(&h[..2]).join(format!("{h}.txt"))
    }

    /// The stored transcript of `key` (model fingerprint and media hash), if any.
    pub fn get(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.path(key)).ok()
    }

    /// Stores a transcript; a failure to write only costs a later recomputation (logged).
    pub fn put(&self, key: &str, text: &str) {
        let path = self.path(key);
        let written = path.parent().map(std::fs::create_dir_all).transpose().map_err(|e| e.to_string()).and_then(|_| crate::storage::write_atomic(&path, text.as_bytes()).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "transcript not cached");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transcripts_round_trip_by_key() {
        let d = tempfile::tempdir().unwrap();
        let c = super::TranscriptCache::new(d.path());
        assert_eq!(c.get("m:abc"), None);
        c.put("m:abc", "ask not");
        c.put("m:abd", "");
        assert_eq!(c.get("m:abc").as_deref(), Some("ask not"));
        assert_eq!(c.get("m:abd").as_deref(), Some(""));
    }
}
