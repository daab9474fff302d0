//! VideoLLaMA2's spatial-temporal convolution connector, `stc_connector_v35` (`STCConnectorV35` in
//! `videollama2/model/projector.py`): per-frame RegNet stage `s1` (timm `RegStage`, SiLU, `LayerNorm2d`), a
//! 3-D convolution with kernel = stride = `downsample` and no padding (`sampler`, then SiLU), a second
//! RegNet stage `s2`, and the `readout` MLP (Linear, GELU, Linear). 16 frames of 27×27 SigLIP tokens become
//! 8·13·13 = 1352 LLM tokens.
//!
//! Trainable: written with candle's differentiable ops only. Activations stay channels-last (frames, h, w,
//! channels) so that every 1×1 convolution is a matmul, `LayerNorm2d` a plain layer norm over the last
//! axis, the depthwise 3×3 convolution nine shifted multiply-adds, and the 3-D convolution (kernel =
//! stride) a reshape and a matmul. State-dict names are the reference's (under `mm_projector.` in a
//! VideoLLaMA2 checkpoint): `s1.b1.conv1.conv.weight`, `s1.b1.conv1.bn.{weight,bias}`, `…conv2.*`,
//! `…se.fc1/fc2.{weight,bias}`, `…conv3.*`, `s1.b1.downsample.{conv,bn}.*`, `sampler.0.{weight,bias}`,
//! `s2.bK.*`, `readout.0/2.*`.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::accel::linear_in_dtype_of;

/// The connector's shape: VideoLLaMA2's `mm_hidden_size` (the vision tower's width) and `hidden_size` (the
/// LLM's), plus the constructor's defaults (not config keys in VideoLLaMA2: fixed at (2, 2, 2), 4, 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StcConfig {
    /// Input token width (SigLIP so400m: 1152).
    pub mm_hidden_size: usize,
    /// Width of the stages and of the output tokens (Qwen2-7B: 3584).
    pub hidden_size: usize,
    /// (time, height, width) kernel and stride of the 3-D convolution.
    #[serde(default = "d_downsample")]
    pub downsample: [usize; 3],
    /// Blocks per RegNet stage (0: both stages are the identity).
    #[serde(default = "d_depth")]
    pub depth: usize,
    /// Linear layers of the readout, with a GELU between each two.
    #[serde(default = "d_mlp_depth")]
    pub mlp_depth: usize,
}

fn d_downsample() -> [usize; 3] {
    [2, 2, 2]
}
fn d_depth() -> usize {
    4
}
fn d_mlp_depth() -> usize {
    2
}

/// timm's `LayerNormAct2d` default epsilon (`LayerNorm2d` passed as the norm layer of `ConvNormAct`).
const LN_EPS: f64 = 1e-5;

impl StcConfig {
    /// The connector for a tower of width `mm_hidden_size` and an LLM of width `hidden_size`, with the
    /// reference's defaults.
    pub fn new(mm_hidden_size: usize, hidden_size: usize) -> Self {
        Self { mm_hidden_size, hidden_size, downsample: d_downsample(), depth: d_depth(), mlp_depth: d_mlp_depth() }
    }

    fn validate(&self) -> Result<()> {
        if self.mm_hidden_size == 0 || self.hidden_size == 0 {
            candle_core::bail!("stc_connector_v35: mm_hidden_size {} and hidden_size {} must be > 0", self.mm_hidden_size, self.hidden_size);
        }
        if self.downsample.contains(&0) {
            candle_core::bail!("stc_connector_v35: downsample {:?} must be >= 1 on every axis", self.downsample);
        }
        if self.mlp_depth == 0 {
            candle_core::bail!("stc_connector_v35: mlp_depth must be >= 1");
        }
        if self.depth == 0 && self.mm_hidden_size != self.hidden_size {
            // The reference's identity stages hand mm_hidden_size channels to a hidden_size-channel Conv3d.
            candle_core::bail!("stc_connector_v35: depth 0 needs mm_hidden_size == hidden_size (got {} and {})", self.mm_hidden_size, self.hidden_size);
        }
        Ok(())
    }

