//! Dataset cards (`datasets/<name>.toml`): which source format reads the data, where it lives, its labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetCard {
    pub name: String,
    /// Source format from the registry (`synth`, `merr`, `mer2023`, ...).
    pub source: String,
    #[serde(default)]
    pub description: String,
    /// Root URI of the data (`file://`, a path, `s3://...`, `http(s)://...`); empty for generated data.
    /// A recipe overrides it with `data.roots.<name>`.
    #[serde(default)]
    pub root: String,
    /// Label set, in the order metrics report them.
    pub labels: Vec<String>,
    /// Raw label in the files → card label (e.g. DFEW's `1` → `happy`, or MERR's `fear` → `neutral` for
    /// a 6-class view). Labels not in the map are used as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_map: BTreeMap<String, String>,
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// Where the source finds its files below `root`; each source has defaults.
    #[serde(default)]
    pub layout: Layout,
    /// Samples per split where the card knows them, e.g. `{ train = 28618 }`: plans (`run --dry-run`)
    /// turn `epochs` into steps with them, without reading the data. A split not listed is unknown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub num_samples: BTreeMap<String, u64>,
    #[serde(default)]
    pub licence: String,
    #[serde(default)]
    pub citation: String,
}

/// File layout below a dataset root. Paths are relative to the root (`..` and absolute paths rejected).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Media file of a sample, a pattern with `{id}` and `{split}` (e.g. `video/{id}.mp4`). An extension
    /// `.*` takes whichever media file of that name exists (the folder is listed once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    /// Per split: the file listing its samples (a `.txt` list, a label CSV, ... as the source reads).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub splits: BTreeMap<String, String>,
    /// Transcripts CSV (`name` + an English column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcripts: Option<String>,
    /// Per-sample annotation JSON (MERR `caption` / fine-grained records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<String>,
    /// Descriptions CSV (`name, reason`: MER-Caption(+)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptions: Option<String>,
    /// Open-vocabulary labels CSV (`name, openset` with list strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openset: Option<String>,
}

fn default_splits() -> Vec<String> {
    vec!["train".into(), "val".into(), "test".into()]
}

/// The label of `labels` a word names: the label itself, or through a small synonym table ("furious" →
/// angry, "fear" → worried, "surprised" → surprise), when the card has that label. Lower-case words.
pub fn canonical_label(word: &str, labels: &[&str]) -> Option<String> {
    if labels.contains(&word) {
        return Some(word.to_string());
    }
    let mapped = match word {
        "anger" | "angrily" | "furious" | "mad" | "annoyed" => "angry",
        "happiness" | "joy" | "joyful" | "glad" | "cheerful" => "happy",
        "sadness" | "sorrow" | "unhappy" | "upset" => "sad",
        "worry" | "anxious" | "anxiety" | "nervous" | "fear" | "fearful" | "afraid" | "scared" => "worried",
        "surprised" | "astonished" | "amazed" => "surprise",
        "calm" | "neutrality" => "neutral",
        _ => return None,
    };
    labels.contains(&mapped).then(|| mapped.to_string())
}
