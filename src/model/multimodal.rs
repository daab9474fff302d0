//! The multimodal model: encoders → projectors → tokens spliced into the LLM's input embeddings.
//!
//! Token layout (after Emotion-LLaMA's `encode_img` / `prompt_wrap`): at `<VideoHere>` the projected
//! spatial tokens of the frame-averaged feature map (as Emotion-LLaMA puts EVA's patch tokens there), then
//! one projected token per sampled frame; at `<FeatureHere>` the projected mean frame feature and the
//! projected mean audio feature. Spatial tokens matter for learning from scratch: a local feature of the
//! mouth region is informative even before the encoder has learned to pool it, so the LLM learns to attend
//! to the visual tokens before it learns to ignore them.
//!
//! The sequence is `[BOS] prompt-with-tokens answer [EOS]`; only answer and EOS carry loss.

use candle_core::{Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::llama::Llama;
pub use super::media_batch::MediaBatch;
use crate::media::ViewRole;
use crate::recipe::LossReduction;
use super::projector::Projector;
use super::prompt::Segment;
use super::cnn::TinyCnn;
use super::vit::TinyVit;
use super::wave::TinyWave;

/// A tokenized prompt: text pieces (ids) and placeholders, plus the answer ids (empty at generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub pieces: Vec<Piece>,
    pub answer: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u32>),
    Video,
    Feature,
    /// Video then feature tokens (the reference evaluation layout).
    AllMultimodal,
}

impl TokenizedPrompt {
    pub fn from_segments(
        segments: &[Segment],
        answer: Vec<u32>,
        mut encode: impl FnMut(&str) -> std::result::Result<Vec<u32>, super::tokenizer::TokenizerError>,
    ) -> std::result::Result<Self, super::tokenizer::TokenizerError> {
        let mut pieces = Vec::with_capacity(segments.len());
        for s in segments {
            pieces.push(match s {
                Segment::Text(t) => Piece::Text(encode(t)?),
                Segment::Video => Piece::Video,
                Segment::Feature => Piece::Feature,
                Segment::AllMultimodal => Piece::AllMultimodal,
            });
        }
        Ok(Self { pieces, answer })
    }
}

/// Multimodal tokens for a batch.
#[derive(Debug, Clone)]
pub struct MmTokens {
    /// (batch, frames, hidden) for `<VideoHere>`.
    pub video: Tensor,
    /// (batch, k, hidden) for `<FeatureHere>`.
    pub feature: Tensor,
}

/// Inputs ready for the LLM.
pub struct LlmInputs {
    pub embeds: Tensor,
    pub valid: Tensor,
    /// Per sample, the number of real positions.
    pub lengths: Vec<usize>,
    /// Flat indices (b * seq + t) of positions whose next token is a target, and those targets.
    pub target_rows: Vec<u32>,
    pub targets: Vec<u32>,
    /// For each target, the index of its sample.
    pub target_sample: Vec<usize>,
}

/// A per-frame visual encoder: (n, 3, size, size) → (n, hidden).
#[derive(Debug, Clone)]
pub enum FrameEncoder {
    Vit(TinyVit),
    Cnn(TinyCnn),
}

impl FrameEncoder {
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Vit(v) => v.hidden_size(),
            Self::Cnn(c) => c.hidden_size(),
        }
    }

    /// Width of the spatial (patch) tokens.
    pub fn token_dim(&self) -> usize {
        match self {
            Self::Vit(v) => v.hidden_size(),
            Self::Cnn(c) => c.token_dim(),
        }
    }

    /// Pooled (n, hidden) and spatial tokens (n, tokens, token_dim).
    pub fn forward_with_tokens(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Vit(v) => v.forward_with_tokens(images),
            Self::Cnn(c) => c.forward_with_tokens(images),
        }
    }
}

/// The trainable frame encoder of the plain layout and its three projectors.
struct VideoBranch {
    encoder: FrameEncoder,
    patches: Projector,
    frames: Projector,
    video: Projector,
}

/// The trainable waveform encoder of the plain layout and its projector.
struct AudioBranch {
    encoder: TinyWave,
    proj: Projector,
}

/// Encoders trained from scratch with the LLM (the quick start's); either branch may be absent.
struct PlainEncoders {
    video: Option<VideoBranch>,
    audio: Option<AudioBranch>,
}

