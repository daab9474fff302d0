//! `tiny_wave`: a small waveform encoder in the wav2vec2 / HuBERT mould.
//!
//! A two-level strided feature extractor (each level a conv with stride = kernel, written as reshape +
//! linear), then pre-LN transformer blocks over time with learned positions. Outputs one vector per
//! time step; the multimodal model pools it.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use super::nn::{EncoderBlock, LayerNorm};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveConfig {
    /// Samples per first-level frame (160 = 10 ms at 16 kHz).
    pub frame_size: usize,
    /// First-level frames merged per second-level step.
    pub merge: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Longest input in second-level steps (positions table size).
    pub max_positions: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn eps() -> f64 {
    1e-5
}

#[derive(Debug, Clone)]
pub struct TinyWave {
    frame_proj: Linear,
    merge_proj: Linear,
    pos_embed: Tensor,
    blocks: Vec<EncoderBlock>,
    norm: LayerNorm,
    cfg: WaveConfig,
}

impl TinyWave {
    pub fn new(cfg: &WaveConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self {
            frame_proj: candle_nn::linear(cfg.frame_size, h, vb.pp("feature_extractor.0"))?,
            merge_proj: candle_nn::linear(h * cfg.merge, h, vb.pp("feature_extractor.1"))?,
            pos_embed: vb.get_with_hints((1, cfg.max_positions, h), "pos_embed", init)?,
            blocks: (0..cfg.num_hidden_layers)
                .map(|i| {
                    EncoderBlock::new(h, cfg.num_attention_heads, cfg.intermediate_size, cfg.layer_norm_eps, vb.pp(format!("blocks.{i}")))
                })
                .collect::<Result<Vec<_>>>()?,
            norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("norm"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Samples per output step.
    pub fn hop(&self) -> usize {
        self.cfg.frame_size * self.cfg.merge
    }

    /// `wave`: (batch, samples) at 16 kHz → (batch, steps, hidden). Trailing samples that do not fill a
    /// step are dropped; inputs longer than `max_positions` steps are truncated.
    pub fn forward(&self, wave: &Tensor) -> Result<Tensor> {
        let (b, n) = wave.dims2()?;
        let steps = (n / self.hop()).min(self.cfg.max_positions);
        if steps == 0 {
            candle_core::bail!("audio of {n} samples is shorter than one encoder step ({} samples)", self.hop());
        }
        let x = wave.narrow(1, 0, steps * self.hop())?.reshape((b, steps * self.cfg.merge, self.cfg.frame_size))?;
        let x = self.frame_proj.forward(&x)?.gelu_erf()?;
        let x = x.reshape((b, steps, self.cfg.merge * self.cfg.hidden_size))?;
        let x = self.merge_proj.forward(&x)?.gelu_erf()?;
        let mut x = x.broadcast_add(&self.pos_embed.narrow(1, 0, steps)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.norm.forward(&x)
    }
}
