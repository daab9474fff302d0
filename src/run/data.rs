//! Phase 2 of a run: the data. Every dataset the recipe names, with the splits its stages, validation and
//! evaluation use, in one pool of samples; and how their media are decoded.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::RunError;
use crate::data::Sample;
use crate::data::loader::DecodeSpec;
use crate::registry::Registry;
use crate::storage::{Storage, cache_root};

/// The samples of a run and how to decode them.
pub struct RunData {
    /// Every loaded sample (all datasets and splits); indices refer to it.
    pub pool: Vec<Sample>,
    /// The dataset card name of each pool sample.
    pub pool_dataset: Vec<String>,
    /// The main dataset's label set.
    pub labels: Vec<String>,
    pub spec: DecodeSpec,
    /// emollama's cache directory (synthetic data, remote media, features).
    pub cache: PathBuf,
}

impl RunData {
    pub fn load(r: &crate::recipe::Recipe, registry: &Registry, threads: usize, show_progress: bool) -> Result<Self, RunError> {
        let (_, card) = registry.dataset(&r.data.dataset)?;
        let cache = cache_root(&r.runtime.cache_dir);
        let storage = Storage::new(r.storage.clone(), &cache)?;
        let (mut pool, mut pool_dataset) = load_splits(r, registry, &wanted_splits(r), &storage, &cache, show_progress)?;
        keep_only_evaluated(r, &mut pool, &mut pool_dataset);
        if r.prompt.transcript.asr() {
            transcribe_pool(&mut pool, &storage, &cache, r.data.on_error, show_progress)?;
        }
        if r.prompt.cues {
            describe_pool(&mut pool, r, &card.labels, &storage, &cache, show_progress)?;
        }
        let spec = decode_spec(r, storage, threads, show_progress)?;
        Ok(Self { pool, pool_dataset, labels: card.labels.clone(), spec, cache })
    }

    /// The pool indices of the main dataset's `split`.
    pub fn split_of(&self, r: &crate::recipe::Recipe, split: &str) -> Vec<usize> {
        (0..self.pool.len()).filter(|&i| self.pool_dataset[i] == r.data.dataset && self.pool[i].split == split).collect()
    }
}

/// The samples of the `wanted` (dataset, split) pairs, each with its dataset's card name, in card order.
pub fn load_splits(
    r: &crate::recipe::Recipe,
    registry: &Registry,
    wanted: &BTreeSet<(String, String)>,
    storage: &std::sync::Arc<Storage>,
    cache: &std::path::Path,
    show_progress: bool,
) -> Result<(Vec<Sample>, Vec<String>), RunError> {
    let mut pool: Vec<Sample> = Vec::new();
    let mut pool_dataset: Vec<String> = Vec::new();
    for name in wanted.iter().map(|(d, _)| d.clone()).collect::<BTreeSet<_>>() {
        let (card_path, c) = registry.dataset(&name)?;
        let root = crate::data::dataset::dataset_root(c, card_path, &r.data.roots)?;
        for s in crate::data::dataset::load_dataset(c, root.as_ref(), storage, &r.data.synth, cache, show_progress)? {
            if wanted.contains(&(name.clone(), s.split.clone())) {
                pool.push(s);
                pool_dataset.push(name.clone());
            }
        }
    }
    Ok((pool, pool_dataset))
}

