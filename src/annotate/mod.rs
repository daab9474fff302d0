//! `emollama annotate`: MERR-style pseudo-labels for a dataset's clips with a recipe's model (the zero-shot
//! one: `recipes/zero_shot.toml`). Per clip, through `predict`'s pipeline: the face and voice cues, the
//! transcript (given, or speech-to-text), the class scores (label and confidence), the generated reasoning
//! and a coarse caption. Output directory:
//!
//! - `manifest.jsonl`: one line per annotated clip, in the `jsonl` source's format (`id`, `media`, `split`,
//!   `label`, `description` = the caption, `reasoning`, `transcript`) plus what a person checks it by:
//!   `confidence`, `scores`, `cues`, `transcript_source`, `source_label` (the source's own label, if any);
//! - `media/<split>/<id>.<ext>`: the clips (hard links where possible), so the directory is a dataset;
//! - `<name>.toml`: its dataset card (copy it into `datasets/` to train on it);
//! - `errors.jsonl`: the clips that failed and why (retried by the next run);
//! - `annotate.json`: the model's fingerprint and the source; a rerun resumes only with the same ones.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::Sample;
use crate::predict::inputs::Clip;
use crate::predict::model::PredictModel;
use crate::predict::{ClipOptions, PredictOptions, Predictor};
use crate::recipe::Annotate;

#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("`{path}`: {detail}")]
    Io { path: String, detail: String },
    #[error("{0}")]
    Setup(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> AnnotateError {
    AnnotateError::Io { path: path.display().to_string(), detail: e.to_string() }
}

/// One line of `manifest.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct AnnotationLine {
    pub id: String,
    /// Relative to the output directory.
    pub media: String,
    pub split: String,
    pub label: String,
    /// The label's probability among the classes.
    pub confidence: f64,
    /// The coarse caption.
    pub description: String,
    pub reasoning: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    pub transcript_source: Option<crate::predict::output::TranscriptSource>,
    pub scores: BTreeMap<String, f64>,
    pub cues: Option<crate::data::cues::ClipCues>,
    /// The source dataset's label of the clip, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_label: Option<String>,
    /// The source's media location and split.
    pub source_media: String,
    pub source_split: String,
}

/// What a run of `annotate` did.
#[derive(Debug, Default)]
pub struct AnnotateSummary {
    pub clips: usize,
    pub annotated: usize,
    pub resumed: usize,
    pub failed: Vec<(String, String)>,
    pub labels: BTreeMap<String, usize>,
    /// Against the source's labels, over every annotated clip that has one (this run's and earlier).
    pub agreement: Option<crate::eval::metrics::Report>,
    pub card: PathBuf,
    pub seconds: f64,
}

impl AnnotateSummary {
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(vec!["annotate", ""]);
        t.add_row(vec!["clips".to_string(), self.clips.to_string()]);
        t.add_row(vec!["annotated now".to_string(), self.annotated.to_string()]);
        t.add_row(vec!["annotated before (kept)".to_string(), self.resumed.to_string()]);
        t.add_row(vec!["failed".to_string(), self.failed.len().to_string()]);
        t.add_row(vec!["labels".to_string(), self.labels.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ")]);
        if let Some(r) = &self.agreement {
            t.add_row(vec!["vs the source's labels".to_string(), format!("n {}, accuracy {:.3}, weighted F1 {:.3}", r.n, r.accuracy, r.weighted_f1)]);
        }
        t.add_row(vec!["card".to_string(), self.card.display().to_string()]);
        t.add_row(vec!["time".to_string(), format!("{:.1} s", self.seconds)]);
        let mut out = t.to_string();
        for (id, why) in &self.failed {
            out.push_str(&format!("\nfailed: {id}: {why}"));
        }
        out
    }
}

/// The clips of `settings.splits` of the recipe's dataset, at most `settings.limit` per split.
pub fn source_samples(model: &PredictModel, settings: &Annotate, show_progress: bool) -> Result<Vec<Sample>, AnnotateError> {
    let r = model.recipe();
    let (_, card) = model.registry.dataset(&r.data.dataset).map_err(|e| AnnotateError::Setup(e.to_string()))?;
    let splits: Vec<String> = if settings.splits.is_empty() { card.splits.clone() } else { settings.splits.clone() };
    if let Some(bad) = splits.iter().find(|s| !card.splits.contains(s)) {
        return Err(AnnotateError::Setup(format!("annotate.splits: dataset `{}` has no split `{bad}` (splits: {})", card.name, card.splits.join(", "))));
    }
    let cache = crate::storage::cache_root(&r.runtime.cache_dir);
    let storage = crate::storage::Storage::new(r.storage.clone(), &cache).map_err(|e| AnnotateError::Setup(e.to_string()))?;
    let wanted = splits.iter().map(|s| (r.data.dataset.clone(), s.clone())).collect();
    let (all, _) = crate::run::data::load_splits(r, &model.registry, &wanted, &storage, &cache, show_progress).map_err(|e| AnnotateError::Setup(e.to_string()))?;
    let mut out = Vec::new();
    for split in &splits {
        let of_split = all.iter().filter(|s| &s.split == split).cloned();
        out.extend(if settings.limit > 0 { of_split.take(settings.limit).collect::<Vec<_>>() } else { of_split.collect() });
    }
    Ok(out)
}

/// The run's identity in `annotate.json`: a rerun resumes only with the same model and source.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Identity {
    model: String,
    fingerprint: String,
    dataset: String,
    splits: Vec<String>,
}