    /// Parameters: 376,889,248 at VideoLLaMA2's 1152 → 3584 (s1 119.7 M, sampler 102.8 M, s2 128.7 M,
    /// readout 25.7 M, as the reference module counts them).
    pub fn param_count(&self) -> usize {
        let (i, h) = (self.mm_hidden_size, self.hidden_size);
        let block = |inp: usize| {
            let rd = se_channels(inp, h);
            let shortcut = if inp != h { h * inp + 2 * h } else { 0 };
            (h * inp + 2 * h) + (h * 9 + 2 * h) + (2 * rd * h + rd + h) + (h * h + 2 * h) + shortcut
        };
        let stages = if self.depth == 0 { 0 } else { block(i) + (2 * self.depth - 1) * block(h) };
        let [kt, kh, kw] = self.downsample;
        stages + (h * h * kt * kh * kw + h) + self.mlp_depth * (h * h + h)
    }

    /// Output tokens for `frames` frames of `tokens` (a square number) tokens each: 16 × 729 → 1352.
    pub fn output_tokens(&self, frames: usize, tokens: usize) -> usize {
        let side = tokens.isqrt();
        let [kt, kh, kw] = self.downsample;
        (frames / kt) * (side / kh) * (side / kw)
    }
}

/// `LayerNorm2d` over the channels of channels-last activations; computed in f32 (bf16 runs too).
#[derive(Debug, Clone)]
struct ChannelNorm {
    weight: Tensor,
    bias: Tensor,
}

impl ChannelNorm {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let b = self.bias.to_dtype(DType::F32)?;
        normed.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(dtype)
    }
}

/// A new weight's init (trained from scratch): Kaiming normal over its fan-in, as `candle_nn::linear`.
const WEIGHT_INIT: candle_nn::Init = candle_nn::init::DEFAULT_KAIMING_NORMAL;

/// A new bias's init: uniform in ±1/√fan_in, as PyTorch's and `candle_nn::linear`'s.
fn bias_init(fan_in: usize) -> candle_nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    candle_nn::Init::Uniform { lo: -bound, up: bound }
}

