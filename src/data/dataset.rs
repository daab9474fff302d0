//! Opening a dataset: its root (the card's, or the recipe's override) read through storage, and its samples.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::sources::{self, SourceError};
use super::synth::SynthConfig;
use super::{DatasetCard, Sample};
use crate::data::sources::store_files::dataset_files;
use crate::storage::{Location, Storage};

/// The root a dataset is read from: `roots[name]` (a recipe's `data.roots`), else the card's `root`
/// (a relative local path is relative to the card's folder). None: no root (generated data).
pub fn dataset_root(card: &DatasetCard, card_path: &Path, roots: &BTreeMap<String, String>) -> Result<Option<Location>, SourceError> {
    let loc_err = |source| SourceError::Dataset { dataset: card.name.clone(), inner: Box::new(SourceError::Location { source }) };
    if let Some(r) = roots.get(&card.name).filter(|r| !r.trim().is_empty()) {
        return Location::parse(r).map(Some).map_err(loc_err);
    }
    if card.root.trim().is_empty() {
        return Ok(None);
    }
    match Location::parse(&card.root).map_err(loc_err)? {
        Location::Local(p) if p.is_relative() => Ok(Some(Location::Local(card_path.parent().unwrap_or(Path::new(".")).join(p)))),
        other => Ok(Some(other)),
    }
}

/// Every sample of the dataset (all splits its layout names).
pub fn load_dataset(
    card: &DatasetCard,
    root: Option<&Location>,
    storage: &Arc<Storage>,
    synth: &SynthConfig,
    cache_root: &Path,
    show_progress: bool,
) -> Result<Vec<Sample>, SourceError> {
    let files = root.map(|r| dataset_files(storage, r));
    if files.is_none() && card.source != "synth" {
        return Err(SourceError::Dataset {
            dataset: card.name.clone(),
            inner: Box::new(SourceError::Other(format!(
                "no root: set `root` in the dataset card, or `data.roots.{0}` in the recipe (e.g. --set data.roots.{0}=s3://bucket/prefix)",
                card.name
            ))),
        });
    }
    tracing::info!(dataset = %card.name, root = %root.map(|r| r.to_string()).unwrap_or_else(|| "(generated)".into()), "reading dataset");
    sources::load_samples(card, files.as_deref(), synth, cache_root, show_progress)
}
