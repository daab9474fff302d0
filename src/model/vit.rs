//! `tiny_vit`: a small ViT over single frames (patch embedding + CLS + pre-LN blocks).
//!
//! The patch embedding is a conv with stride = kernel, written as reshape + linear (the same trick the
//! VideoMAE tubelet embedding needs, and differentiable). One CLS token per frame is the frame's feature.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use super::nn::{EncoderBlock, LayerNorm};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn three() -> usize {
    3
}
fn eps() -> f64 {
    1e-6
}

#[derive(Debug, Clone)]
pub struct TinyVit {
    patch_embed: Linear,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<EncoderBlock>,
    norm: LayerNorm,
    cfg: VitConfig,
}

impl TinyVit {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            candle_core::bail!("image_size {} is not a multiple of patch_size {}", cfg.image_size, cfg.patch_size);
        }
        let patches = (cfg.image_size / cfg.patch_size).pow(2);
        let patch_dim = cfg.num_channels * cfg.patch_size * cfg.patch_size;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self {
            patch_embed: candle_nn::linear(patch_dim, cfg.hidden_size, vb.pp("patch_embed"))?,
            cls_token: vb.get_with_hints((1, 1, cfg.hidden_size), "cls_token", init)?,
            pos_embed: vb.get_with_hints((1, patches + 1, cfg.hidden_size), "pos_embed", init)?,
            blocks: (0..cfg.num_hidden_layers)
                .map(|i| {
                    EncoderBlock::new(
                        cfg.hidden_size,
                        cfg.num_attention_heads,
                        cfg.intermediate_size,
                        cfg.layer_norm_eps,
                        vb.pp(format!("blocks.{i}")),
                    )
                })
                .collect::<Result<Vec<_>>>()?,
            norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("norm"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// `images`: (n, channels, size, size), normalised → (n, hidden) CLS features.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_tokens(images)?.0)
    }

    /// CLS features (n, hidden) and the normalised patch tokens (n, patches, hidden).
    pub fn forward_with_tokens(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, c, h, w) = images.dims4()?;
        let (s, p) = (self.cfg.image_size, self.cfg.patch_size);
        if (c, h, w) != (self.cfg.num_channels, s, s) {
            candle_core::bail!("tiny_vit expects frames of {}x{s}x{s}, got {c}x{h}x{w}", self.cfg.num_channels);
        }
        let g = s / p;
        let patches = images
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, g * g, c * p * p))?;
        let x = self.patch_embed.forward(&patches)?;
        let cls = self.cls_token.broadcast_as((n, 1, self.cfg.hidden_size))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.norm.forward(&x)?;
        let patches = x.dim(1)? - 1;
        Ok((x.narrow(1, 0, 1)?.squeeze(1)?, x.narrow(1, 1, patches)?))
    }
}