/// A 1×1 convolution without bias (`ConvNormAct.conv`) on channels-last activations: a matmul.
fn pointwise(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<candle_nn::Linear> {
    let w = vb.get_with_hints((out_ch, in_ch, 1, 1), "weight", WEIGHT_INIT)?;
    Ok(candle_nn::Linear::new(w.reshape((out_ch, in_ch))?, None))
}

/// timm `ConvNormAct` with a 1×1 convolution: conv, `LayerNorm2d`, optional SiLU.
#[derive(Debug, Clone)]
struct PointwiseNorm {
    conv: candle_nn::Linear,
    bn: ChannelNorm,
}

impl PointwiseNorm {
    fn new(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: pointwise(in_ch, out_ch, vb.pp("conv"))?, bn: ChannelNorm::new(out_ch, vb.pp("bn"))? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.bn.forward(&linear_in_dtype_of(&self.conv, x)?)
    }
}

/// timm `ConvNormAct` with a depthwise 3×3 convolution (stride 1, padding 1, groups = channels), then
/// `LayerNorm2d` and SiLU. The convolution is nine shifted, per-channel-scaled copies of the padded input.
#[derive(Debug, Clone)]
struct DepthwiseNorm {
    /// (channels, 9): the (ky, kx) taps in raster order.
    taps: Tensor,
    bn: ChannelNorm,
}

impl DepthwiseNorm {
    fn new(ch: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.pp("conv").get_with_hints((ch, 1, 3, 3), "weight", WEIGHT_INIT)?;
        Ok(Self { taps: w.reshape((ch, 9))?, bn: ChannelNorm::new(ch, vb.pp("bn"))? })
    }

    /// x: (n, h, w, c).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let taps = self.taps.to_dtype(x.dtype())?;
        let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        let mut acc: Option<Tensor> = None;
        for ky in 0..3 {
            for kx in 0..3 {
                let tap = taps.narrow(1, ky * 3 + kx, 1)?.squeeze(1)?;
                let term = padded.narrow(1, ky, h)?.narrow(2, kx, w)?.broadcast_mul(&tap)?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
        }
        match acc {
            Some(y) => self.bn.forward(&y)?.silu(),
            None => candle_core::bail!("internal: no taps"),
        }
    }
}

/// timm `SEModule`: the mean over (h, w) → 1×1 conv → SiLU → 1×1 conv → sigmoid gate on the channels.
#[derive(Debug, Clone)]
struct SqueezeExcite {
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

impl SqueezeExcite {
    fn new(ch: usize, rd: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |i: usize, o: usize, vb: VarBuilder| -> Result<candle_nn::Linear> {
            let w = vb.get_with_hints((o, i, 1, 1), "weight", WEIGHT_INIT)?.reshape((o, i))?;
            Ok(candle_nn::Linear::new(w, Some(vb.get_with_hints(o, "bias", bias_init(i))?)))
        };
        Ok(Self { fc1: conv(ch, rd, vb.pp("fc1"))?, fc2: conv(rd, ch, vb.pp("fc2"))? })
    }

    /// x: (n, h, w, c).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.mean_keepdim(1)?.mean_keepdim(2)?;
        let s = linear_in_dtype_of(&self.fc1, &s)?.silu()?;
        let gate = candle_nn::ops::sigmoid(&linear_in_dtype_of(&self.fc2, &s)?)?;
        x.broadcast_mul(&gate)
    }
}

/// timm's SE width for a block of `in_chs` inputs: `int(round(in_chs · 0.25))` (Python rounds halves to
/// even), or when that is 0, `SEModule`'s own `make_divisible(channels / 16, 8)`.
fn se_channels(in_chs: usize, channels: usize) -> usize {
    let rd = (in_chs as f64 * 0.25).round_ties_even() as usize;
    if rd > 0 {
        return rd;
    }
    // make_divisible(channels / 16, 8) with round_limit 0 (never bumped up).
    ((channels as f64 / 16.0 + 4.0) as usize / 8 * 8).max(8)
}

/// timm regnet `Bottleneck` (bottle_ratio 1, group_size 1, se_ratio 0.25, conv1x1 shortcut, SiLU).
#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: PointwiseNorm,
    conv2: DepthwiseNorm,
    se: SqueezeExcite,
    conv3: PointwiseNorm,
    /// The 1×1 projection shortcut where the width changes (s1.b1); the identity otherwise.
    downsample: Option<PointwiseNorm>,
}

impl Bottleneck {
    fn new(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: PointwiseNorm::new(in_ch, out_ch, vb.pp("conv1"))?,
            conv2: DepthwiseNorm::new(out_ch, vb.pp("conv2"))?,
            se: SqueezeExcite::new(out_ch, se_channels(in_ch, out_ch), vb.pp("se"))?,
            conv3: PointwiseNorm::new(out_ch, out_ch, vb.pp("conv3"))?,
            downsample: if in_ch != out_ch { Some(PointwiseNorm::new(in_ch, out_ch, vb.pp("downsample"))?) } else { None },
        })
    }

    /// x: (n, h, w, in) → (n, h, w, out).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(x)?.silu()?;
        let y = self.conv2.forward(&y)?;
        let y = self.se.forward(&y)?;
        let y = self.conv3.forward(&y)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        (y + shortcut)?.silu()
    }
}

/// timm `RegStage`: blocks `b1..b{depth}`, the first one changing the width.
#[derive(Debug, Clone)]
struct RegStage {
    blocks: Vec<Bottleneck>,
}

impl RegStage {
    fn new(depth: usize, in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..depth).map(|i| Bottleneck::new(if i == 0 { in_ch } else { out_ch }, out_ch, vb.pp(format!("b{}", i + 1)))).collect::<Result<_>>()?;
        Ok(Self { blocks })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        Ok(x)
    }
}

