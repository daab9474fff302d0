//! One sample of a dataset, whatever its source.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub split: String,
    /// Local path of the media file (remote URIs are fetched into the cache first).
    pub media: PathBuf,
    pub transcript: Option<String>,
    pub label: Option<String>,
    /// Coarse description of the cues (stage-1 `description` task).
    pub description: Option<String>,
    /// Fine reasoning ending in the label (stage-2 `reason` task).
    pub reasoning: Option<String>,
}
