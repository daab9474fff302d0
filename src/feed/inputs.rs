//! Where a batch's media come from: nothing (the text-only ablation), clips decoded on first use and
//! kept in memory (trainable encoders), or the feature cache of frozen encoders, which decodes and
//! encodes a clip only on a miss. Both decode on the loader thread's workers, overlapping the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{Device, Tensor};

use super::batch;
use crate::data::Sample;
use crate::data::feature_cache::FeatureCache;
use crate::data::loader::{self, DecodeSpec, DecodedMedia, Skipped};
use crate::model::emotion_llama::EncodedFeatures;
use crate::model::multimodal::{EmotionModel, MmTokens};
use crate::recipe::OnError;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("sample `{id}` ({media}): {message}")]
    Media { id: String, media: String, message: String },
    #[error(transparent)]
    Cache(#[from] crate::data::feature_cache::FeatureCacheError),
    #[error("encoding a batch: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("every sample of a batch was unreadable: {0}")]
    EmptyBatch(String),
}

/// A batch's media, ready for the model.
pub enum BatchMedia {
    None,
    Media(crate::model::multimodal::MediaBatch),
    /// Cached frozen-encoder outputs and the batch size.
    Features(EncodedFeatures, usize),
}

impl BatchMedia {
    /// The multimodal tokens (projectors applied; trainable encoders run here, in training mode when
    /// `train`).
    pub fn tokens(&self, model: &EmotionModel, use_video: bool, use_audio: bool, train: bool) -> candle_core::Result<Option<MmTokens>> {
        match self {
            Self::None => Ok(None),
            Self::Media(m) => model.encode_modalities_t(m, use_video, use_audio, train),
            Self::Features(f, b) => model.project_features(f, *b, use_video, use_audio),
        }
    }
}

/// Decodes clips on worker threads under the recipe's error policy, recording what it skipped.
pub struct Decoder {
    pub spec: DecodeSpec,
    skipped: Mutex<Vec<Skipped>>,
}

impl Decoder {
    pub fn new(spec: DecodeSpec) -> Self {
        Self { spec, skipped: Mutex::new(Vec::new()) }
    }

    /// Samples dropped because their media could not be read (under `on_error = "skip"`).
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// An unreadable clip: the error under `on_error = "fail"`, else recorded as skipped.
    fn fail(&self, s: &Sample, message: String, outage: bool) -> Result<(), InputError> {
        // A storage outage (retries exhausted) stops the run whatever the policy: skipping would drop
        // good samples; the run resumes from its last checkpoint once the storage is back.
        if self.spec.on_error == OnError::Fail || outage {
            return Err(InputError::Media { id: s.id.clone(), media: s.media.to_string(), message });
        }
        tracing::warn!(sample = %s.id, error = %message, "skipping sample");
        if let Ok(mut g) = self.skipped.lock()
            && !g.iter().any(|x| x.id == s.id)
        {
            g.push(Skipped { id: s.id.clone(), media: s.media.clone(), reason: message });
        }
        Ok(())
    }

    /// Decodes the given pool samples on up to `spec.threads` threads.
    fn decode(&self, pool: &[Sample], which: &[usize]) -> Vec<Result<DecodedMedia, crate::media::MediaError>> {
        let workers = self.spec.threads.clamp(1, 8).min(which.len().max(1));
        let slots: Vec<Mutex<Option<Result<DecodedMedia, crate::media::MediaError>>>> = which.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = which.get(k) else { break };
                        let r = loader::decode_one(&pool[i], &self.spec);
                        if let Ok(mut g) = slots[k].lock() {
                            *g = Some(r);
                        }
                    }
                });
            }
        });
        slots
            .into_iter()
            .zip(which)
            .map(|(m, &i)| {
                m.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(crate::media::MediaError::Fetch { path: pool[i].media.to_string().into(), detail: "the decoder thread stopped".into(), outage: false })
                })
            })
            .collect()
    }
}

/// Clips decoded on first use (on the loader thread, so decoding overlaps the training step) and kept
/// in memory: for models whose encoders train, whose inputs are the pixels themselves.
pub struct DecodedStore {
    pub decoder: Decoder,
    /// Per pool sample: unknown yet, decoded, or unreadable (`None`).
    memo: Vec<OnceLock<Option<Arc<DecodedMedia>>>>,
}

impl DecodedStore {
    pub fn new(decoder: Decoder, pool_len: usize) -> Self {
        Self { decoder, memo: (0..pool_len).map(|_| OnceLock::new()).collect() }
    }

    /// Decodes the samples of `idx` not seen yet (in parallel).
    fn ensure(&self, pool: &[Sample], idx: &[usize]) -> Result<(), InputError> {
        let mut missing: Vec<usize> = idx.iter().copied().filter(|&i| self.memo[i].get().is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        for (&i, r) in missing.iter().zip(self.decoder.decode(pool, &missing)) {
            let value = match r {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    self.decoder.fail(&pool[i], e.to_string(), e.is_outage())?;
                    None
                }
            };
            let _ = self.memo[i].set(value);
        }
        Ok(())
    }

    fn batch(&self, pool: &[Sample], idx: &[usize], device: &Device) -> Result<(BatchMedia, Vec<usize>), InputError> {
        self.ensure(pool, idx)?;
        let kept: Vec<usize> = (0..idx.len()).filter(|&k| matches!(self.memo[idx[k]].get(), Some(Some(_)))).collect();
        if kept.is_empty() {
            return Err(InputError::EmptyBatch(idx.iter().map(|&i| pool[i].id.as_str()).collect::<Vec<_>>().join(", ")));
        }
        let items: Vec<&DecodedMedia> = kept.iter().filter_map(|&k| self.memo[idx[k]].get().and_then(|m| m.as_deref())).collect();
        Ok((BatchMedia::Media(batch::media_batch(&items, &self.decoder.spec.views, device)?), kept))
    }