/// Annotates `samples` into `out` (see the module docs); clips already in its manifest are kept.
pub fn annotate(model: &PredictModel, samples: &[Sample], settings: &Annotate, out: &Path, opts: &PredictOptions) -> Result<AnnotateSummary, AnnotateError> {
    let t0 = std::time::Instant::now();
    let r = model.recipe();
    std::fs::create_dir_all(out.join("media")).map_err(|e| io(out, e))?;
    let out = std::fs::canonicalize(out).map_err(|e| io(out, e))?;
    let split_of = |s: &Sample| if settings.split_as.is_empty() { s.split.clone() } else { settings.split_as.clone() };
    let splits: Vec<String> = samples.iter().map(split_of).collect::<BTreeSet<_>>().into_iter().collect();
    let identity = Identity { model: model.described.clone(), fingerprint: model.fingerprint.clone(), dataset: r.data.dataset.clone(), splits: splits.clone() };
    let id_file = out.join("annotate.json");
    if let Ok(text) = std::fs::read_to_string(&id_file) {
        let before: Identity = serde_json::from_str(&text).map_err(|e| io(&id_file, format!("not an annotate.json: {e}")))?;
        if before.fingerprint != identity.fingerprint || before.dataset != identity.dataset {
            return Err(AnnotateError::Setup(format!(
                "`{}` holds annotations of `{}` by another model or settings ({}): choose a new output directory (--out), or remove it to start over",
                out.display(),
                before.dataset,
                before.model
            )));
        }
    }
    std::fs::write(&id_file, serde_json::to_vec_pretty(&identity).map_err(|e| io(&id_file, e))?).map_err(|e| io(&id_file, e))?;

    let manifest = out.join("manifest.jsonl");
    let mut done: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(&manifest) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // A line cut short by an interruption is annotated again.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                let key = (v["split"].as_str().unwrap_or("").to_string(), v["id"].as_str().unwrap_or("").to_string());
                done.insert(key, v);
            }
        }
    }
    // Rewritten without a torn last line; finished lines stay.
    let mut lines: Vec<String> = done.values().map(|v| v.to_string()).collect();
    let mut sink = std::fs::File::create(&manifest).map_err(|e| io(&manifest, e))?;
    for l in &lines {
        writeln!(sink, "{l}").map_err(|e| io(&manifest, e))?;
    }
    let errors_file = out.join("errors.jsonl");
    let mut errors = std::fs::File::create(&errors_file).map_err(|e| io(&errors_file, e))?;

    let predictor = Predictor::new(model, opts).map_err(|e| AnnotateError::Setup(e.to_string()))?;
    let storage = crate::storage::Storage::new(r.storage.clone(), &crate::storage::cache_root(&r.runtime.cache_dir)).map_err(|e| AnnotateError::Setup(e.to_string()))?;
    let mut summary = AnnotateSummary { clips: samples.len(), ..Default::default() };
    let bar = crate::progress::bar(samples.len() as u64, "annotate", opts.show_progress);
    for s in samples {
        bar.inc(1);
        if done.contains_key(&(split_of(s), s.id.clone())) {
            summary.resumed += 1;
            continue;
        }
        let clip = Clip { id: s.id.clone(), media: s.media.clone(), transcript: s.transcript.clone() };
        let line = predictor.predict_clip(&clip, ClipOptions { check_extension: true, contact_sheet: false }, &mut |_| true);
        let result = if line.ok { to_annotation(s, &split_of(s), line, &out, &storage) } else { Err(line.error.unwrap_or_else(|| "failed".into())) };
        match result {
            Ok(a) => {
                *summary.labels.entry(a.label.clone()).or_default() += 1;
                let text = serde_json::to_string(&a).map_err(|e| io(&manifest, e))?;
                writeln!(sink, "{text}").and_then(|_| sink.flush()).map_err(|e| io(&manifest, e))?;
                lines.push(text);
                summary.annotated += 1;
            }
            Err(e) => {
                tracing::warn!(clip = %s.id, error = %e, "clip not annotated");
                let text = serde_json::json!({ "id": s.id, "split": s.split, "media": s.media.to_string(), "error": e });
                writeln!(errors, "{text}").and_then(|_| errors.flush()).map_err(|e| io(&errors_file, e))?;
                summary.failed.push((s.id.clone(), e));
            }
        }
    }
    bar.finish_and_clear();
    summary.agreement = agreement(&lines, &model.labels);
    summary.card = write_card(model, settings, &out, &splits)?;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// The manifest line of a predicted clip; its media linked (else copied) under `out/media/<split>/`.