/// `STCConnectorV35`.
#[derive(Debug, Clone)]
pub struct StcConnectorV35 {
    cfg: StcConfig,
    s1: RegStage,
    /// `sampler.0.weight` (out, in, kt, kh, kw), as stored; `sampler.0.bias`.
    sampler_weight: Tensor,
    sampler_bias: Tensor,
    s2: RegStage,
    readout: Vec<candle_nn::Linear>,
}

impl StcConnectorV35 {
    /// `vb` at the connector (`mm_projector` in a VideoLLaMA2 checkpoint).
    pub fn new(cfg: &StcConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (i, h) = (cfg.mm_hidden_size, cfg.hidden_size);
        let [kt, kh, kw] = cfg.downsample;
        let sampler = vb.pp("sampler").pp("0");
        let readout = (0..cfg.mlp_depth)
            .map(|k| candle_nn::linear(h, h, vb.pp("readout").pp(2 * k)))
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            s1: RegStage::new(cfg.depth, i, h, vb.pp("s1"))?,
            sampler_weight: sampler.get_with_hints((h, h, kt, kh, kw), "weight", WEIGHT_INIT)?,
            sampler_bias: sampler.get_with_hints(h, "bias", bias_init(h * kt * kh * kw))?,
            s2: RegStage::new(cfg.depth, h, h, vb.pp("s2"))?,
            readout,
        })
    }

    pub fn config(&self) -> &StcConfig {
        &self.cfg
    }

    /// The 3-D convolution (kernel = stride, no padding; trailing frames / rows / columns that make no
    /// whole window are dropped, as the convolution does) and its SiLU. x: (b, t, h, w, c).
    fn sample(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, w, c) = x.dims5()?;
        let [kt, kh, kw] = self.cfg.downsample;
        let (t2, h2, w2) = (t / kt, h / kh, w / kw);
        if t2 == 0 || h2 == 0 || w2 == 0 {
            candle_core::bail!("stc_connector_v35: {t} frames of {h}x{w} tokens are smaller than the {kt}x{kh}x{kw} sampler");
        }
        let x = x.narrow(1, 0, t2 * kt)?.narrow(2, 0, h2 * kh)?.narrow(3, 0, w2 * kw)?;
        let windows = x
            .reshape(vec![b, t2, kt, h2, kh, w2, kw, c])?
            .permute(vec![0, 1, 3, 5, 2, 4, 6, 7])?
            .reshape((b * t2 * h2 * w2, kt * kh * kw * c))?;
        // (out, in, kt, kh, kw) → (out, kt·kh·kw·in): the windows' order.
        let o = self.sampler_weight.dim(0)?;
        let weight = self.sampler_weight.permute((0, 2, 3, 4, 1))?.reshape((o, kt * kh * kw * c))?;
        let conv = candle_nn::Linear::new(weight, Some(self.sampler_bias.clone()));
        linear_in_dtype_of(&conv, &windows)?.silu()?.reshape((b, t2, h2, w2, o))
    }
}

