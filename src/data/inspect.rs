//! `emollama data ls|stat|pull|export`: look at a dataset through its card (and a recipe's overrides),
//! pre-fetch its remote media, and write the MER challenge submission CSV.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::dataset::{dataset_root, load_dataset};
use super::sources::SourceError;
use super::{DatasetCard, Sample};
use crate::registry::Registry;
use crate::storage::{Location, Storage, StorageConfig, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("dataset `{dataset}` has no split `{split}` (splits with samples: {known})")]
    Split { dataset: String, split: String, known: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// A dataset opened for inspection.
pub struct Opened {
    pub card: DatasetCard,
    pub root: Option<Location>,
    pub samples: Vec<Sample>,
    pub storage: Arc<Storage>,
}

/// Where to look: the recipe's storage options and roots (if any), and a root given on the command line.
pub struct OpenOptions<'a> {
    pub roots: BTreeMap<String, String>,
    pub root: Option<&'a str>,
    pub storage: StorageConfig,
    pub synth: super::synth::SynthConfig,
    pub cache_root: PathBuf,
    pub show_progress: bool,
}

/// The local folder holding a dataset's files: its local root, or the generated folder of a `synth`
/// dataset without a root. None for remote roots.
pub fn local_dir(o: &Opened, opts: &OpenOptions) -> Result<Option<PathBuf>, DataError> {
    match &o.root {
        Some(Location::Local(p)) => Ok(Some(p.clone())),
        Some(_) => Ok(None),
        None if o.card.source == "synth" => {
            let ds = super::synth::generate(&opts.synth, &opts.cache_root, false).map_err(|e| DataError::File { file: o.card.name.clone(), message: e.to_string() })?;
            Ok(Some(ds.dir))
        }
        None => Ok(None),
    }
}

/// Uploads a dataset's local folder to `dest` (e.g. `s3://bucket/prefix`); returns the files written.
pub fn push(o: &Opened, opts: &OpenOptions, dest: &Location) -> Result<usize, DataError> {
    let Some(dir) = local_dir(o, opts)? else {
        return Err(DataError::File { file: o.root.as_ref().map(|r| r.to_string()).unwrap_or_default(), message: "not a local dataset: push uploads a local copy".into() });
    };
    let bar = crate::progress::bar(0, "push", opts.show_progress);
    let n = o.storage.push_dir(&dir, dest, Some(&bar))?;
    bar.finish_and_clear();
    Ok(n)
}

pub fn open(registry: &Registry, name: &str, o: &OpenOptions) -> Result<Opened, DataError> {
    let (card_path, card) = registry.dataset(name)?;
    let mut roots = o.roots.clone();
    if let Some(r) = o.root {
        roots.insert(name.to_string(), r.to_string());
    }
    let root = dataset_root(card, card_path, &roots)?;
    let storage = Storage::new(o.storage.clone(), &o.cache_root)?;
    let samples = load_dataset(card, root.as_ref(), &storage, &o.synth, &o.cache_root, o.show_progress)?;
    Ok(Opened { card: card.clone(), root, samples, storage })
}

impl Opened {
    /// Samples of one split (all when None); an unknown split is an error listing the known ones.
    pub fn split(&self, split: Option<&str>) -> Result<Vec<&Sample>, DataError> {
        let Some(split) = split else { return Ok(self.samples.iter().collect()) };
        let out: Vec<&Sample> = self.samples.iter().filter(|s| s.split == split).collect();
        if out.is_empty() {
            let mut known: Vec<&str> = self.samples.iter().map(|s| s.split.as_str()).collect();
            known.dedup();
            known.sort();
            known.dedup();
            return Err(DataError::Split { dataset: self.card.name.clone(), split: split.to_string(), known: known.join(", ") });
        }
        Ok(out)
    }
}

/// What `data stat` reports per split.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SplitStat {
    pub split: String,
    pub samples: usize,
    pub labels: BTreeMap<String, usize>,
    pub unlabelled: usize,
    pub transcripts: usize,
    pub descriptions: usize,
    pub reasoning: usize,
    pub valence: usize,
    pub openset: usize,
    /// Media files found (by one listing of the root), and their bytes; None when not checked.
    pub media_found: Option<usize>,
    pub media_bytes: Option<u64>,
}

