//! Sources: a dataset card's `source` name → the code that lists its samples.

use std::path::Path;

use super::synth::{self, SynthConfig};
use super::{DatasetCard, Sample};

pub const SOURCES: [&str; 1] = ["synth"];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("dataset `{dataset}`: unknown source `{source_name}` (known: {known})")]
    Unknown { dataset: String, source_name: String, known: String },
    #[error("dataset `{dataset}`: {source}")]
    Synth { dataset: String, source: synth::SynthError },
}

/// Lists all samples of the dataset (every split).
pub fn load_samples(card: &DatasetCard, synth_cfg: &SynthConfig, cache_root: &Path, show_progress: bool) -> Result<Vec<Sample>, SourceError> {
    match card.source.as_str() {
        "synth" => {
            let ds = synth::generate(synth_cfg, cache_root, show_progress)
                .map_err(|source| SourceError::Synth { dataset: card.name.clone(), source })?;
            Ok(ds
                .items
                .iter()
                .map(|it| Sample {
                    id: it.id.clone(),
                    split: it.split.clone(),
                    media: ds.dir.join(&it.file),
                    transcript: Some(it.transcript.clone()),
                    label: Some(it.label.clone()),
                    description: Some(it.description.clone()),
                    reasoning: Some(it.reasoning.clone()),
                })
                .collect())
        }
        other => Err(SourceError::Unknown { dataset: card.name.clone(), source_name: other.to_string(), known: SOURCES.join(", ") }),
    }
}
