//! Applying a model to a user's files (`emollama predict`), through the pipeline the runs use: the
//! recipe's decoder and face front end, its encoders and projectors, its prompt and evaluation layout,
//! greedy generation, and the run's label extraction. Per clip: fetch → probe (bounded by `max_seconds`)
//! → decode (+ faces and peak frame) → transcript (given, or speech-to-text) → multimodal tokens →
//! class scores (the LLM's likelihood of each class word) and/or the generated reasoning → one line.
//!
//! A clip that cannot be used (no such file, an unknown extension, a corrupt or truncated file, no usable
//! stream, zero-length audio, over `max_seconds`, no face under a front end that drops faceless clips)
//! gets an error line and the batch goes on.

pub mod inputs;
pub mod model;
pub mod output;

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use self::inputs::Clip;
use self::model::PredictModel;
use self::output::{ClipTimings, LineSink, PredictionLine, TranscriptSource};
use crate::data::Sample;
use crate::data::feature_cache::FeatureCache;
use crate::data::loader::{DecodeSpec, DecodedMedia};
use crate::data::transcript_cache::TranscriptCache;
use crate::feed::batch;
use crate::model::class_scores;
use crate::model::generate::{GenerateOptions, generate_one_streaming};
use crate::model::multimodal::{MediaBatch, MmTokens};
use crate::model::prompt;
use crate::recipe::Task;
use crate::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("--model `{model}`: {detail}")]
    Model { model: String, detail: String },
    #[error(transparent)]
    Inputs(#[from] inputs::InputListError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("{0}")]
    Setup(String),
}

/// What to produce for each clip (`--task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PredictTask {
    /// Class scores only (one forward pass per class word; no generation).
    Emotion,
    /// The generated reasoning and the label it names.
    Reason,
    /// Both.
    #[default]
    Both,
}

impl PredictTask {
    fn scores(self) -> bool {
        matches!(self, Self::Emotion | Self::Both)
    }
    fn reasoning(self) -> bool {
        matches!(self, Self::Reason | Self::Both)
    }
}

/// Where transcripts come from when the input gives none (`--transcript`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TranscriptMode {
    /// The input's transcript; else speech-to-text when the model's prompt carries one and a
    /// speech-to-text model is available; else none.
    #[default]
    Auto,
    /// The input's transcript; else speech-to-text (required).
    Asr,
    /// Never a transcript.
    None,
}

/// Speech-to-text, as `predict` needs it (16 kHz mono in, text out).
pub trait SpeechToText: Sync {
    fn transcribe(&self, samples: &[f32]) -> Result<String, String>;
    /// Identifies the model's weights (transcripts are cached under it).
    fn fingerprint(&self) -> String;
}

impl SpeechToText for crate::model::asr::Transcriber {
    fn transcribe(&self, samples: &[f32]) -> Result<String, String> {
        crate::model::asr::Transcriber::transcribe(self, samples).map_err(|e| e.to_string())
    }
    fn fingerprint(&self) -> String {
        crate::model::asr::Transcriber::fingerprint(self).to_string()
    }
}

impl TranscriptMode {
    /// Whether speech-to-text is wanted for a model whose prompt carries a transcript or not.
    pub fn wants_asr(self, prompt_has_transcript: bool) -> bool {
        match self {
            Self::Asr => true,
            Self::Auto => prompt_has_transcript,
            Self::None => false,
        }
    }
}

/// Speech-to-text as `predict`, `serve` and `annotate` load it: none unless `mode` wants it for a prompt
/// that does (or does not) carry a transcript; required (an error) under `asr`, else a warning when
/// the model is not installed. `dir` defaults to Whisper tiny.en where `just fetch-models` puts it.
pub fn load_asr(mode: TranscriptMode, prompt_has_transcript: bool, dir: Option<&std::path::Path>) -> Result<Option<crate::model::asr::Transcriber>, String> {
    if !mode.wants_asr(prompt_has_transcript) {
        return Ok(None);
    }
    let dir = dir.map(std::path::Path::to_path_buf).unwrap_or_else(crate::model::asr::default_model_dir);
    match crate::model::asr::Transcriber::load(&dir, &candle_core::Device::Cpu) {
        Ok(t) => Ok(Some(t)),
        Err(e) if mode == TranscriptMode::Asr => Err(format!("--transcript asr: {e}")),
        Err(e) => {
            tracing::warn!(error = %e, "no speech-to-text: clips without a given transcript get none");
            Ok(None)
        }
    }
}

