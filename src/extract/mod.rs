//! `emollama extract`: features of a frozen encoder for one media file, a folder, a recipe's dataset, or a
//! safetensors file of already preprocessed input (so any implementation can be compared on identical
//! inputs).
//!
//! Media inputs are resumable: each finished sample is written at once (a part file for
//! `--format safetensors`, its `.npy` for `--format npy`), and a rerun skips the samples already done,
//! including the ones in an existing output file.

pub mod inputs;
pub mod npy;
pub mod output;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::media::{self, FrameSampling, MediaError};
use crate::model::encoders::features::{FeatureSpec, Pooled, Pooling};
use crate::model::encoders::{EncoderError, FeatureOutput, FrozenEncoder, InputKind};

pub use inputs::{InputItem, list_inputs_at};
pub use output::Format;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("input `{input}`: {detail}")]
    Input { input: String, detail: String },
    #[error("output `{path}`: {detail}")]
    Output { path: String, detail: String },
}

pub(crate) fn input_err(input: impl std::fmt::Display, detail: impl ToString) -> ExtractError {
    ExtractError::Input { input: input.to_string(), detail: detail.to_string() }
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub spec: FeatureSpec,
    pub format: Format,
    pub out: PathBuf,
    /// Frames a visual encoder sees (default: the manifest's, else 8 uniform / the first / 8 × 2 segments).
    pub frames: Option<FrameSampling>,
    /// Resample audio of another rate or channel count (otherwise it is an error, as in MERBench).
    pub resample: bool,
    /// Frames per forward pass of a per-frame encoder (memory bound).
    pub frame_batch: usize,
    pub show_progress: bool,
}

/// What an extraction did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExtractSummary {
    pub extracted: usize,
    pub skipped_done: usize,
    pub keys: usize,
    pub out: PathBuf,
}

/// Named output tensors of one sample (or of a preprocessed batch).
pub type Named = Vec<(String, Tensor)>;