/// XORed into a step's dropout seed for the trainable encoders' stream, so their masks are not the LLM's.
const ENCODER_DROPOUT_STREAM: u64 = 0xBEA7_5D20_0D0F_F5E7;

/// Which encoders feed the LLM: the two layouts a recipe can build.
enum Encoders {
    Plain(Box<PlainEncoders>),
    /// Emotion-LLaMA's four frozen encoders and its token layout (256 EVA tokens at `<VideoHere>`;
    /// local, temporal, audio and CLS tokens at `<FeatureHere>`).
    EmotionLlama(Box<super::emotion_llama::EmotionLlamaEncoders>),
    /// VideoLLaMA2.1-AV's SigLIP → STC connector and BEATs → MLP, every token at `<video>` (video first).
    VideoLlama2Av(Box<super::videollama2_av::VideoLlama2AvEncoders>),
}

pub struct EmotionModel {
    pub llm: Llama,
    encoders: Encoders,
    pub bos: Option<u32>,
    pub eos: u32,
}

impl EmotionModel {
    /// Parameter prefixes: `llm.`, `encoder.video.`, `encoder.audio.`, `projector.{patches,frames,video,audio}.`.
    pub fn new(
        llm: Llama,
        video_encoder: Option<FrameEncoder>,
        audio_encoder: Option<TinyWave>,
        projector: super::projector::ProjectorKind,
        vb: VarBuilder,
        bos: Option<u32>,
        eos: u32,
    ) -> Result<Self> {
        let h = llm.config().hidden_size;
        let p = vb.pp("projector");
        let video = match video_encoder {
            Some(v) => Some(VideoBranch {
                patches: Projector::new(projector, v.token_dim(), h, p.pp("patches"))?,
                frames: Projector::new(projector, v.hidden_size(), h, p.pp("frames"))?,
                video: Projector::new(projector, v.hidden_size(), h, p.pp("video"))?,
                encoder: v,
            }),
            None => None,
        };
        let audio = match audio_encoder {
            Some(a) => Some(AudioBranch { proj: Projector::new(projector, a.hidden_size(), h, p.pp("audio"))?, encoder: a }),
            None => None,
        };
        Ok(Self { llm, encoders: Encoders::Plain(Box::new(PlainEncoders { video, audio })), bos, eos })
    }

    /// The model with Emotion-LLaMA's encoders and token layout.
    pub fn with_emotion_llama(llm: Llama, encoders: super::emotion_llama::EmotionLlamaEncoders, bos: Option<u32>, eos: u32) -> Self {
        Self { llm, encoders: Encoders::EmotionLlama(Box::new(encoders)), bos, eos }
    }

    /// The model with VideoLLaMA2.1-AV's encoders, connector and token layout.
    pub fn with_videollama2_av(llm: Llama, encoders: super::videollama2_av::VideoLlama2AvEncoders, bos: Option<u32>, eos: u32) -> Self {
        Self { llm, encoders: Encoders::VideoLlama2Av(Box::new(encoders)), bos, eos }
    }

    pub fn emotion_llama(&self) -> Option<&super::emotion_llama::EmotionLlamaEncoders> {
        match &self.encoders {
            Encoders::EmotionLlama(el) => Some(el),
            Encoders::Plain(_) | Encoders::VideoLlama2Av(_) => None,
        }
    }

    /// Encodes and projects the media of a batch. `None` when the model has no encoders.
    pub fn encode(&self, media: &MediaBatch) -> Result<Option<MmTokens>> {
        self.encode_modalities(media, true, true)
    }

    /// As [`Self::encode`], with each modality switchable (a disabled one contributes no tokens).
    pub fn encode_modalities(&self, media: &MediaBatch, use_video: bool, use_audio: bool) -> Result<Option<MmTokens>> {
        self.encode_modalities_t(media, use_video, use_audio, false)
    }