pub struct PredictOptions<'a> {
    pub task: PredictTask,
    pub use_video: bool,
    pub use_audio: bool,
    /// Clips decoded in parallel ahead of the model.
    pub batch: usize,
    /// Longer clips are refused (their line says so).
    pub max_seconds: f64,
    pub transcript: TranscriptMode,
    pub asr: Option<&'a dyn SpeechToText>,
    pub show_progress: bool,
    /// Also generate the coarse caption (the `description` task's instruction), as `annotate` does.
    pub caption: bool,
}

/// What a whole invocation did.
#[derive(Debug, Default)]
pub struct PredictSummary {
    pub clips: usize,
    pub predicted: usize,
    /// Finished by an earlier invocation (same key), not predicted again.
    pub resumed: usize,
    /// (id, reason) of each clip that failed.
    pub failed: Vec<(String, String)>,
    pub labels: BTreeMap<String, usize>,
    pub seconds: f64,
    pub described: String,
}

impl PredictSummary {
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(vec!["predict", ""]);
        t.add_row(vec!["model".to_string(), self.described.clone()]);
        t.add_row(vec!["clips".to_string(), self.clips.to_string()]);
        t.add_row(vec!["predicted now".to_string(), self.predicted.to_string()]);
        t.add_row(vec!["finished before (skipped)".to_string(), self.resumed.to_string()]);
        t.add_row(vec!["failed".to_string(), self.failed.len().to_string()]);
        let labels: Vec<String> = self.labels.iter().map(|(l, n)| format!("{l} {n}")).collect();
        t.add_row(vec!["labels".to_string(), labels.join(", ")]);
        let per = if self.predicted > 0 { self.seconds / self.predicted as f64 } else { 0.0 };
        t.add_row(vec!["time".to_string(), format!("{:.1} s ({per:.2} s per predicted clip)", self.seconds)]);
        let mut out = t.to_string();
        for (id, why) in &self.failed {
            out.push_str(&format!("\nfailed: {id}: {why}"));
        }
        out
    }
}

/// What happens to one clip, as it happens ([`Predictor::predict_clip`]).
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage begins (`decoding`, `faces`, `transcript`, `encoders`, `scores`, `generation`), with a
    /// line for people.
    Stage { stage: &'static str, detail: String },
    /// The next piece of the generated reasoning (text appended to what came before).
    Token(String),
    /// The contact sheet of the sampled frames, face boxes, crops and peak frame (PNG bytes), when the
    /// model has a face front end.
    ContactSheet(Vec<u8>),
}

/// The callback's `false` cancels the clip (its line gets the error `cancelled`).
pub type OnEvent<'f> = dyn FnMut(Event) -> bool + 'f;

const CANCELLED: &str = "cancelled";

fn emit(on: &mut OnEvent, e: Event) -> Result<(), String> {
    if on(e) { Ok(()) } else { Err(CANCELLED.into()) }
}

fn stage(on: &mut OnEvent, stage: &'static str, detail: impl Into<String>) -> Result<(), String> {
    emit(on, Event::Stage { stage, detail: detail.into() })
}

/// The model and options ready for clips, one at a time: what `predict` runs per clip, callable on
/// its own (`emollama serve`) with progress events and the reasoning streamed token by token.
pub struct Predictor<'a> {
    ctx: Context<'a>,
}

/// How [`Predictor::predict_clip`] treats a clip.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipOptions {
    /// Refuse files whose extension is not a media one (the batch does; a server that named the file
    /// itself probes the content instead).
    pub check_extension: bool,
    /// Also make the contact sheet ([`Event::ContactSheet`]).
    pub contact_sheet: bool,
}

impl<'a> Predictor<'a> {
    pub fn new(model: &'a PredictModel, opts: &'a PredictOptions<'a>) -> Result<Self, PredictError> {
        Ok(Self { ctx: Context::new(model, opts)? })
    }

    pub fn model(&self) -> &PredictModel {
        self.ctx.model
    }