/// Extracts every item, skipping the ones already done.
pub fn extract_items(enc: &FrozenEncoder, items: &[InputItem], opts: &ExtractOptions) -> Result<ExtractSummary, ExtractError> {
    media::init();
    let meta = output::metadata(enc, &opts.spec);
    let mut sink = output::Sink::open(opts.format, &opts.out, &meta)?;
    let todo: Vec<&InputItem> = items.iter().filter(|it| !sink.is_done(&it.id)).collect();
    let skipped_done = items.len() - todo.len();
    if skipped_done > 0 {
        tracing::info!(done = skipped_done, remaining = todo.len(), "resuming: samples already extracted are skipped");
    }
    let bar = crate::progress::bar(todo.len() as u64, "extract", opts.show_progress);
    for it in &todo {
        bar.set_message(it.id.clone());
        let named = extract_media(enc, &it.path, opts)?;
        sink.write(&it.id, named)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let keys = sink.finish(&meta)?;
    Ok(ExtractSummary { extracted: todo.len(), skipped_done, keys, out: opts.out.clone() })
}

/// Features of one media file.
pub fn extract_media(enc: &FrozenEncoder, path: &Path, opts: &ExtractOptions) -> Result<Named, ExtractError> {
    let cerr = |e: candle_core::Error| input_err(path.display(), e);
    let device = Device::Cpu;
    match enc.input_kind() {
        InputKind::Audio => {
            let wave = read_audio(enc, path, opts.resample)?;
            let n = wave.len();
            let x = Tensor::from_vec(wave, (1, n), &device).map_err(cerr)?;
            let x = enc.prepare_audio(&x, None).map_err(cerr)?;
            let out = enc.features(&x, &opts.spec).map_err(cerr)?;
            name_outputs(out, true).map_err(cerr)
        }
        InputKind::Image => {
            let sampling = opts.frames.clone().or_else(|| enc.preprocess.frames.clone()).unwrap_or(FrameSampling::Uniform { n: 8 });
            let frames = read_frames(enc, path, &sampling)?;
            let n = frames.dim(0).map_err(cerr)?;
            // Per-frame features, then the mean over frames (Emotion-LLaMA's utterance-level `mae_340_UTT`);
            // `tokens` keeps every frame's (VideoLLaMA2's connector takes them all).
            let mut per_frame: Vec<FeatureOutput> = Vec::new();
            let step = opts.frame_batch.max(1);
            let mut start = 0;
            while start < n {
                let len = step.min(n - start);
                per_frame.push(enc.features(&frames.narrow(0, start, len).map_err(cerr)?, &opts.spec).map_err(cerr)?);
                start += len;
            }
            let merged = concat_outputs(per_frame).map_err(cerr)?;
            let per_frame_out = matches!(opts.spec.pooling, Pooling::None | Pooling::Tokens);
            let pooled = if per_frame_out { merged } else { mean_over_frames(merged).map_err(cerr)? };
            name_outputs(pooled, !per_frame_out).map_err(cerr)
        }
        InputKind::Video => {
            let sampling = opts.frames.clone().or_else(|| enc.preprocess.frames.clone()).unwrap_or(FrameSampling::Segments { segments: 8, consecutive: 2 });
            let frames = read_frames(enc, path, &sampling)?;
            let t = frames.dim(0).map_err(cerr)?;
            if let Some(want) = enc.num_frames.filter(|&w| w != t) {
                return Err(input_err(path.display(), format!("the sampling {sampling:?} gives {t} frames; encoder `{}` takes clips of {want} frames", enc.name)));
            }
            let clip = frames.unsqueeze(0).map_err(cerr)?;
            let out = enc.features(&clip, &opts.spec).map_err(cerr)?;
            name_outputs(out, true).map_err(cerr)
        }
    }
}

/// Features of a safetensors file holding preprocessed input: `input_values` (batch, samples) for audio,
/// `fbank` (batch, frames, mel bins) for BEATs, `pixel_values` (batch, 3, H, W) for images or
/// (batch, T, 3, H, W) for video. No preprocessing is applied.
pub fn extract_tensor_file(enc: &FrozenEncoder, path: &Path, opts: &ExtractOptions) -> Result<usize, ExtractError> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| input_err(path.display(), format!("not a readable safetensors file: {e}")))?;
    let key = enc.input_key();
    let x = tensors.get(key).ok_or_else(|| {
        let mut have: Vec<&String> = tensors.keys().collect();
        have.sort();
        input_err(path.display(), format!("no tensor `{key}` (encoder `{}` takes {key}); the file has: {have:?}", enc.name))
    })?;
    let x = x.to_dtype(candle_core::DType::F32).map_err(|e| input_err(path.display(), e))?;
    check_input_shape(enc, x.dims()).map_err(|d| input_err(format!("{} [{key}]", path.display()), d))?;
    let out = enc.features(&x, &opts.spec).map_err(|e| input_err(path.display(), e))?;
    let named: Named = match out {
        FeatureOutput::HiddenStates(h) => h.into_iter().enumerate().map(|(i, t)| (format!("hidden_states.{i}"), t)).collect(),
        FeatureOutput::Pooled(Pooled::One(t)) => vec![("features".into(), t)],
        FeatureOutput::Pooled(Pooled::Merged { patches, cls }) => vec![("patch_tokens".into(), patches), ("cls".into(), cls)],
    };
    let n = named.len();
    output::write_safetensors_atomic(&opts.out, named, &output::metadata(enc, &opts.spec))?;
    Ok(n)
}