/// Per-split statistics; with `check_media`, which media files exist (one listing of the root).
pub fn stat(o: &Opened, check_media: bool) -> Result<Vec<SplitStat>, DataError> {
    let sizes: Option<HashMap<Location, u64>> = match (&o.root, check_media) {
        (Some(root), true) => Some(o.storage.list(root)?.into_iter().map(|e| (e.location, e.size)).collect()),
        (None, true) => Some(o.samples.iter().filter_map(|s| s.media.as_local().and_then(|p| std::fs::metadata(p).ok()).map(|m| (s.media.clone(), m.len()))).collect()),
        _ => None,
    };
    let mut by_split: BTreeMap<String, SplitStat> = BTreeMap::new();
    for s in &o.samples {
        let st = by_split.entry(s.split.clone()).or_insert_with(|| SplitStat { split: s.split.clone(), ..Default::default() });
        st.samples += 1;
        match &s.label {
            Some(l) => *st.labels.entry(l.clone()).or_default() += 1,
            None => st.unlabelled += 1,
        }
        st.transcripts += s.transcript.is_some() as usize;
        st.descriptions += s.description.is_some() as usize;
        st.reasoning += s.reasoning.is_some() as usize;
        st.valence += s.valence.is_some() as usize;
        st.openset += (!s.openset.is_empty()) as usize;
        if let Some(sizes) = &sizes {
            let size = sizes.get(&s.media);
            *st.media_found.get_or_insert(0) += size.is_some() as usize;
            *st.media_bytes.get_or_insert(0) += size.copied().unwrap_or(0);
        }
    }
    // Card split order first.
    let mut out: Vec<SplitStat> = Vec::new();
    for sp in &o.card.splits {
        if let Some(st) = by_split.remove(sp) {
            out.push(st);
        }
    }
    out.extend(by_split.into_values());
    Ok(out)
}

/// What `data pull` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullReport {
    pub samples: usize,
    /// Remote files now in the local cache (fetched or already there).
    pub cached: usize,
    /// Local media (nothing to fetch).
    pub local: usize,
    pub failed: Vec<(String, String)>,
    pub cache_dir: PathBuf,
}

/// Fetches the media of `samples` into the read-through cache, `storage.prefetch` at a time.
pub fn pull(o: &Opened, samples: &[&Sample], show_progress: bool) -> PullReport {
    let remote: Vec<&Sample> = samples.iter().copied().filter(|s| s.media.is_remote()).collect();
    let locs: Vec<Location> = remote.iter().map(|s| s.media.clone()).collect();
    let bar = crate::progress::bar(locs.len() as u64, "pull", show_progress);
    let results = o.storage.prefetch(&locs, Some(&bar));
    bar.finish_and_clear();
    let mut rep = PullReport { samples: samples.len(), local: samples.len() - remote.len(), cache_dir: o.storage.cache().dir().to_path_buf(), ..Default::default() };
    for (s, r) in remote.iter().zip(results) {
        match r {
            Ok(_) => rep.cached += 1,
            Err(e) => rep.failed.push((s.id.clone(), e.to_string())),
        }
    }
    rep
}

/// One row of the MER challenge submission / label CSV (`name, discrete, valence`).
#[derive(Debug, Clone, PartialEq)]
pub struct SubmissionRow {
    pub name: String,
    pub discrete: String,
    pub valence: Option<f32>,
}

/// Rows from a dataset's labels (samples without a label are left out).
pub fn rows_from_samples(samples: &[&Sample]) -> Vec<SubmissionRow> {
    samples.iter().filter_map(|s| s.label.as_ref().map(|l| SubmissionRow { name: s.id.clone(), discrete: l.clone(), valence: s.valence })).collect()
}

/// Rows from a run's `predictions.jsonl` (`id`, `prediction`, optional `valence`).
pub fn rows_from_predictions(path: &Path) -> Result<Vec<SubmissionRow>, DataError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::File { file: file.clone(), message: e.to_string() })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| SourceError::row(&file, i + 1, e.to_string()))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let name = field("id").ok_or_else(|| SourceError::row(&file, i + 1, "no `id`"))?;
        let discrete = field("prediction").ok_or_else(|| SourceError::row(&file, i + 1, "no `prediction`"))?;
        let valence = v.get("valence").and_then(|x| x.as_f64()).map(|x| x as f32);
        out.push(SubmissionRow { name, discrete, valence });
    }
    Ok(out)
}

/// The MER challenge CSV: header `name,discrete,valence`; an unknown valence is an empty cell.
pub fn submission_csv(rows: &[SubmissionRow]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(["name", "discrete", "valence"]);
    for r in rows {
        let _ = w.write_record([r.name.as_str(), r.discrete.as_str(), &r.valence.map(|v| v.to_string()).unwrap_or_default()]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_csv_quotes_and_leaves_unknown_valence_empty() {
        let rows = vec![
            SubmissionRow { name: "sample_00000001".into(), discrete: "happy".into(), valence: Some(1.25) },
            SubmissionRow { name: "a,b".into(), discrete: "sad".into(), valence: None },
        ];
        assert_eq!(submission_csv(&rows), "name,discrete,valence\nsample_00000001,happy,1.25\n\"a,b\",sad,\n");
    }

    #[test]
    fn predictions_rows_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("predictions.jsonl");
        std::fs::write(&p, "{\"id\":\"x\",\"label\":\"sad\",\"prediction\":\"happy\",\"unparsed\":false,\"text\":\"t\"}\n\n{\"id\":\"y\"}\n").unwrap();
        let e = rows_from_predictions(&p).unwrap_err().to_string();
        assert!(e.contains("predictions.jsonl line 3") && e.contains("prediction"), "{e}");
        std::fs::write(&p, "{\"id\":\"x\",\"prediction\":\"happy\",\"valence\":-2.5}\n").unwrap();
        assert_eq!(rows_from_predictions(&p).unwrap(), vec![SubmissionRow { name: "x".into(), discrete: "happy".into(), valence: Some(-2.5) }]);
    }
}