    /// Predicts one clip: the same line as `predict` writes for it (`ok`, or `error` saying why).
    pub fn predict_clip(&self, clip: &Clip, how: ClipOptions, on: &mut OnEvent) -> PredictionLine {
        let ctx = &self.ctx;
        let mut line = PredictionLine { id: clip.id.clone(), input: clip.media.to_string(), ..Default::default() };
        let result = stage(on, "decoding", "fetching, probing and decoding the clip")
            .and_then(|_| prepare(ctx, clip, how.check_extension))
            .and_then(|p| {
                line.key = clip_key(ctx, clip, &p);
                if let Some(f) = &p.decoded.faces {
                    let peak = f.peak.and_then(|i| f.frame_times_s.get(i)).map(|t| format!("; peak frame at {t:.2} s")).unwrap_or_default();
                    stage(on, "faces", format!("a face in {} of {} sampled frames{peak}", f.frames_with_face, f.frame_times_s.len()))?;
                }
                if how.contact_sheet && p.use_video {
                    match contact_sheet(ctx, &p.local, &clip.id) {
                        Ok(Some(png)) => emit(on, Event::ContactSheet(png))?,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(clip = %clip.id, error = %e, "no contact sheet"),
                    }
                }
                run_model(ctx, clip, p, &mut line, on, true)
            });
        match result {
            Ok(()) => line.ok = true,
            Err(e) => {
                tracing::warn!(clip = %clip.id, error = %e, "clip failed");
                line.error = Some(e);
            }
        }
        line
    }

    /// Text-only chat with the loaded LLM (no media tokens): the chat template around `user` (with
    /// `system` when given, else the model's), generated with `sampling`; `on_token` as in generation.
    pub fn chat(&self, system: Option<&str>, user: &str, sampling: &GenerateOptions, seed: u64, on_token: &mut dyn FnMut(u32) -> bool) -> Result<ChatAnswer, String> {
        let m = self.ctx.model;
        let text = match system {
            Some(s) => m.template.kind.wrap(Some(s), user),
            None => m.template.wrap(user),
        };
        let prompt = batch::tokenize_eval(&m.tokenizer, &text, crate::recipe::EvalLayout::Training).map_err(|e| format!("tokenizing the prompt: {e}"))?;
        let prompt_tokens = prompt.pieces.iter().map(|p| match p {
            crate::model::multimodal::Piece::Text(t) => t.len(),
            _ => 0,
        }).sum();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let ids = crate::model::generate::generate_one_streaming(&m.built.model, &prompt, None, sampling, &mut rng, on_token).map_err(|e| format!("generation: {e}"))?;
        let text = m.tokenizer.decode(&ids).map_err(|e| format!("decoding the answer: {e}"))?;
        Ok(ChatAnswer { text, prompt_tokens, completion_tokens: ids.len(), finished: ids.len() < sampling.max_new_tokens })
    }

    /// Decodes `ids` as text (for streaming: the text grows as ids are added).
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.ctx.model.tokenizer.decode(ids).map_err(|e| e.to_string())
    }
}

/// What [`Predictor::chat`] generated.
#[derive(Debug, Clone)]
pub struct ChatAnswer {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Ended by the model (EOS), not by the token limit.
    pub finished: bool,
}

/// The contact sheet of `path` under the model's face front end (`None` without one): decoded again at
/// the detection size, as `emollama probe --faces` makes it.
fn contact_sheet(ctx: &Context, path: &std::path::Path, title: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(fe) = &ctx.spec.face else { return Ok(None) };
    let (w, h) = fe.detect_size_of(path).map_err(|e| e.to_string())?;
    let video = crate::media::decode_video(path, &ctx.spec.sampling, w, h).map_err(|e| e.to_string())?;
    let faces = fe.process(&video, ctx.spec.width as usize, ctx.spec.height as usize).map_err(|e| e.to_string())?;
    let title = format!("{title}: a face in {} of {} sampled frames", faces.faces_found(), faces.frames.len());
    crate::report::face_sheet::contact_sheet(&video, &faces, &title).map(Some).map_err(|e| e.to_string())
}