/// The shape rules of each input kind, as messages a user can act on.
pub fn check_input_shape(enc: &FrozenEncoder, dims: &[usize]) -> Result<(), String> {
    if let crate::model::encoders::Model::Beats(m) = &enc.model {
        let p = m.config().input_patch_size;
        return match dims {
            [_, t, f] if *t >= p && *f >= p => Ok(()),
            [_, _, _] => Err(format!("fbank of shape {dims:?} has no {p}x{p} patch; `{}` needs at least {p} frames and {p} mel bins", enc.name)),
            _ => Err(format!("shape {dims:?}: expected fbank of shape (batch, frames, mel bins)")),
        };
    }
    match enc.input_kind() {
        InputKind::Audio => match dims {
            [_, _] => Ok(()),
            [_, c, _] if *c > 1 => Err(format!("shape {dims:?} looks like {c}-channel audio; `{}` takes mono input_values (batch, samples): average the channels first", enc.name)),
            _ => Err(format!("shape {dims:?}: expected input_values of shape (batch, samples), mono")),
        },
        InputKind::Image => {
            let s = enc.image_size.unwrap_or(0);
            match dims {
                [_, 3, h, w] if *h == s && *w == s => Ok(()),
                [_, 3, h, w] => Err(format!("images are {h}x{w}; `{}` takes {s}x{s}", enc.name)),
                _ => Err(format!("shape {dims:?}: expected pixel_values of shape (batch, 3, {s}, {s})")),
            }
        }
        InputKind::Video => {
            let s = enc.image_size.unwrap_or(0);
            match dims {
                [_, _, 3, h, w] if *h == s && *w == s => Ok(()),
                [_, _, 3, h, w] => Err(format!("frames are {h}x{w}; `{}` takes {s}x{s}", enc.name)),
                _ => Err(format!("shape {dims:?}: expected pixel_values of shape (batch, frames, 3, {s}, {s})")),
            }
        }
    }
}

/// Decodes the audio track as the encoder wants it: mono at its rate. Without `resample`, a file at
/// another rate or with several channels is an error (MERBench asserts 16 kHz mono).
fn read_audio(enc: &FrozenEncoder, path: &Path, resample: bool) -> Result<Vec<f32>, ExtractError> {
    let info = media::probe(path)?;
    let Some(stream) = info.audio() else {
        return Err(input_err(path.display(), format!("no audio stream; encoder `{}` needs speech", enc.name)));
    };
    let want = enc.preprocess.sample_rate;
    if want != media::AUDIO_SAMPLE_RATE {
        return Err(input_err(path.display(), format!("encoder `{}` declares sample_rate {want}; only {} Hz input is supported", enc.name, media::AUDIO_SAMPLE_RATE)));
    }
    let (rate, channels) = (stream.sample_rate.unwrap_or(0), stream.channels.unwrap_or(0));
    if !resample && (rate != want || channels != 1) {
        let what = if channels != 1 { format!("{channels} channels") } else { "mono".to_string() };
        return Err(input_err(
            path.display(),
            format!("audio is {rate} Hz, {what}; encoder `{}` takes {want} Hz mono. Convert it (`ffmpeg -i IN -ac 1 -ar {want} OUT.wav`) or pass --resample", enc.name),
        ));
    }
    let audio = media::decode_audio(path)?;
    let min = enc.min_audio_samples().max(1);
    if audio.samples.len() < min {
        return Err(input_err(
            path.display(),
            format!("the clip has {} samples ({:.1} ms); encoder `{}` needs at least {min} ({:.1} ms at {want} Hz)", audio.samples.len(), audio.samples.len() as f64 * 1000.0 / f64::from(want), enc.name, min as f64 * 1000.0 / f64::from(want)),
        ));
    }
    Ok(audio.samples)
}

/// Decodes the sampled frames at the file's own size, then the encoder's own transform (resize as PIL
/// does, normalise): (frames, 3, S, S), exactly what a run feeds the encoder.
pub fn read_frames(enc: &FrozenEncoder, path: &Path, sampling: &FrameSampling) -> Result<Tensor, ExtractError> {
    let transform = enc.pixel_transform().ok_or_else(|| input_err(&enc.name, "not an image encoder: it has no input size"))?;
    let (w, h) = media::frame_size(path)?;
    let video = media::decode_video(path, sampling, w, h)?;
    transform.apply(&video.frames, w as usize, h as usize, &Device::Cpu).map_err(|e| input_err(path.display(), e))
}

