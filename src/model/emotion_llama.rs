//! Emotion-LLaMA's multimodal tokens from its four frozen encoders (`MiniGPTv2.encode_img`):
//!
//! - global: EVA ViT-g on one frame, through `ln_vision`, patch tokens merged by four → `llama_proj`
//!   (256 tokens at `<VideoHere>`), and its CLS token → `cls_tk_llama_proj`;
//! - local: the MAE feature of every sampled (face) frame, averaged over frames → `feats_llama_proj1`;
//! - temporal: the VideoMAE feature of the clip → `feats_llama_proj2`;
//! - audio: the HuBERT feature of the waveform → `feats_llama_proj3`.
//!
//! `<FeatureHere>` receives `[local, temporal, audio, CLS]`, the reference's order. The projector names
//! are the reference's, under `projector.`. Encoder outputs are detached: the encoders are frozen, and
//! their fused kernels have no backward.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::encoders::FrozenEncoder;
use super::encoders::features::{FeatureSpec, Pooled, Pooling};
use super::media_batch::MediaBatch;
use super::projector::Projector;
use crate::media::{PixelView, ViewRole};

/// The frozen encoders' outputs for a batch (each absent when its encoder or modality is).
#[derive(Debug, Clone, Default)]
pub struct EncodedFeatures {
    /// EVA patch tokens after `ln_vision`, merged by four: (batch, 256, 4 × width).
    pub patches: Option<Tensor>,
    /// EVA CLS token: (batch, width).
    pub cls: Option<Tensor>,
    /// Frame-averaged local (MAE) feature: (batch, width).
    pub local: Option<Tensor>,
    /// Clip (VideoMAE) feature: (batch, width).
    pub temporal: Option<Tensor>,
    /// Utterance (HuBERT) feature: (batch, width).
    pub audio: Option<Tensor>,
}

impl EncodedFeatures {
    fn fields(&self) -> [(&'static str, &Option<Tensor>); 5] {
        [("patches", &self.patches), ("cls", &self.cls), ("local", &self.local), ("temporal", &self.temporal), ("audio", &self.audio)]
    }

    /// Sample `i`'s tensors by name, without the batch dimension.
    pub fn sample(&self, i: usize) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        for (name, t) in self.fields() {
            if let Some(t) = t {
                out.insert(name.to_string(), t.narrow(0, i, 1)?.squeeze(0)?.contiguous()?);
            }
        }
        Ok(out)
    }

    /// A batch from per-sample tensors (as [`Self::sample`] gives them); a field is present when every
    /// sample has it.
    pub fn stack(items: &[std::collections::HashMap<String, Tensor>]) -> Result<Self> {
        let field = |name: &str| -> Result<Option<Tensor>> {
            let ts: Option<Vec<&Tensor>> = items.iter().map(|m| m.get(name)).collect();
            match ts {
                Some(ts) if !ts.is_empty() => Ok(Some(Tensor::stack(&ts, 0)?)),
                _ => Ok(None),
            }
        };
        Ok(Self { patches: field("patches")?, cls: field("cls")?, local: field("local")?, temporal: field("temporal")?, audio: field("audio")? })
    }
}

impl EncodedFeatures {
    /// Every present feature in `dtype` (the projectors compute in the run's dtype).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        let cast = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(dtype)).transpose();
        Ok(Self { patches: cast(&self.patches)?, cls: cast(&self.cls)?, local: cast(&self.local)?, temporal: cast(&self.temporal)?, audio: cast(&self.audio)? })
    }
}

/// The four frozen encoders (each optional but the global one).
struct Frozen {
    global: FrozenEncoder,
    local: Option<FrozenEncoder>,
    temporal: Option<FrozenEncoder>,
    audio: Option<FrozenEncoder>,
}

/// The four encoders and their projectors. The encoders can be released once their features are computed
/// (cached), leaving the projectors: see [`Self::release_encoders`].
pub struct EmotionLlamaEncoders {
    frozen: Option<Frozen>,
    /// What each encoder is fed, kept past a release.
    views: Vec<PixelView>,
    llama_proj: Projector,
    cls_proj: Projector,
    local_proj: Option<Projector>,
    temporal_proj: Option<Projector>,
    audio_proj: Option<Projector>,
}

impl EmotionLlamaEncoders {
    /// `vb` is the model root (projectors go under `projector.`); `hidden` the LLM width.
    pub fn new(
        global: FrozenEncoder,
        local: Option<FrozenEncoder>,
        temporal: Option<FrozenEncoder>,
        audio: Option<FrozenEncoder>,
        projector: super::projector::ProjectorKind,
        hidden: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let p = vb.pp("projector");
        let g = global.hidden_size;
        let proj = |enc: &Option<FrozenEncoder>, name: &str| -> Result<Option<Projector>> {
            enc.as_ref().map(|e| Projector::new(projector, e.hidden_size, hidden, p.pp(name))).transpose()
        };
        let frozen = Frozen { global, local, temporal, audio };
        Ok(Self {
            llama_proj: Projector::new(projector, 4 * g, hidden, p.pp("llama_proj"))?,
            cls_proj: Projector::new(projector, g, hidden, p.pp("cls_tk_llama_proj"))?,
            local_proj: proj(&frozen.local, "feats_llama_proj1")?,
            temporal_proj: proj(&frozen.temporal, "feats_llama_proj2")?,
            audio_proj: proj(&frozen.audio, "feats_llama_proj3")?,
            views: frozen.views()?,
            frozen: Some(frozen),
        })
    }