/// `prompt.transcript = "asr"`: each sample's transcript becomes Whisper tiny.en's transcript of its
/// audio (cached by model and file content, so each clip is transcribed once). A clip whose audio cannot be
/// read is an error under `data.on_error = "fail"`, else it keeps no transcript (logged).
fn transcribe_pool(pool: &mut [Sample], storage: &Storage, cache: &std::path::Path, on_error: crate::recipe::OnError, show_progress: bool) -> Result<(), RunError> {
    let asr = crate::model::asr::Transcriber::load(&crate::model::asr::default_model_dir(), &candle_core::Device::Cpu)?;
    let transcripts = crate::data::transcript_cache::TranscriptCache::new(cache);
    let bar = crate::progress::bar(pool.len() as u64, "speech-to-text", show_progress);
    let mut fresh = 0;
    for s in pool.iter_mut() {
        let mut one = || -> Result<String, String> {
            let path = storage.local(&s.media).map_err(|e| e.to_string())?;
            let key = format!("{}:{}", asr.fingerprint(), crate::storage::cache::sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?);
            if let Some(t) = transcripts.get(&key) {
                return Ok(t);
            }
            let audio = crate::media::decode_audio(&path).map_err(|e| e.to_string())?;
            let text = asr.transcribe(&audio.samples).map_err(|e| e.to_string())?;
            transcripts.put(&key, &text);
            fresh += 1;
            Ok(text)
        };
        match one() {
            Ok(t) => s.transcript = Some(t).filter(|t| !t.is_empty()),
            Err(e) if on_error == crate::recipe::OnError::Skip => {
                tracing::warn!(sample = %s.id, error = %e, "no speech-to-text transcript");
                s.transcript = None;
            }
            Err(e) => return Err(RunError::Params(format!("speech-to-text of sample `{}` ({}): {e}", s.id, s.media))),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    tracing::info!(samples = pool.len(), transcribed = fresh, cached = pool.len() - fresh, "speech-to-text transcripts");
    Ok(())
}

/// The face front end the cues use: the recipe's `[front_end.face]`, else its defaults.
pub fn cue_front_end(r: &crate::recipe::Recipe) -> Result<crate::media::face::FaceFrontEnd, RunError> {
    let opts = r.front_end.face.clone().unwrap_or_default();
    Ok(crate::media::face::FaceFrontEnd::new(&opts)?)
}

/// `prompt.cues = true`: each sample's face and voice described in words ([`crate::data::cues`]), cached
/// by face settings and file content. A clip that cannot be read is an error under `data.on_error =
/// "fail"`, else it gets no cues (logged).
fn describe_pool(pool: &mut [Sample], r: &crate::recipe::Recipe, labels: &[String], storage: &Storage, cache: &std::path::Path, show_progress: bool) -> Result<(), RunError> {
    let fe = cue_front_end(r)?;
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let cues = crate::data::cues::CueCache::new(cache, &fe);
    let bar = crate::progress::bar(pool.len() as u64, "cues", show_progress);
    for s in pool.iter_mut() {
        let one = || -> Result<String, String> {
            let path = storage.local(&s.media).map_err(|e| e.to_string())?;
            let hash = crate::storage::cache::sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(cues.get_or_extract(&path, &hash, &fe)?.describe_for(&labels))
        };
        match one() {
            Ok(text) => s.cues = Some(text),
            Err(e) if r.data.on_error == crate::recipe::OnError::Skip => tracing::warn!(sample = %s.id, error = %e, "no cues"),
            Err(e) => return Err(RunError::Params(format!("cues of sample `{}` ({}): {e}", s.id, s.media))),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// How a recipe's clips are decoded (the face front end included), for any file: the model's views are
/// set once it is built (`RunModel::media_store`, `predict`).
pub fn decode_spec(r: &crate::recipe::Recipe, storage: std::sync::Arc<Storage>, threads: usize, show_progress: bool) -> Result<DecodeSpec, RunError> {
    let face = match &r.front_end.face {
        Some(opts) => {
            let fe = crate::media::face::FaceFrontEnd::new(opts)?;
            tracing::info!(detector = %opts.detector, scorer = %opts.scorer, peak = ?opts.peak, missing = ?opts.missing, "face front end");
            Some(std::sync::Arc::new(fe))
        }
        None => None,
    };
    Ok(DecodeSpec {
        sampling: r.data.frames.clone(),
        width: r.data.width,
        height: r.data.height,
        // The model's views, set once it is built (`RunModel::media_store`).
        views: Vec::new(),
        audio_len: (r.data.audio_seconds * crate::media::AUDIO_SAMPLE_RATE as f32).round() as usize,
        on_error: r.data.on_error,
        threads,
        show_progress,
        storage,
        face,
        global_frame: r.model.global_frame,
    })
}

/// `eval.limit`: a split that is only evaluated keeps just the samples the evaluation takes (the first
/// `limit` labelled ones, as [`crate::eval::runner::evaluate`] takes them), so no speech-to-text, cues or
/// decoding is spent on the rest.
fn keep_only_evaluated(r: &crate::recipe::Recipe, pool: &mut Vec<Sample>, pool_dataset: &mut Vec<String>) {
    let eval_split = (r.data.dataset.clone(), r.eval.split.clone());
    if !r.eval.enabled || r.eval.limit == 0 || trained_or_validated_splits(r).contains(&eval_split) {
        return;
    }
    let mut taken = 0;
    (*pool, *pool_dataset) = std::mem::take(pool)
        .into_iter()
        .zip(std::mem::take(pool_dataset))
        .filter(|(s, d)| {
            if (d, &s.split) != (&eval_split.0, &eval_split.1) {
                return true;
            }
            let take = s.label.is_some() && taken < r.eval.limit;
            taken += usize::from(take);
            take
        })
        .unzip();
}

/// (dataset, split) pairs the run reads: each stage's data, validation and evaluation.
fn wanted_splits(r: &crate::recipe::Recipe) -> BTreeSet<(String, String)> {
    let mut wanted = trained_or_validated_splits(r);
    if r.eval.enabled {
        wanted.insert((r.data.dataset.clone(), r.eval.split.clone()));
    }
    wanted
}

/// The (dataset, split) pairs the stages train on and validation scores.
fn trained_or_validated_splits(r: &crate::recipe::Recipe) -> BTreeSet<(String, String)> {
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for stage in &r.stages {
        if stage.data.is_empty() {
            wanted.insert((r.data.dataset.clone(), "train".into()));
        }
        for d in &stage.data {
            wanted.insert((if d.dataset.is_empty() { r.data.dataset.clone() } else { d.dataset.clone() }, d.split.clone()));
        }
    }
    if r.validation.enabled && !r.stages.is_empty() {
        wanted.insert((r.data.dataset.clone(), r.validation.split.clone()));
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

    fn pool() -> (Vec<Sample>, Vec<String>) {
        let sample = |id: &str, split: &str, label: Option<&str>| Sample { label: label.map(str::to_string), ..Sample::media_only(id, split, Location::Local(format!("{id}.mp4").into())) };
        let samples = vec![
            sample("t1", "train", Some("happy")),
            sample("e1", "test", None),
            sample("e2", "test", Some("sad")),
            sample("t2", "train", Some("sad")),
            sample("e3", "test", Some("happy")),
            sample("e4", "test", Some("angry")),
        ];
        let datasets = vec!["synth".to_string(); samples.len()];
        (samples, datasets)
    }

    fn ids(pool: &[Sample]) -> Vec<&str> {
        pool.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn an_evaluation_limit_keeps_only_the_evaluated_samples_of_an_eval_only_split() {
        let mut r = crate::recipe::Recipe::default();
        r.data.dataset = "synth".into();
        r.stages.clear();
        r.eval.enabled = true;
        r.eval.split = "test".into();
        r.eval.limit = 2;
        let (mut p, mut d) = pool();
        keep_only_evaluated(&r, &mut p, &mut d);
        // The first two labelled test samples (e1 has no label, so evaluation skips it too); train untouched.
        assert_eq!(ids(&p), ["t1", "e2", "t2", "e3"]);
        assert_eq!(d.len(), p.len());

        // No limit, or a split that is also validated: nothing is dropped.
        for change in [|r: &mut crate::recipe::Recipe| r.eval.limit = 0, |r: &mut crate::recipe::Recipe| {
            r.stages = vec![crate::recipe::schema::Stage::default()];
            r.validation.enabled = true;
            r.validation.split = "test".into();
        }] {
            let mut r2 = r.clone();
            change(&mut r2);
            let (mut p, mut d) = pool();
            keep_only_evaluated(&r2, &mut p, &mut d);
            assert_eq!(p.len(), 6);
        }
    }
}