    /// Decoded samples whose file had no audio stream.
    pub fn audio_missing(&self) -> usize {
        self.memo.iter().filter(|m| matches!(m.get(), Some(Some(d)) if d.audio_missing)).count()
    }
}

pub struct FeatureStore<'a> {
    pub cache: FeatureCache,
    pub model: &'a EmotionModel,
    pub decoder: Decoder,
}

pub enum MediaStore<'a> {
    /// The text-only ablation: no media.
    Off,
    Decoded(Box<DecodedStore>),
    Cached(Box<FeatureStore<'a>>),
}

impl MediaStore<'_> {
    /// The media of pool samples `idx`, and the positions in `idx` that made it into the batch (a
    /// sample whose clip cannot be decoded is dropped under `on_error = "skip"`).
    pub fn batch(&self, pool: &[Sample], idx: &[usize], device: &Device) -> Result<(BatchMedia, Vec<usize>), InputError> {
        match self {
            Self::Off => Ok((BatchMedia::None, (0..idx.len()).collect())),
            Self::Decoded(store) => store.batch(pool, idx, device),
            Self::Cached(store) => store.batch(pool, idx, device),
        }
    }

    /// Decodes (or, with the feature cache, encodes) `idx` ahead of use, in batches, with a progress bar:
    /// evaluation then takes one sample at a time without waiting on a decoder each time.
    pub fn warm(&self, pool: &[Sample], idx: &[usize], device: &Device, label: &str, show_progress: bool) -> Result<(), InputError> {
        if matches!(self, Self::Off) {
            return Ok(());
        }
        let bar = crate::progress::bar(idx.len() as u64, label, show_progress);
        for chunk in idx.chunks(16) {
            match self {
                Self::Decoded(store) => store.ensure(pool, chunk)?,
                _ => {
                    // Misses are encoded and stored; an all-unreadable chunk is not an error here.
                    match self.batch(pool, chunk, device) {
                        Ok(_) | Err(InputError::EmptyBatch(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }

    pub fn cache_stats(&self) -> Option<crate::data::feature_cache::CacheStats> {
        match self {
            Self::Cached(s) => Some(s.cache.stats()),
            _ => None,
        }
    }

    pub fn skipped(&self) -> Vec<Skipped> {
        match self {
            Self::Off => Vec::new(),
            Self::Decoded(s) => s.decoder.skipped(),
            Self::Cached(s) => s.decoder.skipped(),
        }
    }

    pub fn audio_missing(&self) -> usize {
        match self {
            Self::Decoded(s) => s.audio_missing(),
            _ => 0,
        }
    }
}

impl FeatureStore<'_> {
    fn batch(&self, pool: &[Sample], idx: &[usize], device: &Device) -> Result<(BatchMedia, Vec<usize>), InputError> {
        let mut found: Vec<Option<HashMap<String, Tensor>>> = Vec::with_capacity(idx.len());
        let mut keys = Vec::with_capacity(idx.len());
        let mut failed = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            let key = match self.decoder.spec.storage.local(&pool[i].media) {
                Ok(p) => self.cache.key(&p).map_err(|e| (e.to_string(), false)),
                Err(e) => Err((e.to_string(), e.is_outage())),
            };
            match key {
                Ok(key) => {
                    found.push(self.cache.load(&key, device));
                    keys.push(key);
                }
                Err((e, outage)) => {
                    self.decoder.fail(&pool[i], e, outage)?;
                    failed.push(k);
                    found.push(None);
                    keys.push(String::new());
                }
            }
        }
        let misses: Vec<usize> = (0..idx.len()).filter(|&k| found[k].is_none() && !failed.contains(&k)).collect();
        if !misses.is_empty() {
            let decoded = self.decoder.decode(pool, &misses.iter().map(|&k| idx[k]).collect::<Vec<_>>());
            let mut ok: Vec<(usize, DecodedMedia)> = Vec::new();
            for (&k, r) in misses.iter().zip(decoded) {
                match r {
                    Ok(m) => ok.push((k, m)),
                    Err(e) => {
                        self.decoder.fail(&pool[idx[k]], e.to_string(), e.is_outage())?;
                        failed.push(k);
                    }
                }
            }
            if !ok.is_empty() {
                let refs: Vec<&DecodedMedia> = ok.iter().map(|(_, m)| m).collect();
                let media = batch::media_batch(&refs, &self.decoder.spec.views, device)?;
                let features = self.model.frozen_features(&media)?.ok_or_else(|| candle_core::Error::Msg("the model has no frozen encoders".into()))?;
                for (j, (k, _)) in ok.iter().enumerate() {
                    let one = features.sample(j)?;
                    self.cache.store(&keys[*k], &one)?;
                    found[*k] = Some(one);
                }
            }
        }
        let kept: Vec<usize> = (0..idx.len()).filter(|k| !failed.contains(k)).collect();
        if kept.is_empty() {
            return Err(InputError::EmptyBatch(idx.iter().map(|&i| pool[i].id.as_str()).collect::<Vec<_>>().join(", ")));
        }
        let items: Vec<HashMap<String, Tensor>> = kept.iter().filter_map(|&k| found[k].take()).collect();
        Ok((BatchMedia::Features(EncodedFeatures::stack(&items)?, kept.len()), kept))
    }
}
