//! Dataset cards (`datasets/<name>.toml`): which source format reads the data, where it lives, its labels.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetCard {
    pub name: String,
    /// Source format from the registry (`synth`, ...).
    pub source: String,
    #[serde(default)]
    pub description: String,
    /// Root URI of the data (`file://`, a path, `s3://...`); empty for generated data.
    #[serde(default)]
    pub root: String,
    /// Label set, in the order metrics report them.
    pub labels: Vec<String>,
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// Samples per split where the card knows them, e.g. `{ train = 28618 }`: plans (`run --dry-run`)
    /// turn `epochs` into steps with them, without reading the data. A split not listed is unknown.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub num_samples: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub licence: String,
    #[serde(default)]
    pub citation: String,
}

fn default_splits() -> Vec<String> {
    vec!["train".into(), "val".into(), "test".into()]
}
