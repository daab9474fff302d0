//! A few training steps of the quick-start model (tiny LLaMA + tiny CNN + tiny waveform encoder, its
//! manifests compiled in) on one fixed synthetic batch, with AdamW in f32 and the LLM computing in the
//! chosen dtype: the loss must fall to at most [`MAX_LOSS_RATIO`] of its start and stay finite.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::Measured;
use crate::media::ViewRole;
use crate::model::cnn::{CnnConfig, TinyCnn};
use crate::model::init::SeededVarMap;
use crate::model::llama::Llama;
use crate::model::llm_config::LlamaConfig;
use crate::model::multimodal::{EmotionModel, FrameEncoder, MediaBatch, Piece, TokenizedPrompt};
use crate::model::wave::{TinyWave, WaveConfig};
use crate::recipe::{LossReduction, ProjectorKind};
use crate::train::optim::GroupedAdamW;

/// Final loss / first loss at most this (a working optimiser overfits one batch quickly).
pub const MAX_LOSS_RATIO: f64 = 0.5;

const LLM: &str = include_str!("../../plugins/llms/tiny-llama.toml");
const CNN: &str = include_str!("../../plugins/encoders/tiny-cnn-frames.toml");
const WAVE: &str = include_str!("../../plugins/encoders/tiny-wave-audio.toml");
const VOCAB: usize = 48;
const BATCH: usize = 4;
const FRAMES: usize = 2;

/// `[config]` of a compiled-in manifest.
fn config<T: serde::de::DeserializeOwned>(manifest: &str, what: &str) -> Result<T, String> {
    let t: toml::Table = toml::from_str(manifest).map_err(|e| format!("{what} manifest: {e}"))?;
    let c = t.get("config").cloned().ok_or_else(|| format!("{what} manifest has no [config]"))?;
    c.try_into().map_err(|e: toml::de::Error| format!("{what} [config]: {e}"))
}

pub fn tiny_steps(dev: &Device, dtype: DType, steps: usize) -> Measured {
    let e = |what: &'static str| move |err: candle_core::Error| format!("{what}: {err}");
    let mut llm_cfg: LlamaConfig = config(LLM, "tiny-llama")?;
    llm_cfg.vocab_size = VOCAB;
    let cnn_cfg: CnnConfig = config(CNN, "tiny-cnn-frames")?;
    let wave_cfg: WaveConfig = config(WAVE, "tiny-wave-audio")?;
    let varmap = VarMap::new();
    let vb = SeededVarMap::builder(&varmap, 7, DType::F32, dev);
    let llm = Llama::new(&llm_cfg, vb.pp("llm")).and_then(|l| l.with_compute_dtype(dtype)).map_err(e("LLM"))?;
    let cnn = TinyCnn::new(&cnn_cfg, vb.pp("encoder.video")).map_err(e("CNN"))?;
    let wave = TinyWave::new(&wave_cfg, vb.pp("encoder.audio")).map_err(e("waveform encoder"))?;
    let model = EmotionModel::new(llm, Some(FrameEncoder::Cnn(cnn)), Some(wave), ProjectorKind::Linear, vb.clone(), Some(1), 2).map_err(e("model"))?;

    // One batch: each sample's frames are one brightness and its answer is that brightness's token.
    let s = cnn_cfg.image_size;
    let mut pixels = Vec::with_capacity(BATCH * FRAMES * 3 * s * s);
    let mut prompts = Vec::with_capacity(BATCH);
    for k in 0..BATCH {
        let level = k as f32 / BATCH as f32 * 2.0 - 0.75;
        pixels.extend(std::iter::repeat_n(level, FRAMES * 3 * s * s));
        prompts.push(TokenizedPrompt { pieces: vec![Piece::Text(vec![5, 6, 7]), Piece::Video, Piece::Feature, Piece::Text(vec![8])], answer: vec![10 + k as u32, 20] });
    }
    let frames = Tensor::from_vec(pixels, (BATCH, FRAMES, 3, s, s), dev).map_err(e("frames"))?;
    let audio = Tensor::zeros((BATCH, 16_000), DType::F32, dev).map_err(e("audio"))?;
    let media = MediaBatch { pixels: vec![(ViewRole::Frames, frames)], audio, audio_lengths: vec![16_000; BATCH] };

    let vars = crate::train::optim::select(&varmap, &["*".to_string()]);
    let mut opt = GroupedAdamW::new(&vars, 3e-3, 0.0, &Default::default()).map_err(e("optimiser"))?;
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps.max(2) {
        let mm = model.encode(&media).map_err(e("encode"))?;
        let inputs = model.build_inputs(&prompts, mm.as_ref(), true).map_err(e("inputs"))?;
        let loss = model.loss(&inputs, LossReduction::TokenMean).map_err(e("loss"))?;
        let value = loss.to_scalar::<f32>().map_err(e("loss"))?;
        if !value.is_finite() {
            return Err(format!("the loss became {value} after {} steps", losses.len()));
        }
        losses.push(value);
        let grads = loss.backward().map_err(e("backward"))?;
        opt.step(&grads, 1.0).map_err(e("AdamW"))?;
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    Ok((f64::from(last / first), format!("{} steps: loss {first:.3} -> {last:.3}", losses.len())))
}