fn to_annotation(s: &Sample, split: &str, line: crate::predict::output::PredictionLine, out: &Path, storage: &crate::storage::Storage) -> Result<AnnotationLine, String> {
    let label = line.label.ok_or("no label")?;
    let scores = line.scores.unwrap_or_default();
    let local = storage.local(&s.media).map_err(|e| format!("fetching: {e}"))?;
    let ext = local.extension().and_then(|e| e.to_str()).unwrap_or("mp4");
    // The id as a file name: path separators and leading dots replaced.
    let stem: String = s.id.chars().map(|c| if c == '/' || c == '\\' { '_' } else { c }).collect::<String>().trim_start_matches('.').to_string();
    let rel = format!("media/{split}/{stem}.{ext}");
    let target = out.join(&rel);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if !target.is_file() && std::fs::hard_link(&local, &target).is_err() {
        std::fs::copy(&local, &target).map_err(|e| format!("copying the clip to {}: {e}", target.display()))?;
    }
    Ok(AnnotationLine {
        id: s.id.clone(),
        media: rel,
        split: split.to_string(),
        confidence: scores.get(&label).copied().unwrap_or(0.0),
        label,
        description: line.caption.unwrap_or_default(),
        reasoning: line.reasoning.unwrap_or_default(),
        transcript: line.transcript,
        transcript_source: line.transcript_source,
        scores,
        cues: line.cues,
        source_label: s.label.clone(),
        source_media: s.media.to_string(),
        source_split: s.split.clone(),
    })
}

/// The pseudo-labels against the source's labels (every manifest line that has both).
fn agreement(lines: &[String], labels: &[String]) -> Option<crate::eval::metrics::Report> {
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if let (Some(t), Some(p)) = (v["source_label"].as_str(), v["label"].as_str()) {
            truth.push(t.to_string());
            pred.push(p.to_string());
        }
    }
    if truth.is_empty() {
        return None;
    }
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    Some(crate::eval::metrics::classification_report(&truth, &pred, &labels))
}

/// `<out>/<name>.toml`: a `jsonl` card over the output directory, with the source's labels.
fn write_card(model: &PredictModel, settings: &Annotate, out: &Path, splits: &[String]) -> Result<PathBuf, AnnotateError> {
    let r = model.recipe();
    let (_, source) = model.registry.dataset(&r.data.dataset).map_err(|e| AnnotateError::Setup(e.to_string()))?;
    let name = if settings.name.is_empty() { format!("{}-annotated", source.name) } else { settings.name.clone() };
    let card = crate::data::DatasetCard {
        name: name.clone(),
        source: "jsonl".into(),
        description: format!("Pseudo-labels of `{}` ({}) by `emollama annotate` with {}: cues, caption, reasoning, label, confidence", source.name, splits.join(", "), model.described),
        root: out.display().to_string(),
        labels: source.labels.clone(),
        label_map: Default::default(),
        splits: splits.to_vec(),
        layout: crate::data::card::Layout { splits: [("all".to_string(), "manifest.jsonl".to_string())].into_iter().collect(), ..Default::default() },
        num_samples: Default::default(),
        licence: format!("Derived from `{}`, whose terms apply: {}", source.name, if source.licence.is_empty() { "see its card" } else { &source.licence }),
        citation: source.citation.clone(),
    };
    let path = out.join(format!("{name}.toml"));
    let text = toml::to_string(&card).map_err(|e| io(&path, e))?;
    let header = format!("# Written by `emollama annotate`; copy into the project's datasets/ to train on it (`data.dataset = \"{name}\"`).\n");
    std::fs::write(&path, format!("{header}{text}")).map_err(|e| io(&path, e))?;
    Ok(path)
}
