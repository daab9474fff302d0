//! The Emotion-LLaMA encoders at full fidelity, in the HF / LAVIS tensor layouts so real checkpoints load
//! as they are: HuBERT (audio), ViT-MAE (local face view), VideoMAE (temporal view), EVA ViT-g (global);
//! and VideoLLaMA2's SigLIP vision tower. They are frozen feature extractors, so they use candle's fused
//! ops. VideoLLaMA2-AV's BEATs (audio) is here too, in the reference's state-dict names; it is also
//! trainable (see [`beats`]).
//!
//! [`FrozenEncoder`] binds one of them to a manifest (`plugins/encoders/*.toml`): configuration, weights,
//! preprocessing and the feature (layers + pooling) the recipe or `emollama extract` wants.

pub mod beats;
pub mod checkpoint;
pub mod eva_vit;
pub mod features;
pub mod hubert;
pub mod siglip;
pub mod videomae;
mod vit_block;
pub mod vit_mae;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use self::checkpoint::Checkpoint;
use self::features::{FeatureSpec, Pooled, Pooling};
use crate::registry::{EncoderManifest, Preprocess};

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("encoder weights `{path}`: {detail}")]
    Load { path: String, detail: String },
    #[error("encoder `{encoder}` (`{manifest}`): {detail}")]
    Manifest { encoder: String, manifest: String, detail: String },
    #[error("input `{input}`: {detail}")]
    Input { input: String, detail: String },
    #[error(transparent)]
    Hub(#[from] Box<crate::model::hub::HubError>),
    #[error("encoder `{encoder}`: {source}")]
    Candle { encoder: String, source: candle_core::Error },
    #[error(transparent)]
    Key(#[from] crate::model::hf_config::KeyError),
}

/// What an encoder consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// (batch, samples) mono waveform.
    Audio,
    /// (batch, 3, H, W) one image per item (per-frame encoders run on every sampled frame).
    Image,
    /// (batch, T, 3, H, W) a clip.
    Video,
}

/// One of the four architectures with its weights.
pub enum Model {
    Hubert(Box<hubert::HubertModel>),
    VitMae(vit_mae::ViTMAEModel),
    VideoMae(videomae::VideoMAEModel),
    /// EVA ViT-g followed by MiniGPT-v2's `ln_vision`.
    Eva { vit: eva_vit::EvaVit, ln_vision: eva_vit::LnVision },
    /// SigLIP's vision tower (VideoLLaMA2), without its pooling head.
    Siglip(siglip::SiglipVisionModel),
    /// VideoLLaMA2-AV's audio tower; its input is Kaldi fbank (batch, frames, 128).
    Beats(Box<beats::Beats>),
}

/// A frozen encoder bound to its manifest.
pub struct FrozenEncoder {
    pub name: String,
    pub architecture: String,
    pub model: Model,
    pub preprocess: Preprocess,
    pub features: FeatureSpec,
    /// Output width of one token.
    pub hidden_size: usize,
    /// Visual input side (square), frames per clip (VideoMAE).
    pub image_size: Option<usize>,
    pub num_frames: Option<usize>,
}

/// The tensor every checkpoint of an architecture holds, to find where its names start (`None`: not a
/// pretrained encoder architecture).
fn probe_tensor(architecture: &str) -> Option<&'static str> {
    match architecture {
        "hubert" => Some("feature_extractor.conv_layers.0.conv.weight"),
        "vit_mae" => Some("embeddings.cls_token"),
        "videomae" => Some("embeddings.patch_embeddings.projection.weight"),
        "eva_vit" => Some("patch_embed.proj.weight"),
        "siglip" => Some("embeddings.patch_embedding.weight"),
        "beats" => Some("patch_embedding.weight"),
        _ => None,
    }
}

/// A backend whose weight matrices (rank-2 `*.weight`: every Linear layer of these encoders, which hold
/// nearly all their parameters) come in `dtype`; everything else (norms, biases, convolutions, position
/// embeddings) as asked. The layers compute in f32 and cast each matrix at use (oneDNN packs it once).
struct MatricesIn<B> {
    inner: B,
    dtype: DType,
}

