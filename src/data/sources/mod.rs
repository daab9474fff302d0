//! Sources: a dataset card's `source` name → the parser that lists its samples from the files below the
//! card's root (local, S3 or HTTP, through [`DatasetFiles`]).

pub mod affectgpt;
pub mod dfew;
pub mod files;
pub mod folder;
pub mod jsonl;
pub mod mer;
pub mod merr;
pub mod store_files;
pub mod table;

use std::path::Path;

use super::synth::{self, SynthConfig};
use super::{DatasetCard, Sample};
pub use files::{DatasetFiles, LocalFiles};

/// Source formats this build reads.
pub const SOURCES: [&str; 8] = ["synth", "merr", "mer2023", "mer2024", "affectgpt", "dfew", "folder", "jsonl"];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("dataset `{dataset}`: unknown source `{source_name}` (known: {known})")]
    Unknown { dataset: String, source_name: String, known: String },
    #[error("dataset `{dataset}`: {inner}")]
    Synth { dataset: String, inner: synth::SynthError },
    #[error("dataset `{dataset}`: {inner}")]
    Dataset { dataset: String, inner: Box<SourceError> },
    #[error(transparent)]
    Location { source: crate::storage::LocationError },
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    /// A malformed row of a label/manifest file: names the file and the 1-based line.
    #[error("{file} line {line}: {message}")]
    Row { file: String, line: usize, message: String },
    #[error("{0}")]
    Other(String),
}

impl SourceError {
    pub fn row(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        SourceError::Row { file: file.into(), line, message: message.into() }
    }
}

/// Lists all samples of the dataset (every split the card's layout names). `files` reads below the
/// dataset's root; generated datasets (`synth` with an empty root) ignore it.
pub fn load_samples(card: &DatasetCard, files: Option<&dyn DatasetFiles>, synth_cfg: &SynthConfig, cache_root: &Path, show_progress: bool) -> Result<Vec<Sample>, SourceError> {
    let in_dataset = |source: SourceError| SourceError::Dataset { dataset: card.name.clone(), inner: Box::new(source) };
    match card.source.as_str() {
        "synth" if files.is_some() => files.map(read_synth_manifest).unwrap_or(Ok(Vec::new())).map_err(in_dataset),
        "synth" => {
            let ds = synth::generate(synth_cfg, cache_root, show_progress)
                .map_err(|inner| SourceError::Synth { dataset: card.name.clone(), inner })?;
            Ok(ds.items.iter().map(|it| synth_sample(it, ds.dir.join(&it.file).into())).collect())
        }
        "merr" | "mer2023" | "mer2024" | "affectgpt" | "dfew" | "folder" | "jsonl" => {
            let files = files.ok_or_else(|| in_dataset(SourceError::Other("no root".into())))?;
            let parse = match card.source.as_str() {
                "merr" => merr::load,
                "mer2023" => mer::load_mer2023,
                "mer2024" => mer::load_mer2024,
                "affectgpt" => affectgpt::load,
                "dfew" => dfew::load,
                "folder" => folder::load,
                _ => jsonl::load,
            };
            let samples = parse(card, files).map_err(in_dataset)?;
            tracing::info!(dataset = %card.name, samples = samples.len(), "samples listed");
            Ok(samples)
        }
        other => {
            Err(in_dataset(SourceError::Unknown { dataset: card.name.clone(), source_name: other.to_string(), known: SOURCES.join(", ") }))
        }
    }
}

fn synth_sample(it: &synth::SynthItem, media: crate::storage::Location) -> Sample {
    Sample {
        id: it.id.clone(),
        split: it.split.clone(),
        media,
        transcript: Some(it.transcript.clone()),
        label: Some(it.label.clone()),
        description: Some(it.description.clone()),
        reasoning: Some(it.reasoning.clone()),
        valence: None,
        openset: Vec::new(),
        cues: None,
    }
}

/// A generated dataset copied elsewhere (e.g. to S3): its `manifest.jsonl`, clips relative to it.
fn read_synth_manifest(files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let bytes = files.read(synth::MANIFEST)?;
    let file = files.describe(synth::MANIFEST);
    let text = String::from_utf8(bytes).map_err(|e| SourceError::Read { file: file.clone(), message: format!("not UTF-8: {e}") })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let item: synth::SynthItem = serde_json::from_str(line).map_err(|e| SourceError::row(&file, i + 1, e.to_string()))?;
        let media = files.locate(&item.file).map_err(|e| SourceError::row(&file, i + 1, e.to_string()))?;
        out.push(synth_sample(&item, media));
    }
    Ok(out)
}
