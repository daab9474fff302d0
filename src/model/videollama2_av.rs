//! VideoLLaMA2.1-AV's multimodal tokens (`Videollama2MetaForCausalLM.encode_images_or_videos` with
//! `va=True`):
//!
//! - video: SigLIP (frozen) on every sampled frame, its layer −2 patch tokens → `stc_connector_v35`
//!   (trainable) → (frames / 2) · ⌊side / 2⌋² tokens (16 frames of 27² → 1352);
//! - audio: the reference's clip selection (8 × 2 s, padded to 30 s) and Kaldi fbank of the waveform →
//!   BEATs (trainable in the reference's stages 2 and 3) → `mlp2x_gelu` → one token per BEATs patch (1496).
//!
//! Both go where the prompt's `<video>` is, video first (the prompt puts `<VideoHere><FeatureHere>` there).
//! Parameter names: `projector.video.*` (VideoLLaMA2's `mm_projector`), `projector.audio.*`
//! (`mm_projector_a`), `encoder.audio.*` (`audio_tower`, BEATs' own names); SigLIP stays outside the run's
//! parameters unless its weights are random (`encoder.video.*`, frozen all the same).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::encoders::beats::{Beats, prepare_input};
use super::encoders::FrozenEncoder;
use super::encoders::features::{FeatureSpec, Pooled, Pooling};
use super::media_batch::MediaBatch;
use super::projector::{Projector, ProjectorKind};
use super::stc::{StcConfig, StcConnectorV35};
use crate::media::audio_clips::AudioClips;
use crate::media::{PixelView, ViewRole};

/// BEATs with its input preparation and projector.
struct AudioTower {
    beats: Beats,
    /// The reference's clip selection (`None`: the whole decoded waveform).
    clips: Option<AudioClips>,
    rate: u32,
    projector: Projector,
}

/// The vision tower (frozen) and the connector.
struct VisionTower {
    siglip: FrozenEncoder,
    connector: StcConnectorV35,
}

/// The encoders, connector and projector of the family (each modality optional).
pub struct VideoLlama2AvEncoders {
    vision: Option<VisionTower>,
    audio: Option<AudioTower>,
    views: Vec<PixelView>,
}

impl VideoLlama2AvEncoders {
    /// `siglip`: the frozen vision tower (its features spec must take the tokens of one layer per frame);
    /// `beats`: the audio tower built from `vb.pp("encoder.audio")` with its manifest's `audio_clips` and
    /// sample rate; `hidden`: the LLM width. `vb` is the model root.
    pub fn new(siglip: Option<FrozenEncoder>, beats: Option<(Beats, Option<AudioClips>, u32)>, audio_projector: ProjectorKind, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let mut views = Vec::new();
        let vision = match siglip {
            Some(siglip) => {
                if siglip.features.pooling != Pooling::Tokens || siglip.features.layers.len() != 1 {
                    candle_core::bail!("encoder `{}`: the STC connector takes one layer's tokens per frame: set `[features] layers = [-2]` and `pooling = \"tokens\"`", siglip.name);
                }
                let transform = siglip.pixel_transform().ok_or_else(|| candle_core::Error::Msg(format!("encoder `{}` is not an image encoder", siglip.name)))?;
                views.push(PixelView { role: ViewRole::Frames, transform });
                let connector = StcConnectorV35::new(&StcConfig::new(siglip.hidden_size, hidden), vb.pp("projector.video"))?;
                Some(VisionTower { siglip, connector })
            }
            None => None,
        };
        let audio = match beats {
            Some((beats, clips, rate)) => {
                let width = beats.config().encoder_embed_dim;
                Some(AudioTower { projector: Projector::new(audio_projector, width, hidden, vb.pp("projector.audio"))?, beats, clips, rate })
            }
            None => None,
        };
        Ok(Self { vision, audio, views })
    }

    /// What the vision tower is fed: every sampled frame, through SigLIP's transform.
    pub fn views(&self) -> Vec<PixelView> {
        self.views.clone()
    }

    /// Video tokens (batch, tokens, hidden) and audio tokens (batch, tokens, hidden), in `dtype`; a
    /// modality that is off or absent gives `None`. `train`: BEATs in training mode (its dropouts and
    /// LayerDrop).
    pub fn tokens(&self, media: &MediaBatch, use_video: bool, use_audio: bool, dtype: candle_core::DType, train: bool) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let video = match (use_video, &self.vision) {
            (true, Some(v)) => Some(v.forward(media.need(ViewRole::Frames)?, dtype)?),
            _ => None,
        };
        let audio = match (use_audio, &self.audio) {
            (true, Some(a)) => Some(a.forward(&media.audio, &media.audio_lengths, dtype, train)?),
            _ => None,
        };
        Ok((video, audio))
    }

    /// Restarts BEATs' training-mode dropout stream.
    pub fn reseed_dropout(&self, seed: u64) {
        if let Some(a) = &self.audio {
            a.beats.reseed_dropout(seed);
        }
    }
}

impl VisionTower {
    /// (batch, frames, 3, h, w) pixels → (batch, connector tokens, hidden).
    fn forward(&self, frames: &Tensor, dtype: candle_core::DType) -> Result<Tensor> {
        let (b, n, c, h, w) = frames.dims5()?;
        let spec = FeatureSpec { pooling: Pooling::Tokens, ..self.siglip.features.clone() };
        let tokens = match self.siglip.features(&frames.reshape((b * n, c, h, w))?, &spec)? {
            super::encoders::FeatureOutput::Pooled(Pooled::One(t)) => t,
            _ => candle_core::bail!("encoder `{}` did not give per-frame tokens", self.siglip.name),
        };
        // Frozen: no gradient flows into the tower.
        let tokens = tokens.detach();
        let (_, t, d) = tokens.dims3()?;
        self.connector.forward(&tokens.reshape((b, n, t, d))?.to_dtype(dtype)?)
    }
}

impl AudioTower {
    /// (batch, samples) waveforms with each row's valid samples → (batch, BEATs patches, hidden).
    fn forward(&self, wave: &Tensor, lengths: &[usize], dtype: candle_core::DType, train: bool) -> Result<Tensor> {
        let fbank = prepare_input(wave, Some(lengths), self.clips.as_ref(), self.rate)?;
        let states = self.beats.forward_t(&fbank, train)?;
        self.projector.forward(&states.to_dtype(dtype)?)
    }
}
