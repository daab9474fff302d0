//! `tiny_cnn`: a small convolutional frame encoder (strided 3x3 convs, GELU, spatial flatten, linear).
//!
//! Convolutions learn local facial cues (mouth curve, brow slant) from scratch far faster than a ViT does,
//! which matters for a skeleton that trains its encoders in minutes on a CPU. Keeping the final feature
//! map's layout (flatten, not global pooling) preserves *where* a cue is.
//!
//! candle's CPU conv backward goes through a naive transposed convolution, so each 3x3 stride-2 conv is
//! written as im2col from tensor ops (pad, parity reshape, narrow, stack) and one matmul, channels last:
//! differentiable, and several times faster here. Weights keep PyTorch's `(out, in, 3, 3)` layout.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use super::nn::LayerNorm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnConfig {
    pub image_size: usize,
    /// The stem is a `stem_patch` x `stem_patch` conv with the same stride (ConvNeXt's "patchify" stem).
    pub stem_patch: usize,
    pub stem_channels: usize,
    /// Output channels of each 3x3 stride-2 conv stage after the stem.
    pub channels: Vec<usize>,
    pub hidden_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    /// `mean`: global average pooling of the last feature map (translation invariant, generalises from
    /// few samples); `flatten`: keep the layout.
    #[serde(default = "mean_pool")]
    pub pool: String,
}

fn mean_pool() -> String {
    "mean".into()
}

fn three() -> usize {
    3
}

/// A 3x3 conv, stride 2, padding 1, on channels-last input.
#[derive(Debug, Clone)]
pub struct Conv3x3s2 {
    /// (out, in * 9), columns ordered (in, ky, kx) as PyTorch's weight flattened.
    weight: Tensor,
    bias: Tensor,
    out: usize,
}

impl Conv3x3s2 {
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / ((cin * 9) as f64).sqrt();
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb.get_with_hints((cout, cin, 3, 3), "weight", init)?.reshape((cout, cin * 9))?;
        let bias = vb.get_with_hints(cout, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
        Ok(Self { weight, bias, out: cout })
    }

    /// `x`: (n, h, w, c) with even h, w → (n, h/2, w/2, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        if h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!("conv3x3s2 needs even sizes, got {h}x{w}");
        }
        let (oh, ow) = (h / 2, w / 2);
        let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        // Row 2i+d of the padded input is (pair i + d/2, parity d%2).
        let pairs = padded.reshape((n, oh + 1, 2, ow + 1, 2, c))?;
        let mut taps = Vec::with_capacity(9);
        for dy in 0..3 {
            for dx in 0..3 {
                let t = pairs.narrow(1, dy / 2, oh)?.narrow(2, dy % 2, 1)?.narrow(3, dx / 2, ow)?.narrow(4, dx % 2, 1)?;
                taps.push(t.reshape((n, oh, ow, c))?);
            }
        }
        let cols = Tensor::stack(&taps, 4)?.reshape((n * oh * ow, c * 9))?; // (pixels, in, tap)
        let y = cols.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        y.reshape((n, oh, ow, self.out))
    }
}

#[derive(Debug, Clone)]
pub struct TinyCnn {
    stem: Linear,
    convs: Vec<Conv3x3s2>,
    proj: Linear,
    norm: LayerNorm,
    cfg: CnnConfig,
}

impl TinyCnn {
    pub fn new(cfg: &CnnConfig, vb: VarBuilder) -> Result<Self> {
        let scale = cfg.stem_patch.max(1) << cfg.channels.len();
        if cfg.stem_patch == 0 || !cfg.image_size.is_multiple_of(scale) {
            candle_core::bail!(
                "image_size {} is not divisible by stem_patch x 2^{} = {scale} (one halving per conv stage)",
                cfg.image_size,
                cfg.channels.len()
            );
        }
        let side = cfg.image_size / scale;
        let stem = candle_nn::linear(cfg.num_channels * cfg.stem_patch * cfg.stem_patch, cfg.stem_channels, vb.pp("stem"))?;
        let mut convs = Vec::with_capacity(cfg.channels.len());
        let mut cin = cfg.stem_channels;
        for (i, &cout) in cfg.channels.iter().enumerate() {
            convs.push(Conv3x3s2::new(cin, cout, vb.pp(format!("convs.{i}")))?);
            cin = cout;
        }
        let flat = match cfg.pool.as_str() {
            "mean" => cin,
            "flatten" => cin * side * side,
            other => candle_core::bail!("tiny_cnn pool `{other}` is not `mean` or `flatten`"),
        };
        Ok(Self {
            stem,
            convs,
            proj: candle_nn::linear(flat, cfg.hidden_size, vb.pp("proj"))?,
            norm: LayerNorm::new(cfg.hidden_size, 1e-5, vb.pp("norm"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Channels of the spatial tokens from [`Self::forward_with_tokens`].
    pub fn token_dim(&self) -> usize {
        self.cfg.channels.last().copied().unwrap_or(self.cfg.stem_channels)
    }

    /// `images`: (n, channels, size, size), normalised → (n, hidden).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_tokens(images)?.0)
    }

    /// Pooled features (n, hidden) and the last feature map as spatial tokens (n, side², token_dim).
    pub fn forward_with_tokens(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, c, h, w) = images.dims4()?;
        let s = self.cfg.image_size;
        if (c, h, w) != (self.cfg.num_channels, s, s) {
            candle_core::bail!("tiny_cnn expects frames of {}x{s}x{s}, got {c}x{h}x{w}", self.cfg.num_channels);
        }
        let (p, g) = (self.cfg.stem_patch, s / self.cfg.stem_patch);
        // Patchify: (n, c, g, p, g, p) → (n, g, g, c·p·p), then a linear layer = conv with stride = kernel.
        let patches = images.reshape((n, c, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((n, g, g, c * p * p))?;
        let mut x = self.stem.forward(&patches)?.relu()?;
        for conv in &self.convs {
            x = conv.forward(&x)?.relu()?;
        }
        let pooled = if self.cfg.pool == "mean" { x.mean((1, 2))? } else { x.flatten_from(1)? };
        let (_, sh, sw, ch) = x.dims4()?;
        let tokens = x.reshape((n, sh * sw, ch))?;
        Ok((self.norm.forward(&self.proj.forward(&pooled)?)?, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn im2col_conv_matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let conv = Conv3x3s2::new(3, 5, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 6), &dev)?;
        let ours = conv.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?.permute((0, 3, 1, 2))?;
        let w = conv.weight.reshape((5, 3, 3, 3))?;
        let reference = x.conv2d(&w, 1, 2, 1, 1)?.broadcast_add(&conv.bias.reshape((1, 5, 1, 1))?)?;
        let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");
        Ok(())
    }
}