impl Module for StcConnectorV35 {
    /// x: (batch, frames, tokens, mm_hidden_size), the tokens a square grid in raster order →
    /// (batch, (frames/kt)·(side/kh)·(side/kw), hidden_size), computed in x's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, n, d) = match x.dims() {
            &[b, t, n, d] => (b, t, n, d),
            dims => candle_core::bail!("stc_connector_v35 expects (batch, frames, tokens, width), got {dims:?}"),
        };
        if d != self.cfg.mm_hidden_size {
            candle_core::bail!("stc_connector_v35: tokens of width {d}, the connector takes mm_hidden_size {}", self.cfg.mm_hidden_size);
        }
        let side = n.isqrt();
        if side * side != n {
            candle_core::bail!("stc_connector_v35: {n} tokens per frame are not a square grid");
        }
        let y = self.s1.forward(&x.reshape((b * t, side, side, d))?)?;
        let c = y.dim(3)?;
        let y = self.sample(&y.reshape((b, t, side, side, c))?)?;
        let (_, t2, h2, w2, c) = y.dims5()?;
        let y = self.s2.forward(&y.reshape((b * t2, h2, w2, c))?)?;
        let mut y = y.reshape((b, t2 * h2 * w2, c))?;
        for (k, l) in self.readout.iter().enumerate() {
            if k > 0 {
                y = y.gelu_erf()?;
            }
            y = linear_in_dtype_of(l, &y)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn output_tokens_of_videollama2() {
        let cfg = StcConfig::new(1152, 3584);
        assert_eq!(cfg.output_tokens(16, 729), 8 * 13 * 13);
        assert_eq!(se_channels(1152, 3584), 288);
        assert_eq!(se_channels(3584, 3584), 896);
        // Python's round: 0.5 → 0, 2.5 → 2; then SEModule's own width.
        assert_eq!(se_channels(2, 64), 8);
        assert_eq!(se_channels(10, 64), 2);
        assert_eq!(cfg.param_count(), 376_889_248);
    }

    #[test]
    fn every_parameter_gets_a_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let cfg = StcConfig { mm_hidden_size: 6, hidden_size: 8, downsample: [2, 2, 2], depth: 2, mlp_depth: 2 };
        let stc = StcConnectorV35::new(&cfg, vb)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 25, 6), &dev)?;
        let y = stc.forward(&x)?;
        assert_eq!(y.dims(), &[2, 2 * 2, 8]);
        // A loss that depends on every output element unevenly (a plain sum would hide the readout's).
        let target = Tensor::randn(0f32, 1.0, y.shape(), &dev)?;
        let loss = (y - target)?.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        let vars = map.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // Per block: conv1, conv2, conv3 (weight + norm weight and bias: 3 each), se (4); s1.b1's
        // downsample (3); the sampler (2) and readout (4): 16 + 13 + 13 + 13 + 2 + 4.
        assert_eq!(vars.len(), 61, "{:?}", vars.keys().collect::<Vec<_>>());
        assert_eq!(vars.values().map(|v| v.as_tensor().elem_count()).sum::<usize>(), cfg.param_count());
        let mut bad = Vec::new();
        for (name, var) in vars.iter() {
            let g = grads.get(var.as_tensor()).ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?;
            let norm = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            if !(norm > 0.0 && norm.is_finite()) { bad.push(format!("{name}: gradient norm {norm}")); }
        }
        assert!(bad.is_empty(), "{bad:?}");
        Ok(())
    }

    #[test]
    fn bf16_input_computes_in_bf16_close_to_f32() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let cfg = StcConfig { mm_hidden_size: 8, hidden_size: 16, downsample: [2, 2, 2], depth: 1, mlp_depth: 2 };
        // Seeded weights and input: with unseeded draws this test failed now and then (0.099 against a bound
        // of 0.095 once). Over 300 seeded draws the error is 1.4% of the output scale at the median, 4.5% at
        // the 99th percentile and 5.3% at most; this draw gives 1.8%.
        let stc = StcConnectorV35::new(&cfg, crate::model::init::SeededVarMap::builder(&map, 7, DType::F32, &dev))?;
        let x = crate::test_utils::seeded_uniform(&[1, 4, 16, 8], 11)?;
        let y32 = stc.forward(&x)?;
        let y16 = stc.forward(&x.to_dtype(DType::BF16)?)?;
        assert_eq!(y16.dtype(), DType::BF16);
        let d = (y16.to_dtype(DType::F32)? - &y32)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = y32.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d <= 0.05 * scale.max(1.0), "bf16 vs f32: {d} (scale {scale})");
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let stc = StcConnectorV35::new(&StcConfig::new(4, 8), VarBuilder::from_varmap(&map, DType::F32, &dev))?;
        let e = |x: Tensor| stc.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e(Tensor::zeros((1, 2, 10, 4), DType::F32, &dev)?).contains("not a square"));
        assert!(e(Tensor::zeros((1, 2, 9, 5), DType::F32, &dev)?).contains("mm_hidden_size 4"));
        assert!(e(Tensor::zeros((1, 1, 9, 4), DType::F32, &dev)?).contains("smaller than"));
        assert!(e(Tensor::zeros((2, 9, 4), DType::F32, &dev)?).contains("(batch, frames, tokens, width)"));
        Ok(())
    }
}