/// Joins per-chunk outputs along the batch (frame) axis.
fn concat_outputs(parts: Vec<FeatureOutput>) -> candle_core::Result<FeatureOutput> {
    let mut it = parts.into_iter();
    let Some(first) = it.next() else { candle_core::bail!("no frames") };
    let rest: Vec<FeatureOutput> = it.collect();
    if rest.is_empty() {
        return Ok(first);
    }
    Ok(match first {
        FeatureOutput::HiddenStates(h) => {
            let mut layers: Vec<Vec<Tensor>> = h.into_iter().map(|t| vec![t]).collect();
            for p in rest {
                let FeatureOutput::HiddenStates(h) = p else { candle_core::bail!("mixed outputs") };
                for (l, t) in layers.iter_mut().zip(h) {
                    l.push(t);
                }
            }
            FeatureOutput::HiddenStates(layers.iter().map(|l| Tensor::cat(l, 0)).collect::<candle_core::Result<_>>()?)
        }
        FeatureOutput::Pooled(Pooled::One(t)) => {
            let mut all = vec![t];
            for p in rest {
                let FeatureOutput::Pooled(Pooled::One(t)) = p else { candle_core::bail!("mixed outputs") };
                all.push(t);
            }
            FeatureOutput::Pooled(Pooled::One(Tensor::cat(&all, 0)?))
        }
        FeatureOutput::Pooled(Pooled::Merged { patches, cls }) => {
            let (mut ps, mut cs) = (vec![patches], vec![cls]);
            for p in rest {
                let FeatureOutput::Pooled(Pooled::Merged { patches, cls }) = p else { candle_core::bail!("mixed outputs") };
                ps.push(patches);
                cs.push(cls);
            }
            FeatureOutput::Pooled(Pooled::Merged { patches: Tensor::cat(&ps, 0)?, cls: Tensor::cat(&cs, 0)? })
        }
    })
}

/// The mean over frames (axis 0), keeping it as a batch of one.
fn mean_over_frames(out: FeatureOutput) -> candle_core::Result<FeatureOutput> {
    Ok(match out {
        FeatureOutput::HiddenStates(h) => FeatureOutput::HiddenStates(h.iter().map(|t| t.mean_keepdim(0)).collect::<candle_core::Result<_>>()?),
        FeatureOutput::Pooled(Pooled::One(t)) => FeatureOutput::Pooled(Pooled::One(t.mean_keepdim(0)?)),
        FeatureOutput::Pooled(Pooled::Merged { patches, cls }) => FeatureOutput::Pooled(Pooled::Merged { patches: patches.mean_keepdim(0)?, cls: cls.mean_keepdim(0)? }),
    })
}

/// Output names of one sample; `squeeze` drops the batch axis of one.
fn name_outputs(out: FeatureOutput, squeeze: bool) -> candle_core::Result<Named> {
    let sq = |t: Tensor| if squeeze && t.dim(0).is_ok_and(|d| d == 1) { t.squeeze(0) } else { Ok(t) };
    Ok(match out {
        FeatureOutput::HiddenStates(h) => h.into_iter().enumerate().map(|(i, t)| Ok((format!("hidden_states.{i}"), sq(t)?))).collect::<candle_core::Result<_>>()?,
        FeatureOutput::Pooled(Pooled::One(t)) => vec![(String::new(), sq(t)?)],
        FeatureOutput::Pooled(Pooled::Merged { patches, cls }) => vec![("patch_tokens".into(), sq(patches)?), ("cls".into(), sq(cls)?)],
    })
}