    /// As [`Self::encode_modalities`]; `train`: trainable encoders in training mode (VideoLLaMA2-AV's
    /// BEATs applies its dropouts and LayerDrop).
    pub fn encode_modalities_t(&self, media: &MediaBatch, use_video: bool, use_audio: bool, train: bool) -> Result<Option<MmTokens>> {
        // Encoders compute in f32; the projectors and the LLM in the run's dtype.
        let dt = self.llm.compute_dtype();
        let (video, feature) = match &self.encoders {
            Encoders::EmotionLlama(el) => el.project(&el.features(media, use_video, use_audio)?.to_dtype(dt)?, use_video, use_audio)?,
            Encoders::VideoLlama2Av(av) => {
                let (video, audio) = av.tokens(media, use_video, use_audio, dt, train)?;
                (video, audio.into_iter().collect())
            }
            Encoders::Plain(plain) => {
                let (mut tokens, mut feature) = (None, Vec::new());
                if let (true, Some(v)) = (use_video, &plain.video) {
                    let frames = media.need(ViewRole::Frames)?;
                    let (b, n, c, hgt, w) = frames.dims5()?;
                    let (pooled, spatial) = v.encoder.forward_with_tokens(&frames.reshape((b * n, c, hgt, w))?)?;
                    let per_frame = pooled.reshape((b, n, ()))?.to_dtype(dt)?;
                    let (_, t, d) = spatial.dims3()?;
                    let patches = spatial.reshape((b, n, t, d))?.mean(1)?.to_dtype(dt)?;
                    tokens = Some(Tensor::cat(&[v.patches.forward(&patches)?, v.frames.forward(&per_frame)?], 1)?);
                    feature.push(v.video.forward(&per_frame.mean_keepdim(1)?)?);
                }
                if let (true, Some(a)) = (use_audio, &plain.audio) {
                    let steps = a.encoder.forward(&media.audio)?;
                    feature.push(a.proj.forward(&steps.mean_keepdim(1)?.to_dtype(dt)?)?);
                }
                (tokens, feature)
            }
        };
        self.tokens(video, feature, media.batch_size()?)
    }

    /// Restarts every training-mode dropout stream: the LLM's LoRA dropout from `seed`, a trainable
    /// encoder's from a stream of its own derived from it.
    pub fn reseed_dropout(&self, seed: u64) {
        self.llm.reseed_dropout(seed);
        if let Encoders::VideoLlama2Av(av) = &self.encoders {
            av.reseed_dropout(seed ^ ENCODER_DROPOUT_STREAM);
        }
    }

    /// Whether the model's encoders are frozen by construction (Emotion-LLaMA's layout), so their
    /// outputs can be cached.
    pub fn has_frozen_encoders(&self) -> bool {
        matches!(self.encoders, Encoders::EmotionLlama(_))
    }

    /// The frozen encoders' outputs for every modality (`None` without Emotion-LLaMA's encoders).
    pub fn frozen_features(&self, media: &MediaBatch) -> Result<Option<super::emotion_llama::EncodedFeatures>> {
        match self.emotion_llama() {
            Some(el) => Ok(Some(el.features(media, true, true)?)),
            None => Ok(None),
        }
    }

    /// Projects cached encoder outputs of `batch` samples into multimodal tokens.
    pub fn project_features(&self, f: &super::emotion_llama::EncodedFeatures, batch: usize, use_video: bool, use_audio: bool) -> Result<Option<MmTokens>> {
        let Some(el) = self.emotion_llama() else { return Ok(None) };
        let (video, feature) = el.project(&f.to_dtype(self.llm.compute_dtype())?, use_video, use_audio)?;
        self.tokens(video, feature, batch)
    }

    fn tokens(&self, video: Option<Tensor>, feature: Vec<Tensor>, b: usize) -> Result<Option<MmTokens>> {
        if video.is_none() && feature.is_empty() {
            return Ok(None);
        }
        let h = self.llm.config().hidden_size;
        let dev = self.llm_device();
        let dt = self.llm.compute_dtype();
        let video = match video {
            Some(v) => v.to_dtype(dt)?,
            None => Tensor::zeros((b, 0, h), dt, dev)?,
        };
        let feature = if feature.is_empty() { Tensor::zeros((b, 0, h), dt, dev)? } else { Tensor::cat(&feature, 1)?.to_dtype(dt)? };
        Ok(Some(MmTokens { video, feature }))
    }

