//! [`DatasetFiles`] over [`Storage`]: what source parsers read when a dataset root is remote.

use std::sync::{Arc, Mutex};

use super::{DatasetFiles, LocalFiles, SourceError};
use crate::storage::{Location, Storage, StorageError};

/// A dataset root read through storage (S3, HTTP). Listings are kept: sources list a folder once.
pub struct StoreFiles {
    storage: Arc<Storage>,
    root: Location,
    listing: Mutex<Option<Vec<String>>>,
}

impl StoreFiles {
    pub fn new(storage: Arc<Storage>, root: Location) -> Self {
        StoreFiles { storage, root, listing: Mutex::new(None) }
    }
}

/// The files below `root`: std::fs for a local root (with the symlink check), storage otherwise.
pub fn dataset_files(storage: &Arc<Storage>, root: &Location) -> Box<dyn DatasetFiles> {
    match root {
        Location::Local(dir) => Box::new(LocalFiles::new(dir.clone())),
        remote => Box::new(StoreFiles::new(storage.clone(), remote.clone())),
    }
}

fn source_err(e: StorageError) -> SourceError {
    // A storage error already names its URI.
    SourceError::Other(e.to_string())
}

impl DatasetFiles for StoreFiles {
    fn root(&self) -> &Location {
        &self.root
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, SourceError> {
        let loc = self.locate(rel)?;
        self.storage.read(&loc).map_err(source_err)
    }

    fn exists(&self, rel: &str) -> Result<bool, SourceError> {
        let loc = self.locate(rel)?;
        Ok(self.storage.size(&loc).map_err(source_err)?.is_some())
    }

    fn list(&self, rel_dir: &str) -> Result<Vec<String>, SourceError> {
        // One listing of the whole root, filtered per folder.
        let mut cached = self.listing.lock().map_err(|_| SourceError::Other("listing lock poisoned".into()))?;
        if cached.is_none() {
            let root = self.root.to_string();
            let all = self.storage.list(&self.root).map_err(source_err)?;
            *cached = Some(all.iter().filter_map(|e| e.location.to_string().strip_prefix(&root).map(|r| r.trim_start_matches('/').to_string())).collect());
        }
        let dir = rel_dir.trim_matches('/');
        Ok(cached.as_ref().map(|all| all.iter().filter(|r| dir.is_empty() || r.starts_with(&format!("{dir}/"))).cloned().collect()).unwrap_or_default())
    }
}
