//! One sample of a dataset, whatever its source.

use serde::{Deserialize, Serialize};

use crate::storage::Location;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub split: String,
    /// The media file (local, or remote and fetched through the read-through cache when used).
    pub media: Location,
    pub transcript: Option<String>,
    /// Discrete label, one of the card's labels.
    pub label: Option<String>,
    /// Coarse description of the cues (stage-1 `description` task; MERR coarse `caption`, AffectGPT `reason`).
    pub description: Option<String>,
    /// Fine reasoning ending in the label (stage-2 `reason` task; MERR fine `smp_reason_caption`).
    pub reasoning: Option<String>,
    /// Continuous valence (MER2023: [-5, 5]) where the source has it.
    #[serde(default)]
    pub valence: Option<f32>,
    /// Open-vocabulary labels (MER-OV / MER-Caption `openset`), lower-case.
    #[serde(default)]
    pub openset: Vec<String>,
    /// The clip's cues in words ([`super::cues`]), filled in by runs with `[prompt] cues = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cues: Option<String>,
}

impl Sample {
    /// A clip with no labels or texts (what `predict` and `annotate` start from).
    pub fn media_only(id: &str, split: &str, media: Location) -> Self {
        Self { id: id.to_string(), split: split.to_string(), media, transcript: None, label: None, description: None, reasoning: None, valence: None, openset: Vec::new(), cues: None }
    }
}