/// `--encoder NAME|PATH`: a registered encoder, a manifest `.toml` file, or an HF model directory whose
/// `config.json` names the architecture (`model_type` hubert, vit_mae or videomae); the last gets the
/// preprocessing of its `preprocessor_config.json`.
pub fn resolve_encoder(registry: Option<&crate::registry::Registry>, name_or_path: &str) -> Result<(PathBuf, crate::registry::EncoderManifest), ExtractError> {
    if let Some(r) = registry
        && let Some((p, m)) = r.encoders.get(name_or_path)
    {
        return Ok((p.clone(), m.clone()));
    }
    let p = Path::new(name_or_path);
    if p.is_file() && p.extension().is_some_and(|e| e == "toml") {
        let text = std::fs::read_to_string(p).map_err(|e| input_err(p.display(), e))?;
        let m: crate::registry::EncoderManifest = toml::from_str(&text).map_err(|e| input_err(p.display(), format!("not an encoder manifest: {e}")))?;
        return Ok((p.to_path_buf(), m));
    }
    if p.is_dir() {
        return manifest_from_hf_dir(p).map(|m| (p.join("config.json"), m));
    }
    let known = registry.map(|r| r.encoders.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default();
    Err(input_err(name_or_path, format!("not a registered encoder, a manifest .toml or a model directory (registered: {known})")))
}

fn manifest_from_hf_dir(dir: &Path) -> Result<crate::registry::EncoderManifest, ExtractError> {
    let read_json = |name: &str| -> Result<Option<serde_json::Value>, ExtractError> {
        let f = dir.join(name);
        if !f.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&f).map_err(|e| input_err(f.display(), e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| input_err(f.display(), format!("not JSON: {e}")))
    };
    let cfg = read_json("config.json")?.ok_or_else(|| input_err(dir.display(), "no config.json: not an HF model directory"))?;
    let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    let (architecture, modality) = match model_type {
        "hubert" => ("hubert", "audio"),
        "vit_mae" => ("vit_mae", "video"),
        "videomae" => ("videomae", "video"),
        // A bare vision tower, or a whole SigLIP model (its vision_config is read).
        "siglip_vision_model" | "siglip" => ("siglip", "video"),
        other => return Err(input_err(dir.display(), format!("config.json model_type `{other}` is not one of hubert, vit_mae, videomae, siglip_vision_model, siglip (EVA checkpoints need a manifest)"))),
    };
    let pre = read_json("preprocessor_config.json")?;
    let mut preprocess = crate::registry::Preprocess::default();
    if let Some(pre) = &pre {
        let triple = |k: &str| -> Option<[f32; 3]> {
            let a = pre.get(k)?.as_array()?;
            let v: Vec<f32> = a.iter().filter_map(|x| x.as_f64().map(|f| f as f32)).collect();
            (v.len() == 3).then(|| [v[0], v[1], v[2]])
        };
        if let (Some(m), Some(s)) = (triple("image_mean"), triple("image_std")) {
            preprocess.mean = m;
            preprocess.std = s;
        }
        // PIL resample codes: 2 = bilinear, 3 = bicubic.
        if let Some(r) = pre.get("resample").and_then(|v| v.as_i64()) {
            preprocess.resize = if r == 2 { crate::media::resize::Filter::Bilinear } else { crate::media::resize::Filter::Bicubic };
        }
        preprocess.normalize = pre.get("do_normalize").and_then(|v| v.as_bool()).unwrap_or(false) && architecture == "hubert";
    }
    let pooling = match architecture {
        "vit_mae" => Pooling::Cls,
        "siglip" => Pooling::Tokens,
        _ => Pooling::Mean,
    };
    // SigLIP: VideoLLaMA2's feature, the second-to-last layer (no post-layernorm).
    let layers = if architecture == "siglip" { vec![-2] } else { Vec::new() };
    Ok(crate::registry::EncoderManifest {
        name: dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "encoder".into()),
        architecture: architecture.into(),
        modality: modality.into(),
        description: format!("HF model directory {}", dir.display()),
        config: toml::Table::new(),
        // Relative to the "manifest" path, `<dir>/config.json`.
        weights: crate::registry::Weights::Path { path: ".".into() },
        preprocess,
        features: FeatureSpec { layers, pooling, chunk_seconds: None },
    })
}