    /// Builds right-padded input embeddings with multimodal tokens spliced at the placeholders.
    /// With `mm = None` the placeholders stay empty (the text-only ablation).
    pub fn build_inputs(&self, prompts: &[TokenizedPrompt], mm: Option<&MmTokens>, with_eos: bool) -> Result<LlmInputs> {
        let dev = self.llm_device();
        let mut rows: Vec<Tensor> = Vec::with_capacity(prompts.len());
        let mut lengths = Vec::with_capacity(prompts.len());
        let mut answer_spans = Vec::with_capacity(prompts.len());
        for (b, p) in prompts.iter().enumerate() {
            let mut parts = match self.bos {
                Some(bos) => vec![self.llm.embed(&Tensor::new(&[bos], dev)?)?],
                None => Vec::new(),
            };
            let mut len = parts.len();
            for piece in &p.pieces {
                let t = match (piece, mm) {
                    (Piece::Text(ids), _) if !ids.is_empty() => self.llm.embed(&Tensor::new(ids.as_slice(), dev)?)?,
                    (Piece::Video, Some(mm)) if mm.video.dim(1)? > 0 => mm.video.i(b)?,
                    (Piece::Feature, Some(mm)) if mm.feature.dim(1)? > 0 => mm.feature.i(b)?,
                    (Piece::AllMultimodal, Some(mm)) => Tensor::cat(&[mm.video.i(b)?, mm.feature.i(b)?], 0)?,
                    _ => continue,
                };
                len += t.dim(0)?;
                parts.push(t);
            }
            let mut answer = p.answer.clone();
            if with_eos {
                answer.push(self.eos);
            }
            if !answer.is_empty() {
                parts.push(self.llm.embed(&Tensor::new(answer.as_slice(), dev)?)?);
            }
            answer_spans.push((len, answer));
            len += answer_spans[b].1.len();
            rows.push(Tensor::cat(&parts, 0)?);
            lengths.push(len);
        }
        let t_max = lengths.iter().copied().max().unwrap_or(1);
        let h = self.llm.config().hidden_size;
        let mut padded = Vec::with_capacity(rows.len());
        let mut valid = vec![0u8; prompts.len() * t_max];
        let (mut target_rows, mut targets, mut target_sample) = (Vec::new(), Vec::new(), Vec::new());
        for (b, row) in rows.into_iter().enumerate() {
            let len = lengths[b];
            valid[b * t_max..b * t_max + len].fill(1);
            padded.push(if len < t_max {
                let pad = Tensor::zeros((t_max - len, h), row.dtype(), dev)?;
                Tensor::cat(&[row, pad], 0)?
            } else {
                row
            });
            let (start, answer) = &answer_spans[b];
            for (k, &tok) in answer.iter().enumerate() {
                // The logit at position p predicts token p + 1.
                target_rows.push((b * t_max + start + k - 1) as u32);
                targets.push(tok);
                target_sample.push(b);
            }
        }
        Ok(LlmInputs {
            embeds: Tensor::stack(&padded, 0)?,
            valid: Tensor::from_vec(valid, (prompts.len(), t_max), dev)?,
            lengths,
            target_rows,
            targets,
            target_sample,
        })
    }

    /// Next-token cross-entropy over answer tokens (and EOS), averaged per `reduction`.
    pub fn loss(&self, inputs: &LlmInputs, reduction: LossReduction) -> Result<Tensor> {
        let hidden = self.llm.hidden_states(&inputs.embeds, &inputs.valid, true)?;
        let (b, t, h) = hidden.dims3()?;
        let dev = hidden.device();
        let rows = Tensor::new(inputs.target_rows.as_slice(), dev)?;
        let picked = hidden.reshape((b * t, h))?.index_select(&rows, 0)?;
        let n = inputs.targets.len();
        let weights: Vec<f32> = match reduction {
            LossReduction::TokenMean => vec![1.0 / n.max(1) as f32; n],
            LossReduction::SampleMean => {
                // Weight each token by 1 / (its sample's answer length · samples), so the sum is the mean
                // over samples of per-sample token means.
                let mut counts = vec![0usize; b];
                for &s in &inputs.target_sample {
                    counts[s] += 1;
                }
                let samples = counts.iter().filter(|&&c| c > 0).count().max(1) as f32;
                inputs.target_sample.iter().map(|&s| 1.0 / (counts[s] as f32 * samples)).collect()
            }
        };
        self.llm.weighted_nll(&picked, &inputs.targets, &weights)
    }