impl<B: candle_nn::var_builder::SimpleBackend> candle_nn::var_builder::SimpleBackend for MatricesIn<B> {
    fn get(&self, s: candle_core::Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let matrix = s.rank() == 2 && name.ends_with(".weight");
        self.inner.get(s, name, h, if matrix { self.dtype } else { dtype }, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        if t.rank() == 2 && name.ends_with(".weight") { t.to_dtype(self.dtype) } else { Ok(t) }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

fn matrices_in<B: candle_nn::var_builder::SimpleBackend + 'static>(inner: B, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(MatricesIn { inner, dtype }), DType::F32, device.clone())
}

impl FrozenEncoder {
    /// Loads the manifest's weights (downloading them if the source says so; `random` initialises from
    /// `seed`) on `device`, all in f32.
    pub fn load(manifest_path: &Path, m: &EncoderManifest, seed: u64, device: &Device) -> Result<Self, EncoderError> {
        Self::load_in(manifest_path, m, seed, DType::F32, device)
    }

    /// As [`Self::load`], the pretrained or seeded weight matrices kept in `matrix_dtype` (the run's
    /// `runtime.dtype`; bf16 halves an encoder's memory). Activations stay f32.
    pub fn load_in(manifest_path: &Path, m: &EncoderManifest, seed: u64, matrix_dtype: DType, device: &Device) -> Result<Self, EncoderError> {
        let local = crate::model::hub::resolve(&m.name, manifest_path, &m.weights).map_err(Box::new)?;
        match (local, &m.weights) {
            (None, crate::registry::Weights::Seeded { seed }) => Self::build(manifest_path, m, None, matrices_in(crate::model::init::SeededTensors { seed: *seed }, matrix_dtype, device)),
            (None, _) => {
                let varmap = VarMap::new();
                let vb = crate::model::init::SeededVarMap::builder(&varmap, seed, DType::F32, device);
                Self::build(manifest_path, m, None, vb)
            }
            (Some(local), _) => {
                let probe = probe_tensor(&m.architecture).ok_or_else(|| EncoderError::Manifest {
                    encoder: m.name.clone(),
                    manifest: manifest_path.display().to_string(),
                    detail: format!("architecture `{}` is not a pretrained encoder (known: {})", m.architecture, crate::registry::PRETRAINED_ENCODER_ARCHITECTURES.join(", ")),
                })?;
                let ckpt = Checkpoint::read(&local, device)?.rooted_at(probe, &["ln_vision."])?;
                let origin = ckpt.origin.display().to_string();
                let config_json = ckpt.config_json.clone();
                let vb = matrices_in(ckpt.tensors, matrix_dtype, device);
                Self::build(manifest_path, m, config_json.as_deref(), vb).map_err(|e| match e {
                    EncoderError::Candle { source, .. } => EncoderError::Load { path: origin, detail: source.to_string() },
                    other => other,
                })
            }
        }
    }

    /// Builds the architecture from `vb` (rooted at the architecture's own names). The configuration is
    /// the weights' `config.json` when there is one, with the manifest's `[config]` keys on top.
    pub fn build(manifest_path: &Path, m: &EncoderManifest, config_json: Option<&Path>, vb: VarBuilder) -> Result<Self, EncoderError> {
        let merr = |detail: String| EncoderError::Manifest { encoder: m.name.clone(), manifest: manifest_path.display().to_string(), detail };
        let mut table = match config_json {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| merr(format!("{}: {e}", p.display())))?;
                let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| merr(format!("{}: not JSON: {e}", p.display())))?;
                if m.architecture == "siglip" {
                    json = siglip::vision_config(p, json)?;
                }
                let obj = json.as_object_mut().ok_or_else(|| merr(format!("{}: not a JSON object", p.display())))?;
                match m.architecture.as_str() {
                    "hubert" => hubert::check_hf_keys(p, obj)?,
                    "vit_mae" => vit_mae::check_hf_keys(p, obj)?,
                    "videomae" => videomae::check_hf_keys(p, obj)?,
                    "siglip" => siglip::check_hf_keys(p, obj)?,
                    _ => Vec::new(),
                };
                json_to_toml_table(&json)
            }
            None => toml::Table::new(),
        };
        for (k, v) in &m.config {
            table.insert(k.clone(), v.clone());
        }
        fn parse<T: serde::de::DeserializeOwned>(table: toml::Table, merr: &dyn Fn(String) -> EncoderError) -> Result<T, EncoderError> {
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| merr(format!("[config]: {e}")))
        }
        let cerr = |source: candle_core::Error| EncoderError::Candle { encoder: m.name.clone(), source };
        let (model, hidden_size, image_size, num_frames) = match m.architecture.as_str() {
            "hubert" => {
                let cfg: hubert::HubertConfig = parse(table, &merr)?;
                let h = cfg.hidden_size;
                (Model::Hubert(Box::new(hubert::HubertModel::new(&cfg, vb).map_err(cerr)?)), h, None, None)
            }
            "vit_mae" => {
                let cfg: vit_mae::ViTMAEConfig = parse(table, &merr)?;
                let (h, s) = (cfg.hidden_size, cfg.image_size);
                (Model::VitMae(vit_mae::ViTMAEModel::new(&cfg, vb).map_err(cerr)?), h, Some(s), None)
            }
            "videomae" => {
                let cfg: videomae::VideoMAEConfig = parse(table, &merr)?;
                let (h, s, t) = (cfg.hidden_size, cfg.image_size, cfg.num_frames);
                (Model::VideoMae(videomae::VideoMAEModel::new(&cfg, vb).map_err(cerr)?), h, Some(s), Some(t))
            }
            "eva_vit" => {
                let cfg: eva_vit::EvaVitConfig = parse(table, &merr)?;
                let (h, s) = (cfg.embed_dim, cfg.img_size);
                // `ln_vision` is MiniGPT-v2's, beside the ViT; absent from a bare LAVIS ViT checkpoint, where
                // it is the identity (its saved affine is that too: frozen parameters are never saved).
                let ln_vision = if vb.contains_tensor("patch_embed.proj.weight") {
                    eva_vit::LnVision::load_or_identity(h, vb.pp("ln_vision")).map_err(cerr)?
                } else {
                    // Random weights: a fresh LayerNorm (weight 1, bias 0), as MiniGPT-v2 creates it.
                    eva_vit::LnVision::new(h, vb.pp("ln_vision")).map_err(cerr)?
                };
                let vit = eva_vit::EvaVit::new(&cfg, vb).map_err(cerr)?;
                (Model::Eva { vit, ln_vision }, h, Some(s), None)
            }
            "siglip" => {
                let cfg: siglip::SiglipVisionConfig = parse(table, &merr)?;
                let (h, s) = (cfg.hidden_size, cfg.image_size);
                (Model::Siglip(siglip::SiglipVisionModel::new(&cfg, vb).map_err(cerr)?), h, Some(s), None)
            }
            "beats" => {
                let cfg: beats::BeatsConfig = parse(table, &merr)?;
                cfg.validate().map_err(|e| merr(format!("[config]: {e}")))?;
                if m.preprocess.normalize {
                    return Err(merr("[preprocess] normalize: BEATs normalises its fbank itself; per-utterance waveform normalisation is HuBERT's".into()));
                }
                if m.features.chunk_seconds.is_some() {
                    return Err(merr("[features] chunk_seconds is HuBERT's chunked long-audio path; BEATs takes the prepared clip whole".into()));
                }
                let h = cfg.encoder_embed_dim;
                (Model::Beats(Box::new(beats::Beats::new(&cfg, vb).map_err(cerr)?)), h, None, None)
            }
            other => return Err(merr(format!("architecture `{other}` is not a pretrained encoder (known: {})", crate::registry::PRETRAINED_ENCODER_ARCHITECTURES.join(", ")))),
        };
        if let Some(clips) = &m.preprocess.audio_clips {
            clips.validate(m.preprocess.sample_rate).map_err(|e| merr(format!("[preprocess] {e}")))?;
        }
        let enc = Self {
            name: m.name.clone(),
            architecture: m.architecture.clone(),
            model,
            preprocess: m.preprocess.clone(),
            features: m.features.clone(),
            hidden_size,
            image_size,
            num_frames,
        };
        if let Some(first) = m.features.layers.first() {
            let count = enc.hidden_state_count();
            features::resolve_layers(&m.features.layers, count).map_err(|e| merr(format!("[features] layers {:?} (first {first}): {e}", m.features.layers)))?;
        }
        Ok(enc)
    }

    pub fn input_kind(&self) -> InputKind {
        match self.model {
            Model::Hubert(_) | Model::Beats(_) => InputKind::Audio,
            Model::VideoMae(_) => InputKind::Video,
            Model::VitMae(_) | Model::Eva { .. } | Model::Siglip(_) => InputKind::Image,
        }
    }

    /// Number of hidden states `hidden_states` returns.
    pub fn hidden_state_count(&self) -> usize {
        match &self.model {
            Model::Hubert(m) => m.config().num_hidden_layers + 1,
            Model::VitMae(m) => m.config().num_hidden_layers + 1,
            Model::VideoMae(m) => m.config().num_hidden_layers + 1,
            Model::Eva { vit, .. } => vit.config().depth + 1,
            Model::Siglip(m) => m.config().num_hidden_layers + 1,
            Model::Beats(m) => m.config().encoder_layers + 1,
        }
    }

    /// Every hidden state, as the reference returns them (embeddings output, then each layer's).
    pub fn hidden_states(&self, input: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match &self.model {
            Model::Hubert(m) => match self.chunk_samples() {
                Some(c) => m.forward_chunked(input, c),
                None => m.forward(input),
            },
            Model::VitMae(m) => m.forward(input),
            Model::VideoMae(m) => m.forward(input),
            Model::Eva { vit, .. } => vit.forward(input),
            Model::Siglip(m) => m.forward(input),
            Model::Beats(m) => m.forward_states(input),
        }
    }

    /// The model's final output: after its final norm (ViT-MAE; VideoMAE without mean pooling), EVA's
    /// last block through `ln_vision`, HuBERT's last hidden state.
    pub fn final_output(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        match &self.model {
            Model::Hubert(_) => self.hidden_states(input)?.pop().ok_or_else(|| candle_core::Error::Msg("no hidden states".into())),
            Model::VitMae(m) => m.forward_last(input),
            Model::VideoMae(m) => m.forward_last(input),
            Model::Eva { vit, ln_vision } => ln_vision.forward(&vit.forward_last(input)?),
            Model::Siglip(m) => m.forward_last(input),
            Model::Beats(m) => m.forward(input),
        }
    }

    fn chunk_samples(&self) -> Option<usize> {
        self.features.chunk_seconds.map(|s| (s * f64::from(self.preprocess.sample_rate)).round() as usize).filter(|&c| c > 0)
    }

    /// The feature of `spec` for a batch of inputs (already prepared: normalised pixels or waveform).
    /// `Pooling::None` gives every hidden state.
    pub fn features(&self, input: &Tensor, spec: &FeatureSpec) -> candle_core::Result<FeatureOutput> {
        if spec.pooling == Pooling::None {
            return Ok(FeatureOutput::HiddenStates(self.hidden_states(input)?));
        }
        let tokens = if spec.layers.is_empty() {
            self.final_output(input)?
        } else {
            let layers = features::resolve_layers(&spec.layers, self.hidden_state_count()).map_err(candle_core::Error::Msg)?;
            let hidden = match &self.model {
                // Only the layers up to the deepest one selected (VideoLLaMA2's −2 skips the last).
                Model::Siglip(m) => m.forward_upto(input, layers.iter().copied().max().unwrap_or(0))?,
                _ => self.hidden_states(input)?,
            };
            let mut t = features::select_layers(&hidden, &layers)?;
            if let Model::Eva { ln_vision, .. } = &self.model {
                t = ln_vision.forward(&t)?;
            }
            t
        };
        Ok(FeatureOutput::Pooled(features::pool(&tokens, spec.pooling)?))
    }

    /// What this image encoder is fed: its input size, the manifest's resize filter, mean and std
    /// (`None` for an audio encoder).
    pub fn pixel_transform(&self) -> Option<crate::media::PixelTransform> {
        let s = self.image_size?;
        let p = &self.preprocess;
        Some(crate::media::PixelTransform { width: s, height: s, filter: p.resize, mean: p.mean, std: p.std })
    }

    /// Prepares a (batch, samples) waveform as the encoder takes it: the manifest's clip selection
    /// (`[preprocess] audio_clips`, per row), then HuBERT's per-utterance normalisation, or BEATs' fbank
    /// (batch, frames, 128).
    /// `lengths`: each row's valid samples, the track the clips are selected from (`None`: whole rows).
    pub fn prepare_audio(&self, wave: &Tensor, lengths: Option<&[usize]>) -> candle_core::Result<Tensor> {
        let (clips, rate) = (self.preprocess.audio_clips.as_ref(), self.preprocess.sample_rate);
        if let Model::Beats(_) = &self.model {
            return beats::prepare_input(wave, lengths, clips, rate);
        }
        let wave = crate::media::audio_clips::select_rows(clips, wave, lengths, rate)?;
        if self.preprocess.normalize { hubert::normalize_waveform(&wave) } else { Ok(wave) }
    }

    /// The fewest waveform samples `prepare_audio` turns into at least one output token.
    pub fn min_audio_samples(&self) -> usize {
        if self.preprocess.audio_clips.is_some() {
            return 0;
        }
        match &self.model {
            Model::Hubert(m) => m.min_samples(),
            Model::Beats(m) => crate::media::fbank::KaldiFbank::new(&crate::media::fbank::FbankOptions::beats()).map_or(1, |f| f.samples_for(m.min_frames())),
            _ => 1,
        }
    }

    /// The tensor `emollama extract --input FILE.safetensors` reads: already prepared input.
    pub fn input_key(&self) -> &'static str {
        match (&self.model, self.input_kind()) {
            (Model::Beats(_), _) => "fbank",
            (_, InputKind::Audio) => "input_values",
            _ => "pixel_values",
        }
    }
}

/// The result of [`FrozenEncoder::features`].
#[derive(Debug, Clone)]
pub enum FeatureOutput {
    HiddenStates(Vec<Tensor>),
    Pooled(Pooled),
}

/// HF `config.json` values as a TOML table (nulls dropped: the config's serde defaults apply).
fn json_to_toml_table(v: &serde_json::Value) -> toml::Table {
    let mut t = toml::Table::new();
    if let Some(obj) = v.as_object() {
        for (k, v) in obj {
            if let Some(tv) = json_to_toml(v) {
                t.insert(k.clone(), tv);
            }
        }
    }
    t
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        J::Object(_) => toml::Value::Table(json_to_toml_table(v)),
    })
}