/// The per-model state shared by every clip.
struct Context<'a> {
    model: &'a PredictModel,
    opts: &'a PredictOptions<'a>,
    spec: DecodeSpec,
    storage: std::sync::Arc<Storage>,
    features: Option<FeatureCache>,
    transcripts: TranscriptCache,
    /// Each class word tokenized as a training answer.
    candidates: Vec<Vec<u32>>,
    /// Whether the model's prompt carries a transcript (`prompt.transcript`).
    wants_transcript: bool,
    /// `[prompt] cues`: the face front end the cues use, and their cache.
    cues: Option<(crate::media::face::FaceFrontEnd, crate::data::cues::CueCache)>,
    /// `eval.calibrate`: the class words' log-likelihoods after the content-free emotion prompt.
    content_free: Option<Vec<f64>>,
}

/// A clip fetched, probed and decoded (on a worker thread), before the model.
struct Prepared {
    local: std::path::PathBuf,
    media_hash: String,
    duration_s: f64,
    use_video: bool,
    use_audio: bool,
    decoded: DecodedMedia,
    /// The whole soundtrack (up to `max_seconds`), for speech-to-text.
    speech: Vec<f32>,
    timings: ClipTimings,
}

impl<'a> Context<'a> {
    fn new(model: &'a PredictModel, opts: &'a PredictOptions<'a>) -> Result<Self, PredictError> {
    let r = model.recipe();
    let cache_root = crate::storage::cache_root(&r.runtime.cache_dir);
    let storage = Storage::new(r.storage.clone(), &cache_root).map_err(|e| PredictError::Setup(e.to_string()))?;
    let mut spec = crate::run::data::decode_spec(r, storage.clone(), opts.batch.max(1), false).map_err(|e| PredictError::Setup(e.to_string()))?;
    spec.views = model.built.views.clone();
    let features = (r.runtime.feature_cache && model.built.model.has_frozen_encoders())
        .then(|| crate::run::model::feature_settings(r, &model.registry).map(|s| FeatureCache::new(&cache_root, &s)))
        .transpose()
        .map_err(|e| PredictError::Setup(e.to_string()))?;
    let candidates = model
        .labels
        .iter()
        .map(|l| model.tokenizer.encode(&prompt::normalise_answer(l)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PredictError::Setup(format!("tokenizing the class words: {e}")))?;
    if opts.transcript == TranscriptMode::Asr && opts.asr.is_none() {
        return Err(PredictError::Setup("--transcript asr: no speech-to-text model is loaded".into()));
    }
    let content_free = if r.eval.calibrate {
        let text = batch::content_free_text(r, Task::Emotion, first_instruction(r, Task::Emotion), &model.template);
        let prompt = batch::tokenize_eval(&model.tokenizer, &text, r.prompt.eval_layout).map_err(|e| PredictError::Setup(format!("tokenizing the content-free prompt: {e}")))?;
        Some(class_scores::candidate_log_likelihoods(&model.built.model, &prompt, None, &candidates).map_err(|e| PredictError::Setup(format!("the content-free class scores: {e}")))?)
    } else {
        None
    };
    let cues = if r.prompt.cues {
        let fe = crate::run::data::cue_front_end(r).map_err(|e| PredictError::Setup(format!("the cues' face front end: {e}")))?;
        let cache = crate::data::cues::CueCache::new(&cache_root, &fe);
        Some((fe, cache))
    } else {
        None
    };
    Ok(Context {
        model,
        opts,
        spec,
        storage,
        features,
        transcripts: TranscriptCache::new(&cache_root),
        candidates,
        wants_transcript: r.prompt.transcript.included(),
        cues,
        content_free,
    })
    }
}

/// Predicts every clip of `clips` into `sink`, skipping those it finished before.
pub fn predict(model: &PredictModel, clips: &[Clip], opts: &PredictOptions, sink: &mut LineSink) -> Result<PredictSummary, PredictError> {
    let t0 = Instant::now();
    let ctx = Context::new(model, opts)?;
    let mut summary = PredictSummary { clips: clips.len(), described: model.described.clone(), ..Default::default() };
    let bar = crate::progress::bar(clips.len() as u64, "predict", opts.show_progress);
    for chunk in clips.chunks(opts.batch.max(1)) {
        // Fetch, probe and decode the chunk's clips in parallel; then the model, one clip at a time.
        let prepared: Vec<Result<Prepared, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|c| s.spawn(|| prepare(&ctx, c, true))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("the decoder thread panicked".into()))).collect()
        });
        for (clip, prep) in chunk.iter().zip(prepared) {
            let mut line = PredictionLine { id: clip.id.clone(), input: clip.media.to_string(), ..Default::default() };
            let result = prep.and_then(|p| {
                line.key = clip_key(&ctx, clip, &p);
                if sink.is_done(&line.key) {
                    return Ok(None);
                }
                run_model(&ctx, clip, p, &mut line, &mut |_| true, false).map(Some)
            });
            match result {
                Ok(None) => summary.resumed += 1,
                Ok(Some(())) => {
                    line.ok = true;
                    *summary.labels.entry(line.label.clone().unwrap_or_else(|| "unparsed".into())).or_default() += 1;
                    summary.predicted += 1;
                    sink.write(&line)?;
                }
                Err(e) => {
                    tracing::warn!(clip = %clip.id, error = %e, "clip failed");
                    line.error = Some(e.clone());
                    summary.failed.push((clip.id.clone(), e));
                    sink.write(&line)?;
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// The line's key: the file's content, the model, the options and a given transcript.
fn clip_key(ctx: &Context, clip: &Clip, p: &Prepared) -> String {
    let o = ctx.opts;
    let mut h = Sha256::new();
    h.update(format!("{}|{}|{:?}|{}|{}|{:?}|{:?}", ctx.model.fingerprint, p.media_hash, o.task, o.use_video, o.use_audio, o.transcript, clip.transcript).as_bytes());
    hex::encode(h.finalize())
}

/// Fetch, probe, decode: everything before the model (runs on a worker thread).
fn prepare(ctx: &Context, clip: &Clip, check_extension: bool) -> Result<Prepared, String> {
    let mut timings = ClipTimings::default();
    let t = Instant::now();
    let name = clip.media.file_name();
    if check_extension && !inputs::is_media(&name) {
        return Err(format!("unknown extension of `{name}`: expected one of {}", inputs::MEDIA_EXTENSIONS.join(", ")));
    }
    let local = ctx.storage.local(&clip.media).map_err(|e| format!("fetching: {e}"))?;
    if !local.is_file() {
        return Err(format!("`{}` does not exist", local.display()));
    }
    let media_hash = crate::storage::cache::sha256_file(&local).map_err(|e| format!("reading `{}`: {e}", local.display()))?;
    timings.fetch_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let info = crate::media::probe(&local).map_err(|e| format!("not a readable media file: {e}"))?;
    let duration_s = info.duration_s;
    if duration_s > ctx.opts.max_seconds {
        return Err(format!("{duration_s:.1} s long, over --max-seconds {}: cut the clip or raise --max-seconds", ctx.opts.max_seconds));
    }
    let model_video = !ctx.spec.views.is_empty();
    let model_audio = !ctx.model.recipe().model.audio_encoder.is_empty();
    let use_video = ctx.opts.use_video && model_video && info.video_stream.is_some();
    let use_audio = ctx.opts.use_audio && model_audio && info.audio_stream.is_some();
    let asr_mode = match ctx.opts.transcript {
        TranscriptMode::Asr => true,
        TranscriptMode::Auto => ctx.wants_transcript,
        TranscriptMode::None => false,
    };
    let wants_speech = ctx.opts.asr.is_some() && clip.transcript.is_none() && asr_mode;
    let speech = if info.audio_stream.is_some() && ((use_audio && !use_video) || wants_speech) {
        let audio = crate::media::decode_audio(&local).map_err(|e| format!("decoding the audio: {e}"))?;
        if audio.samples.is_empty() && !audio.missing {
            return Err("the audio stream is empty (zero-length audio)".into());
        }
        audio.samples
    } else {
        Vec::new()
    };
    let uses_media = ctx.model.recipe().model.use_av && (model_video || model_audio);
    if uses_media && !use_video && !use_audio {
        return Err(no_modality(ctx, &info, model_video, model_audio));
    }
    let decoded = if use_video {
        let sample = Sample::media_only(&clip.id, "predict", crate::storage::Location::Local(local.clone()));
        crate::data::loader::decode_one(&sample, &ctx.spec).map_err(|e| e.to_string())?
    } else {
        // Audio only: no frames; the clip's audio cut or padded to the model's length.
        let mut audio = speech.clone();
        audio.resize(ctx.spec.audio_len, 0.0);
        DecodedMedia { pixels: Vec::new(), num_frames: 0, audio_valid: speech.len().min(ctx.spec.audio_len), audio, audio_missing: false, faces: None }
    };
    timings.decode_s = t.elapsed().as_secs_f64();
    Ok(Prepared { local, media_hash, duration_s, use_video, use_audio, decoded, speech, timings })
}

fn no_modality(ctx: &Context, info: &crate::media::ProbeInfo, model_video: bool, model_audio: bool) -> String {
    let has = |b: bool| if b { "has" } else { "has no" };
    let wants: Vec<&str> = [("video", ctx.opts.use_video && model_video), ("audio", ctx.opts.use_audio && model_audio)].iter().filter(|m| m.1).map(|m| m.0).collect();
    format!(
        "no usable modality: the file {} video stream and {} audio stream; the model reads {} (with --modalities)",
        has(info.video_stream.is_some()),
        has(info.audio_stream.is_some()),
        if wants.is_empty() { "none of them".to_string() } else { wants.join(" and ") }
    )
}

/// The model's part: transcript, tokens, scores, reasoning.
/// With `stream_tokens`, each generated token's text goes to `on` as it comes.
fn run_model(ctx: &Context, clip: &Clip, p: Prepared, line: &mut PredictionLine, on: &mut OnEvent, stream_tokens: bool) -> Result<(), String> {
    let t_clip = Instant::now();
    let m = ctx.model;
    let r = m.recipe();
    let mut timings = p.timings.clone();
    line.duration_s = Some(p.duration_s);
    if let Some(f) = &p.decoded.faces {
        line.peak_frame_s = f.peak.and_then(|i| f.frame_times_s.get(i).copied());
        line.faces = Some(f.clone());
    }
    // The transcript: given, else speech-to-text (cached per model and file).
    let t = Instant::now();
    if clip.transcript.is_none() && ctx.opts.transcript != TranscriptMode::None && ctx.opts.asr.is_some() && (ctx.wants_transcript || ctx.opts.transcript == TranscriptMode::Asr) {
        stage(on, "transcript", "speech-to-text of the audio")?;
    }
    let (transcript, source) = match (&clip.transcript, ctx.opts.transcript, ctx.opts.asr) {
        (_, TranscriptMode::None, _) => (None, TranscriptSource::None),
        (Some(given), _, _) => (Some(given.clone()), TranscriptSource::Given),
        (None, TranscriptMode::Auto, _) if !ctx.wants_transcript => (None, TranscriptSource::None),
        (None, _, Some(asr)) => {
            let key = format!("{}:{}", asr.fingerprint(), p.media_hash);
            let text = match ctx.transcripts.get(&key) {
                Some(t) => t,
                None => {
                    let text = if p.speech.is_empty() { String::new() } else { asr.transcribe(&p.speech).map_err(|e| format!("speech-to-text: {e}"))? };
                    ctx.transcripts.put(&key, &text);
                    text
                }
            };
            (Some(text).filter(|t| !t.trim().is_empty()), TranscriptSource::Asr)
        }
        (None, _, None) => (None, TranscriptSource::None),
    };
    timings.asr_s = t.elapsed().as_secs_f64();
    line.transcript_source = Some(if transcript.is_none() { TranscriptSource::None } else { source });
    line.transcript = transcript.clone();
    let in_prompt = if r.prompt.transcript.included() { transcript.as_deref() } else { None };
    // The face and voice in words (cached per clip).
    let mut cue_text = None;
    if let Some((fe, cache)) = &ctx.cues {
        stage(on, "cues", "the expression timeline and the voice")?;
        let t = Instant::now();
        let cues = cache.get_or_extract(&p.local, &p.media_hash, fe).map_err(|e| format!("cues: {e}"))?;
        let labels: Vec<&str> = m.labels.iter().map(String::as_str).collect();
        cue_text = Some(cues.describe_for(&labels));
        line.cues = Some(cues);
        timings.cues_s = t.elapsed().as_secs_f64();
    }
    let clip_text = prompt::ClipText { cues: cue_text.as_deref(), transcript: in_prompt };
    let by_scores = r.eval.label_extraction == crate::recipe::LabelExtraction::Scores;

    stage(on, "encoders", "the video and audio encoders and projectors")?;
    let t = Instant::now();
    let mm = tokens(ctx, &p).map_err(|e| format!("encoding: {e}"))?;
    line.modalities = [("video", p.use_video && mm.is_some()), ("audio", p.use_audio && mm.is_some())].iter().filter(|x| x.1).map(|x| x.0).collect();
    timings.encode_s = t.elapsed().as_secs_f64();

    let labels: Vec<&str> = m.labels.iter().map(String::as_str).collect();
    let tok_err = |e: crate::model::tokenizer::TokenizerError| format!("tokenizing the prompt: {e}");
    // `calibrated`: after the emotion question, with `eval.calibrate` (the content-free prompt is that one).
    let score_with = |prompt: &crate::model::multimodal::TokenizedPrompt, calibrated: bool| -> Result<BTreeMap<String, f64>, String> {
        let mut ll = class_scores::candidate_log_likelihoods(&m.built.model, prompt, mm.as_ref(), &ctx.candidates).map_err(|e| format!("class scores: {e}"))?;
        if let (true, Some(cf)) = (calibrated, &ctx.content_free) {
            ll = class_scores::calibrate(&ll, cf);
        }
        Ok(m.labels.iter().cloned().zip(class_scores::probabilities(&ll)).collect())
    };
    let score = |prompt: &crate::model::multimodal::TokenizedPrompt| score_with(prompt, false);
    // The direct question: the class words after the emotion instruction.
    let mut emotion_scores = None;
    if ctx.opts.task.scores() {
        stage(on, "scores", "the likelihood of each class word")?;
        let t = Instant::now();
        let text = m.template.prompt_with(clip_text, Task::Emotion.name(), first_instruction(r, Task::Emotion));
        emotion_scores = Some(score_with(&batch::tokenize_eval(&m.tokenizer, &text, r.prompt.eval_layout).map_err(tok_err)?, true)?);
        timings.scores_s += t.elapsed().as_secs_f64();
    }
    if ctx.opts.task.reasoning() {
        let t = Instant::now();
        // The run's evaluation task when it asks for reasoning, else `reason`.
        let task = if matches!(r.eval.task, Task::Reason | Task::ReasonV2) { r.eval.task } else { Task::Reason };
        let text = m.template.prompt_with(clip_text, task.name(), first_instruction(r, task));
        let prompt = batch::tokenize_eval(&m.tokenizer, &text, r.prompt.eval_layout).map_err(tok_err)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(r.seed);
        stage(on, "generation", "the reasoning, token by token")?;
        // Each new id's text: the decoded text so far minus what was sent (word pieces join correctly).
        let (mut so_far, mut sent, mut cancelled) = (Vec::new(), 0usize, false);
        let mut on_token = |id: u32| {
            if !stream_tokens {
                return true;
            }
            so_far.push(id);
            let Ok(text) = m.tokenizer.decode(&so_far) else { return true };
            if text.len() > sent && text.is_char_boundary(sent) {
                let delta = text[sent..].to_string();
                sent = text.len();
                cancelled = !on(Event::Token(delta));
            }
            !cancelled
        };
        let ids = generate_one_streaming(&m.built.model, &prompt, mm.as_ref(), &GenerateOptions::greedy(r.eval.max_new_tokens), &mut rng, &mut on_token).map_err(|e| format!("generation: {e}"))?;
        if cancelled {
            return Err(CANCELLED.into());
        }
        let generated = m.tokenizer.decode(&ids).map_err(|e| format!("decoding the answer: {e}"))?;
        timings.generate_s = t.elapsed().as_secs_f64();
        // `label_extraction = "scores"`: the label comes from the class scores, whatever the text says.
        let named = if by_scores { None } else { crate::eval::extract::extract_label(&generated, &labels, r.eval.label_extraction) };
        if let Some(l) = named {
            // The decision point: the class words where the reasoning names its class, given the
            // prompt and the reasoning before it.
            let t = Instant::now();
            let at = labels.iter().position(|x| *x == l).and_then(|k| last_span(&ids, &ctx.candidates[k]));
            if let Some(pos) = at {
                let mut before = prompt.clone();
                before.pieces.push(crate::model::multimodal::Piece::Text(ids[..pos].to_vec()));
                line.scores = Some(score(&before)?);
                line.scores_from = Some("reasoning");
            }
            timings.scores_s += t.elapsed().as_secs_f64();
            line.label = Some(l);
            line.label_from = Some("reasoning");
        }
        line.reasoning = Some(generated);
    }
    if ctx.opts.caption {
        let t = Instant::now();
        stage(on, "caption", "the coarse caption")?;
        let text = m.template.prompt_with(clip_text, Task::Description.name(), first_instruction(r, Task::Description));
        let prompt = batch::tokenize_eval(&m.tokenizer, &text, r.prompt.eval_layout).map_err(tok_err)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(r.seed);
        let ids = generate_one_streaming(&m.built.model, &prompt, mm.as_ref(), &GenerateOptions::greedy(r.eval.max_new_tokens), &mut rng, &mut |_| true).map_err(|e| format!("caption: {e}"))?;
        line.caption = Some(m.tokenizer.decode(&ids).map_err(|e| format!("decoding the caption: {e}"))?.trim().to_string());
        timings.generate_s += t.elapsed().as_secs_f64();
    }
    if line.scores.is_none() {
        let scores = match emotion_scores.take() {
            Some(s) => s,
            None => {
                let t = Instant::now();
                let text = m.template.prompt_with(clip_text, Task::Emotion.name(), first_instruction(r, Task::Emotion));
                let s = score_with(&batch::tokenize_eval(&m.tokenizer, &text, r.prompt.eval_layout).map_err(tok_err)?, true)?;
                timings.scores_s += t.elapsed().as_secs_f64();
                s
            }
        };
        if line.label.is_none() {
            line.label = scores.iter().fold(None::<(&String, f64)>, |b, (k, &v)| if b.is_none_or(|b| v > b.1) { Some((k, v)) } else { b }).map(|b| b.0.clone());
            line.label_from = Some("scores");
        }
        line.scores = Some(scores);
        line.scores_from = Some("emotion_prompt");
    }
    line.emotion_prompt_scores = emotion_scores;
    timings.total_s = timings.fetch_s + timings.decode_s + t_clip.elapsed().as_secs_f64();
    line.timings = timings;
    Ok(())
}

/// Where `needle` last occurs in `ids`.
fn last_span(ids: &[u32], needle: &[u32]) -> Option<usize> {
    (0..=ids.len().checked_sub(needle.len())?).rev().find(|&i| ids[i..i + needle.len()] == *needle)
}

fn first_instruction(r: &crate::recipe::Recipe, task: Task) -> &str {
    r.prompt.instructions_for(task).first().map(String::as_str).unwrap_or("")
}

/// The clip's multimodal tokens, exactly as the run's evaluation makes them: with cached frozen-encoder
/// features when the recipe caches them (both modalities), else encoded here.
fn tokens(ctx: &Context, p: &Prepared) -> candle_core::Result<Option<MmTokens>> {
    let m = &ctx.model.built.model;
    let dev = &ctx.model.device;
    if !ctx.model.recipe().model.use_av {
        return Ok(None);
    }
    if !p.use_video {
        let media = MediaBatch { pixels: Vec::new(), audio: Tensor::from_slice(&p.decoded.audio, (1, p.decoded.audio.len()), dev)?, audio_lengths: vec![p.decoded.audio_valid] };
        return m.encode_modalities(&media, false, p.use_audio);
    }
    let media = batch::media_batch(&[&p.decoded], &ctx.spec.views, dev)?;
    if let (Some(cache), true) = (&ctx.features, p.use_audio) {
        // The file's hash from fetching (the same sha256 the cache would compute).
        let key = cache.key_of_hash(&p.media_hash);
        let features = match cache.load(&key, dev) {
            Some(f) => f,
            None => {
                let f = m.frozen_features(&media)?.ok_or_else(|| candle_core::Error::Msg("the model has no frozen encoders".into()))?.sample(0)?;
                cache.store(&key, &f).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                f
            }
        };
        let stacked = crate::model::emotion_llama::EncodedFeatures::stack(&[features])?;
        return m.project_features(&stacked, 1, true, true);
    }
    m.encode_modalities(&media, p.use_video, p.use_audio)
}