    fn llm_device(&self) -> &Device {
        self.llm.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use crate::model::llama::LlamaConfig;
    use candle_nn::VarMap;

    fn model() -> Result<EmotionModel> {
        let cfg = LlamaConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            vocab_size: 20,
            max_position_embeddings: 64,
            ..LlamaConfig::default()
        };
        let vm = VarMap::new();
        let vb = crate::model::init::SeededVarMap::builder(&vm, 3, DType::F32, &Device::Cpu);
        EmotionModel::new(Llama::new(&cfg, vb.pp("llm"))?, None, None, crate::recipe::ProjectorKind::Linear, vb, Some(1), 2)
    }

    fn prompt(answer: Vec<u32>) -> TokenizedPrompt {
        TokenizedPrompt { pieces: vec![Piece::Text(vec![5, 6]), Piece::Video, Piece::Text(vec![7])], answer }
    }

    #[test]
    fn targets_are_answer_tokens_and_eos_only() -> Result<()> {
        let m = model()?;
        let inputs = m.build_inputs(&[prompt(vec![9, 10]), prompt(vec![11])], None, true)?;
        // [BOS 5 6 7 | 9 10 EOS] and [BOS 5 6 7 | 11 EOS pad]: positions 3,4,5 of row 0 and 3,4 of row 1.
        assert_eq!(inputs.lengths, vec![7, 6]);
        assert_eq!(inputs.targets, vec![9, 10, 2, 11, 2]);
        assert_eq!(inputs.target_rows, vec![3, 4, 5, 7 + 3, 7 + 4]);
        assert_eq!(inputs.target_sample, vec![0, 0, 0, 1, 1]);
        Ok(())
    }

    #[test]
    fn reference_layout_splices_every_token_at_video_here() -> Result<()> {
        let m = model()?;
        let h = m.llm.config().hidden_size;
        let mm = MmTokens { video: Tensor::ones((1, 3, h), DType::F32, &Device::Cpu)?, feature: (Tensor::ones((1, 2, h), DType::F32, &Device::Cpu)? * 2.0)? };
        let p = TokenizedPrompt { pieces: vec![Piece::Text(vec![5]), Piece::AllMultimodal, Piece::Text(vec![7, 8])], answer: vec![] };
        let inputs = m.build_inputs(&[p], Some(&mm), false)?;
        // BOS, 5, 3 video + 2 feature tokens, 7, 8.
        assert_eq!(inputs.lengths, vec![1 + 1 + 5 + 2]);
        let row = inputs.embeds.i((0, 2..7, 0))?.to_vec1::<f32>()?;
        assert_eq!(row, vec![1.0, 1.0, 1.0, 2.0, 2.0]);
        Ok(())
    }

    #[test]
    fn sample_mean_weighs_samples_equally() -> Result<()> {
        let m = model()?;
        let equal = m.build_inputs(&[prompt(vec![9, 10]), prompt(vec![11, 12])], None, true)?;
        let a = m.loss(&equal, LossReduction::TokenMean)?.to_scalar::<f32>()?;
        let b = m.loss(&equal, LossReduction::SampleMean)?.to_scalar::<f32>()?;
        assert!((a - b).abs() < 1e-5, "equal lengths: {a} vs {b}");
        // Per-sample losses, then the two reductions by hand.
        let one = |p| -> Result<f32> { m.loss(&m.build_inputs(&[p], None, true)?, LossReduction::TokenMean)?.to_scalar::<f32>() };
        let (l0, l1) = (one(prompt(vec![9, 10, 11, 12]))?, one(prompt(vec![13]))?);
        let mixed = m.build_inputs(&[prompt(vec![9, 10, 11, 12]), prompt(vec![13])], None, true)?;
        let token = m.loss(&mixed, LossReduction::TokenMean)?.to_scalar::<f32>()?;
        let sample = m.loss(&mixed, LossReduction::SampleMean)?.to_scalar::<f32>()?;
        assert!((sample - (l0 + l1) / 2.0).abs() < 1e-4, "{sample} vs {}", (l0 + l1) / 2.0);
        assert!((token - (5.0 * l0 + 2.0 * l1) / 7.0).abs() < 1e-4, "{token}");
        Ok(())
    }
}