    /// What each encoder is fed: its role and its own transform (size, filter, mean and std).
    pub fn views(&self) -> Vec<PixelView> {
        self.views.clone()
    }

    /// Frees the frozen encoders' weights (their features are computed, or cached): the projectors stay,
    /// [`Self::features`] is an error from now on.
    pub fn release_encoders(&mut self) {
        self.frozen = None;
        crate::accel::release_free_memory();
    }

    fn frozen(&self) -> Result<&Frozen> {
        self.frozen.as_ref().ok_or_else(|| candle_core::Error::Msg("the frozen encoders were released: features must come from the feature cache".into()))
    }

    /// The frozen encoders' outputs, before the projectors (detached): what the feature cache keeps. Each
    /// view's pixels are already transformed for its encoder (see [`Self::views`]).
    pub fn features(&self, media: &MediaBatch, use_video: bool, use_audio: bool) -> Result<EncodedFeatures> {
        let f = self.frozen()?;
        let mut out = EncodedFeatures::default();
        if use_video {
            let spec = FeatureSpec { pooling: Pooling::Merge4, ..f.global.features.clone() };
            let Some(Pooled::Merged { patches, cls }) = pooled(&f.global, media.need(ViewRole::Global)?, &spec)? else {
                candle_core::bail!("encoder `{}` did not give merged patch tokens", f.global.name);
            };
            out.patches = Some(patches.detach());
            out.cls = Some(cls.detach());
            if let Some(enc) = &f.local {
                let frames = media.need(ViewRole::Local)?;
                let (b, n, c, h, w) = frames.dims5()?;
                let Some(Pooled::One(per_frame)) = pooled(enc, &frames.reshape((b * n, c, h, w))?, &enc.features)? else {
                    candle_core::bail!("encoder `{}`: the local view needs a pooled feature per frame", enc.name);
                };
                out.local = Some(per_frame.detach().reshape((b, n, ()))?.mean(1)?);
            }
            if let Some(enc) = &f.temporal {
                let Some(Pooled::One(t)) = pooled(enc, media.need(ViewRole::Temporal)?, &enc.features)? else {
                    candle_core::bail!("encoder `{}`: the temporal view needs a pooled feature per clip", enc.name);
                };
                out.temporal = Some(t.detach());
            }
        }
        if use_audio && let Some(enc) = &f.audio {
            let x = enc.prepare_audio(&media.audio, Some(&media.audio_lengths))?;
            let Some(Pooled::One(a)) = pooled(enc, &x, &enc.features)? else {
                candle_core::bail!("encoder `{}`: the audio view needs a pooled feature per clip", enc.name);
            };
            out.audio = Some(a.detach());
        }
        Ok(out)
    }

    /// Projects encoder outputs into LLM tokens: `<VideoHere>` (batch, 256, hidden) and `<FeatureHere>`
    /// `[local, temporal, audio, CLS]`; a disabled or absent modality contributes none.
    pub fn project(&self, f: &EncodedFeatures, use_video: bool, use_audio: bool) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        let mut feature = Vec::new();
        let mut video = None;
        let mut cls_token = None;
        if use_video {
            if let Some(p) = &f.patches {
                video = Some(self.llama_proj.forward(p)?);
            }
            if let Some(c) = &f.cls {
                cls_token = Some(self.cls_proj.forward(&c.unsqueeze(1)?)?);
            }
            if let (Some(x), Some(p)) = (&f.local, &self.local_proj) {
                feature.push(p.forward(&x.unsqueeze(1)?)?);
            }
            if let (Some(x), Some(p)) = (&f.temporal, &self.temporal_proj) {
                feature.push(p.forward(&x.unsqueeze(1)?)?);
            }
        }
        if use_audio && let (Some(x), Some(p)) = (&f.audio, &self.audio_proj) {
            feature.push(p.forward(&x.unsqueeze(1)?)?);
        }
        if let Some(cls) = cls_token {
            feature.push(cls);
        }
        Ok((video, feature))
    }
}

impl Frozen {
    fn views(&self) -> Result<Vec<PixelView>> {
        let view = |role: ViewRole, enc: &FrozenEncoder| -> Result<PixelView> {
            let transform = enc.pixel_transform().ok_or_else(|| candle_core::Error::Msg(format!("encoder `{}` ({} view) has no input size", enc.name, role.name())))?;
            Ok(PixelView { role, transform })
        };
        let mut out = vec![view(ViewRole::Global, &self.global)?];
        if let Some(e) = &self.local {
            out.push(view(ViewRole::Local, e)?);
        }
        if let Some(e) = &self.temporal {
            out.push(view(ViewRole::Temporal, e)?);
        }
        Ok(out)
    }
}

fn pooled(enc: &FrozenEncoder, x: &Tensor, spec: &FeatureSpec) -> Result<Option<Pooled>> {
    Ok(match enc.features(x, spec)? {
        super::encoders::FeatureOutput::Pooled(p) => Some(p),
        super::encoders::FeatureOutput::HiddenStates(_) => None,
    })
}
