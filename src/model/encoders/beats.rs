//! BEATs (Microsoft, MIT; iter3+ layout), VideoLLaMA2-AV's audio tower, as its `BEATs.extract_features`
//! runs in eval mode with no padding mask: Kaldi fbank normalised `(x − 15.41663) / (2 · 6.55582)`, a
//! 16×16 patch conv over (time, mel) flattened time-major, LayerNorm, projection, a weight-normed grouped
//! positional conv (GELU, SamePad) added, then a post-LN ("deep norm") transformer whose attention adds a
//! bucketed relative position bias, computed once from layer 0's table and gated per layer and head by the
//! query (`gru_rel_pos`).
//!
//! Tensor names are the reference's state-dict names (`patch_embedding.weight`,
//! `encoder.pos_conv.0.weight_g`, `encoder.layers.N.self_attn.grep_a`, ...), so its checkpoints load as
//! they are. Unlike the other encoders here BEATs is trained in VideoLLaMA2's stages 2-3, so every op is
//! differentiable: when neither the input nor the weights track gradients (a frozen checkpoint) the
//! Linear layers, LayerNorms and attention products take the fused inference kernels, otherwise candle's
//! differentiable ops with the same values. In training mode ([`Beats::forward_t`]) the config's dropouts
//! and LayerDrop apply as the reference's `model.train()` does, their masks and draws from a seeded stream
//! ([`Beats::reseed_dropout`]); inference never applies them.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::model::lora::{DropoutRng, seeded_dropout};

/// `BEATs.preprocess` defaults.
pub const FBANK_MEAN: f64 = 15.41663;
pub const FBANK_STD: f64 = 6.55582;
/// torch `nn.LayerNorm` default eps (every BEATs norm).
const LN_EPS: f64 = 1e-5;
/// VideoLLaMA2's `weight_norm_fix`: `g · v · rsqrt(Σv² + 1e-6)`.
const WEIGHT_NORM_EPS: f64 = 1e-6;
/// `grep_linear`'s outputs: two gates of four summed units each.
const GATE_UNITS: usize = 8;

/// `BEATsConfig` (VideoLLaMA2 `model/beats/BEATs.py`), its keys and defaults (iter3+ AS2M). Keys the
/// encoder does not implement are refused by [`BeatsConfig::validate`]; the training-time ones are
/// listed per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeatsConfig {
    /// Side of the square (time × mel) patch, also its stride.
    #[serde(default = "d_patch")]
    pub input_patch_size: usize,
    /// Patch embedding width.
    #[serde(default = "d_embed")]
    pub embed_dim: usize,
    /// Bias in the patch conv.
    #[serde(default)]
    pub conv_bias: bool,
    #[serde(default = "d_layers")]
    pub encoder_layers: usize,
    /// VideoLLaMA2's LLM width, stored in the same config object; BEATs itself never reads it.
    #[serde(default = "d_llm_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_dim")]
    pub encoder_embed_dim: usize,
    #[serde(default = "d_ffn")]
    pub encoder_ffn_embed_dim: usize,
    #[serde(default = "d_heads")]
    pub encoder_attention_heads: usize,
    /// `gelu` (exact), `gelu_accurate` / `gelu_fast` (tanh), `relu`, `tanh`, `linear`; `glu` is refused.
    #[serde(default = "d_gelu")]
    pub activation_fn: String,
    /// Gradient scale at the input of every layer (fairseq `GradMultiply`): backward only, applied when
    /// gradients are tracked.
    #[serde(default = "d_decay")]
    pub layer_wise_gradient_decay_ratio: f64,
    /// Pre-LN layers and a final encoder LayerNorm instead of post-LN.
    #[serde(default)]
    pub layer_norm_first: bool,
    /// Post-LN residuals scaled by (2 · encoder_layers)^¼.
    #[serde(default = "d_true")]
    pub deep_norm: bool,
    /// Dropouts and LayerDrop: training mode only ([`Beats::forward_t`]). `dropout` on the encoder input
    /// after its LayerNorm and on each layer's attention and FFN outputs; `attention_dropout` on the
    /// attention probabilities; `activation_dropout` after the FFN activation; `encoder_layerdrop` skips a
    /// whole layer when a uniform draw is at most it; `dropout_input` on the projected patch embeddings.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub activation_dropout: f64,
    #[serde(default = "d_layerdrop")]
    pub encoder_layerdrop: f64,
    #[serde(default)]
    pub dropout_input: f64,
    /// Kernel of the positional conv.
    #[serde(default = "d_conv_pos")]
    pub conv_pos: usize,
    #[serde(default = "d_conv_pos_groups")]
    pub conv_pos_groups: usize,
    #[serde(default = "d_true")]
    pub relative_position_embedding: bool,
    #[serde(default = "d_buckets")]
    pub num_buckets: usize,
    #[serde(default = "d_max_distance")]
    pub max_distance: usize,
    /// The query-gated relative position bias.
    #[serde(default = "d_true")]
    pub gru_rel_pos: bool,
    /// The AudioSet classifier head (`predictor`): never used for features, its weights are not loaded.
    #[serde(default = "d_true")]
    pub finetuned_model: bool,
    #[serde(default)]
    pub predictor_dropout: f64,
    #[serde(default = "d_classes")]
    pub predictor_class: usize,
}

fn d_patch() -> usize {
    16
}
fn d_embed() -> usize {
    512
}
fn d_layers() -> usize {
    12
}
fn d_llm_hidden() -> usize {
    4096
}
fn d_dim() -> usize {
    768
}
fn d_ffn() -> usize {
    3072
}
fn d_heads() -> usize {
    12
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_decay() -> f64 {
    0.6
}
fn d_true() -> bool {
    true
}
fn d_layerdrop() -> f64 {
    0.05
}
fn d_conv_pos() -> usize {
    128
}
fn d_conv_pos_groups() -> usize {
    16
}
fn d_buckets() -> usize {
    320
}
fn d_max_distance() -> usize {
    800
}
fn d_classes() -> usize {
    527
}

impl Default for BeatsConfig {
    fn default() -> Self {
        // serde's defaults are the single source of truth.
        toml::Value::Table(toml::Table::new()).try_into().unwrap_or_else(|_| unreachable!("every BeatsConfig field has a default"))
    }
}

impl BeatsConfig {
    /// Refuses what the encoder does not implement, and shapes that cannot work.
    pub fn validate(&self) -> Result<()> {
        let d = self.encoder_embed_dim;
        let positive = [
            ("input_patch_size", self.input_patch_size),
            ("embed_dim", self.embed_dim),
            ("encoder_layers", self.encoder_layers),
            ("encoder_embed_dim", d),
            ("encoder_ffn_embed_dim", self.encoder_ffn_embed_dim),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("conv_pos", self.conv_pos),
            ("conv_pos_groups", self.conv_pos_groups),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            candle_core::bail!("BEATs config: {k} must be positive");
        }
        if !d.is_multiple_of(self.encoder_attention_heads) {
            candle_core::bail!("BEATs config: encoder_embed_dim {d} must be a multiple of encoder_attention_heads {}", self.encoder_attention_heads);
        }
        if !d.is_multiple_of(self.conv_pos_groups) {
            candle_core::bail!("BEATs config: encoder_embed_dim {d} must be a multiple of conv_pos_groups {}", self.conv_pos_groups);
        }
        Activation::parse(&self.activation_fn)?;
        if self.layer_norm_first && self.deep_norm {
            candle_core::bail!("BEATs config: deep_norm applies to post-LN layers only (layer_norm_first = true with deep_norm = true is refused, as the reference asserts)");
        }
        if self.relative_position_embedding {
            // Half the buckets per direction, half of those exact: both must be non-empty, and the
            // logarithmic range must grow.
            let exact = self.num_buckets / 4;
            if exact == 0 || self.max_distance <= exact {
                candle_core::bail!("BEATs config: num_buckets {} must be at least 4 and max_distance {} above num_buckets / 4", self.num_buckets, self.max_distance);
            }
        }
        let ratio = self.layer_wise_gradient_decay_ratio;
        if !(ratio.is_finite() && ratio > 0.0) {
            candle_core::bail!("BEATs config: layer_wise_gradient_decay_ratio {ratio} must be positive");
        }
        for (k, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
            ("encoder_layerdrop", self.encoder_layerdrop),
            ("dropout_input", self.dropout_input),
            ("predictor_dropout", self.predictor_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                candle_core::bail!("BEATs config: {k} {p} must be in [0, 1)");
            }
        }
        Ok(())
    }

    /// Tokens for `frames` fbank frames of `mel_bins` bins: (time patches, mel patches).
    pub fn patch_grid(&self, frames: usize, mel_bins: usize) -> (usize, usize) {
        (frames / self.input_patch_size.max(1), mel_bins / self.input_patch_size.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
    Tanh,
    Linear,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_accurate" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "tanh" => Self::Tanh,
            "linear" => Self::Linear,
            "glu" => candle_core::bail!("BEATs config: activation_fn `glu` (GLU_Linear feed-forward) is not implemented"),
            other => candle_core::bail!("BEATs config: activation_fn `{other}` is not one of gelu, gelu_accurate, gelu_fast, relu, tanh, linear"),
        })
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu if tracks(&[x]) => x.gelu_erf(),
            Self::Gelu => crate::accel::gelu_erf(x),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
            Self::Tanh => x.tanh(),
            Self::Linear => Ok(x.clone()),
        }
    }
}

/// Inverted dropout of `x` with probability `p` in training mode (`rng` given), the identity otherwise.
fn dropout(x: Tensor, p: f64, rng: Option<&DropoutRng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => seeded_dropout(&x, p as f32, rng),
        _ => Ok(x),
    }
}

/// Whether any of these is part of a gradient graph (then only differentiable ops may touch them).
fn tracks(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// A Linear layer: the packed inference kernel for frozen weights and input, candle's op otherwise.
#[derive(Debug, Clone)]
struct Lin(crate::accel::Linear);

impl Lin {
    fn new(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(crate::accel::linear(inp, out, vb)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if tracks(&[x, self.0.weight()]) { self.0.forward_differentiable(x) } else { self.0.forward(x) }
    }
}

/// torch `nn.LayerNorm`: the fused kernel when nothing tracks gradients (it has no backward).
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?, bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.weight.to_dtype(x.dtype())?, self.bias.to_dtype(x.dtype())?);
        if !tracks(&[x, &w, &b]) {
            return candle_nn::ops::layer_norm(&x.contiguous()?, &w, &b, LN_EPS as f32);
        }
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)
    }
}

fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if tracks(&[a, b]) { a.contiguous()?.matmul(&b.contiguous()?) } else { crate::accel::matmul(a, b) }
}

/// The positional conv's kernel: weight-normed `g`/`v` as trained, or folded for a frozen checkpoint.
#[derive(Debug, Clone)]
enum PosKernel {
    Folded(Tensor),
    Normed { g: Tensor, v: Tensor },
}

/// `g · v · rsqrt(Σ v² + 1e-6)`, the sum over every dim but the kernel position (dim 2).
fn weight_norm(g: &Tensor, v: &Tensor) -> Result<Tensor> {
    let ss = v.sqr()?.sum_keepdim(0)?.sum_keepdim(1)?;
    v.broadcast_mul(&g.broadcast_div(&(ss + WEIGHT_NORM_EPS)?.sqrt()?)?)
}

#[derive(Debug, Clone)]
struct PosConv {
    kernel: PosKernel,
    bias: Tensor,
    k: usize,
    groups: usize,
}

impl PosConv {
    /// `encoder.pos_conv.0.{weight_g, weight_v, bias}`; a checkpoint with the weight already folded
    /// (`weight`) is taken too.
    fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        let (c, k, groups) = (cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups);
        let v_shape = (c, c / groups, k);
        let kernel = if !vb.contains_tensor("weight_g") && vb.contains_tensor("weight") {
            PosKernel::Folded(vb.get(v_shape, "weight")?)
        } else {
            let g = vb.get_with_hints((1, 1, k), "weight_g", candle_nn::Init::Const(1.0))?;
            let std = (4.0 / (k * c) as f64).sqrt();
            let v = vb.get_with_hints(v_shape, "weight_v", candle_nn::Init::Randn { mean: 0.0, stdev: std })?;
            if tracks(&[&g, &v]) { PosKernel::Normed { g, v } } else { PosKernel::Folded(weight_norm(&g, &v)?) }
        };
        Ok(Self { kernel, bias: vb.get_with_hints(c, "bias", candle_nn::Init::Const(0.0))?, k, groups })
    }

    /// (batch, time, dim) → the GELU'd conv output, same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(1)?;
        let w = match &self.kernel {
            PosKernel::Folded(w) => w.clone(),
            PosKernel::Normed { g, v } => weight_norm(g, v)?,
        };
        let y = x.transpose(1, 2)?.contiguous()?.conv1d(&w.to_dtype(x.dtype())?, self.k / 2, 1, 1, self.groups)?;
        let y = y.broadcast_add(&self.bias.to_dtype(x.dtype())?.reshape((1, (), 1))?)?;
        // SamePad: an even kernel gives one frame too many; the last goes.
        let y = y.narrow(2, 0, t)?.transpose(1, 2)?;
        Activation::Gelu.apply(&y)
    }
}

/// The bucket of every relative distance `j − i` for `len` positions, index `j − i + len − 1`:
/// T5-style, bidirectional (half the buckets for positive distances), exact below `num_buckets / 4`,
/// logarithmic up to `max_distance`. Computed in f32 as the reference's tensors are, so the truncation
/// lands on the same bucket.
pub fn relative_buckets(len: usize, num_buckets: usize, max_distance: usize) -> Vec<u32> {
    let half = num_buckets / 2;
    let exact = half / 2;
    let log_range = ((max_distance as f64) / (exact as f64)).ln() as f32;
    let span = (half - exact) as f32;
    (0..(2 * len).saturating_sub(1))
        .map(|idx| {
            let rel = idx as i64 - (len as i64 - 1);
            let base = if rel > 0 { half } else { 0 };
            let a = rel.unsigned_abs() as usize;
            let b = if a < exact {
                a
            } else {
                let large = exact as i64 + (((a as f32) / (exact as f32)).ln() / log_range * span) as i64;
                (large.max(0) as usize).min(half - 1)
            };
            (base + b) as u32
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Gate {
    grep_linear: Lin,
    /// (1, heads, 1, 1).
    grep_a: Tensor,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Lin,
    k_proj: Lin,
    v_proj: Lin,
    out_proj: Lin,
    gate: Option<Gate>,
    heads: usize,
    head_dim: usize,
    /// On the attention probabilities, training only.
    attention_dropout: f64,
}

impl SelfAttention {
    fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        let (d, heads) = (cfg.encoder_embed_dim, cfg.encoder_attention_heads);
        let head_dim = d / heads;
        let gate = if cfg.relative_position_embedding && cfg.gru_rel_pos {
            Some(Gate {
                grep_linear: Lin::new(head_dim, GATE_UNITS, vb.pp("grep_linear"))?,
                grep_a: vb.get_with_hints((1, heads, 1, 1), "grep_a", candle_nn::Init::Const(1.0))?,
            })
        } else {
            None
        };
        Ok(Self {
            q_proj: Lin::new(d, d, vb.pp("q_proj"))?,
            k_proj: Lin::new(d, d, vb.pp("k_proj"))?,
            v_proj: Lin::new(d, d, vb.pp("v_proj"))?,
            out_proj: Lin::new(d, d, vb.pp("out_proj"))?,
            gate,
            heads,
            head_dim,
            attention_dropout: cfg.attention_dropout,
        })
    }

    /// `x`: (batch, time, dim); `bias`: the shared (heads, time, time) relative position bias; `train`:
    /// the dropout stream in training mode.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, train: Option<&DropoutRng>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let split = |y: Tensor| y.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2);
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        // The reference scales q by 1/(32·√d), subtracts the row maximum and multiplies by 32 before
        // adding the bias: the same softmax input up to rounding.
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut scores = (matmul(&q, &k.transpose(2, 3)?)? * scale)?;
        if let Some(bias) = bias {
            let bias = bias.to_dtype(scores.dtype())?.unsqueeze(0)?;
            let bias = match &self.gate {
                Some(g) => {
                    // Per query: two sigmoid gates from the unscaled query, four units each.
                    let u = g.grep_linear.forward(&q.contiguous()?)?.reshape((b, self.heads, t, 2, GATE_UNITS / 2))?.sum(D::Minus1)?;
                    let u = candle_nn::ops::sigmoid(&u)?;
                    let (ga, gb) = (u.narrow(D::Minus1, 0, 1)?, u.narrow(D::Minus1, 1, 1)?);
                    let scaled = (gb.broadcast_mul(&g.grep_a.to_dtype(gb.dtype())?)? - 1.0)?;
                    let gate = ((ga * scaled)? + 2.0)?;
                    bias.broadcast_mul(&gate)?
                }
                None => bias,
            };
            scores = scores.broadcast_add(&bias)?;
        }
        let probs = dropout(crate::model::nn::softmax_last_dim(&scores)?, self.attention_dropout, train)?;
        let out = matmul(&probs, &v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    self_attn: SelfAttention,
    self_attn_layer_norm: Norm,
    fc1: Lin,
    fc2: Lin,
    final_layer_norm: Norm,
    act: Activation,
    pre_ln: bool,
    /// Residual scale (deep norm), 1 otherwise.
    alpha: f64,
    /// Training only: on the attention and FFN outputs, and after the FFN activation.
    dropout: f64,
    activation_dropout: f64,
}

impl Layer {
    fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim);
        Ok(Self {
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
            self_attn_layer_norm: Norm::new(d, vb.pp("self_attn_layer_norm"))?,
            fc1: Lin::new(d, f, vb.pp("fc1"))?,
            fc2: Lin::new(f, d, vb.pp("fc2"))?,
            final_layer_norm: Norm::new(d, vb.pp("final_layer_norm"))?,
            act: Activation::parse(&cfg.activation_fn)?,
            pre_ln: cfg.layer_norm_first,
            alpha: if cfg.deep_norm { (2.0 * cfg.encoder_layers as f64).powf(0.25) } else { 1.0 },
            dropout: cfg.dropout,
            activation_dropout: cfg.activation_dropout,
        })
    }

    /// fc1, activation, fc2, with the reference's `dropout2` and `dropout3` in training mode.
    fn ffn(&self, x: &Tensor, train: Option<&DropoutRng>) -> Result<Tensor> {
        let h = dropout(self.act.apply(&self.fc1.forward(x)?)?, self.activation_dropout, train)?;
        dropout(self.fc2.forward(&h)?, self.dropout, train)
    }

    /// Attention with the reference's `dropout1` in training mode.
    fn attention(&self, x: &Tensor, bias: Option<&Tensor>, train: Option<&DropoutRng>) -> Result<Tensor> {
        dropout(self.self_attn.forward(x, bias, train)?, self.dropout, train)
    }

    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, train: Option<&DropoutRng>) -> Result<Tensor> {
        if self.pre_ln {
            let x = (x + self.attention(&self.self_attn_layer_norm.forward(x)?, bias, train)?)?;
            &x + self.ffn(&self.final_layer_norm.forward(&x)?, train)?
        } else {
            let x = self.self_attn_layer_norm.forward(&((x * self.alpha)? + self.attention(x, bias, train)?)?)?;
            self.final_layer_norm.forward(&((&x * self.alpha)? + self.ffn(&x, train)?)?)
        }
    }
}

/// fairseq's `GradMultiply`: the identity forward (exactly: `x + (s − s)`), the gradient scaled by `r`.
fn grad_multiply(x: &Tensor, r: f64) -> Result<Tensor> {
    if r == 1.0 || !x.track_op() {
        return Ok(x.clone());
    }
    let s = (x * r)?;
    x.detach() + (&s - s.detach())?
}

/// The BEATs audio encoder.
#[derive(Debug, Clone)]
pub struct Beats {
    cfg: BeatsConfig,
    /// The patch conv as a matrix (embed_dim, patch²): non-overlapping patches make it a matmul.
    patch_weight: Tensor,
    patch_bias: Option<Tensor>,
    layer_norm: Norm,
    post_extract_proj: Option<Lin>,
    pos_conv: PosConv,
    encoder_layer_norm: Norm,
    layers: Vec<Layer>,
    /// Layer 0's `relative_attention_bias` table (num_buckets, heads), shared by every layer.
    relative_attention_bias: Option<Tensor>,
    dtype: DType,
    device: Device,
    /// The training-mode dropout masks and LayerDrop draws (a run reseeds it per step).
    rng: DropoutRng,
}

impl Beats {
    /// `vb` at the model root (the reference's state-dict names).
    pub fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (e, d, p) = (cfg.embed_dim, cfg.encoder_embed_dim, cfg.input_patch_size);
        let patch_weight = vb.get_with_hints((e, 1, p, p), "patch_embedding.weight", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
        let patch_bias = if cfg.conv_bias { Some(vb.get_with_hints(e, "patch_embedding.bias", candle_nn::Init::Const(0.0))?) } else { None };
        let enc = vb.pp("encoder");
        let layers = (0..cfg.encoder_layers).map(|i| Layer::new(cfg, enc.pp(format!("layers.{i}")))).collect::<Result<Vec<_>>>()?;
        let relative_attention_bias = if cfg.relative_position_embedding {
            Some(enc.pp("layers.0.self_attn.relative_attention_bias").get_with_hints(
                (cfg.num_buckets, cfg.encoder_attention_heads),
                "weight",
                candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 },
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight: patch_weight.reshape((e, p * p))?,
            patch_bias,
            layer_norm: Norm::new(e, vb.pp("layer_norm"))?,
            post_extract_proj: if e != d { Some(Lin::new(e, d, vb.pp("post_extract_proj"))?) } else { None },
            pos_conv: PosConv::new(cfg, enc.pp("pos_conv.0"))?,
            encoder_layer_norm: Norm::new(d, enc.pp("layer_norm"))?,
            layers,
            relative_attention_bias,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            rng: crate::model::lora::dropout_rng(0),
        })
    }

    pub fn config(&self) -> &BeatsConfig {
        &self.cfg
    }

    /// Restarts the training-mode dropout and LayerDrop stream.
    pub fn reseed_dropout(&self, seed: u64) {
        use rand::SeedableRng;
        if let Ok(mut g) = self.rng.lock() {
            *g = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        }
    }

    /// The fewest fbank frames that make one token.
    pub fn min_frames(&self) -> usize {
        self.cfg.input_patch_size
    }

    /// `BEATs.preprocess`: `(fbank − 15.41663) / (2 · 6.55582)`.
    pub fn normalise(fbank: &Tensor) -> Result<Tensor> {
        (fbank - FBANK_MEAN)? / (2.0 * FBANK_STD)
    }

    /// Patch tokens after the projection: (batch, time patches · mel patches, encoder_embed_dim),
    /// time-major. `fbank`: raw log-mel (batch, frames, mel bins). `dropout_input` is the caller's.
    fn embed(&self, fbank: &Tensor) -> Result<Tensor> {
        let (b, frames, mels) = match fbank.dims() {
            &[b, t, m] => (b, t, m),
            d => candle_core::bail!("BEATs input must be fbank features (batch, frames, mel bins), got shape {d:?}"),
        };
        let p = self.cfg.input_patch_size;
        let (tp, fp) = self.cfg.patch_grid(frames, mels);
        if b == 0 || tp == 0 || fp == 0 {
            candle_core::bail!("BEATs input of shape {:?} has no {p}x{p} patch (needs at least {p} frames and {p} mel bins)", fbank.dims());
        }
        let x = Self::normalise(&fbank.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        // The conv drops a partial patch at the end of either axis.
        let x = x.narrow(1, 0, tp * p)?.narrow(2, 0, fp * p)?;
        let patches = x.reshape((b, tp, p, fp, p))?.permute((0, 1, 3, 2, 4))?.reshape((b * tp * fp, p * p))?;
        let w = self.patch_weight.to_dtype(patches.dtype())?;
        let mut y = matmul(&patches, &w.t()?)?.reshape((b, tp * fp, self.cfg.embed_dim))?;
        if let Some(bias) = &self.patch_bias {
            y = y.broadcast_add(&bias.to_dtype(y.dtype())?)?;
        }
        let y = self.layer_norm.forward(&y)?;
        match &self.post_extract_proj {
            Some(proj) => proj.forward(&y),
            None => Ok(y),
        }
    }

    /// The shared bias (heads, time, time) for `t` tokens.
    fn position_bias(&self, t: usize) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_attention_bias else { return Ok(None) };
        let buckets = relative_buckets(t, self.cfg.num_buckets, self.cfg.max_distance);
        // (t, t) indices into the per-distance buckets: j − i + t − 1.
        let buckets = &buckets;
        let idx: Vec<u32> = (0..t).flat_map(|i| (0..t).map(move |j| buckets[j + t - 1 - i])).collect();
        let idx = Tensor::from_vec(idx, t * t, table.device())?;
        let heads = self.cfg.encoder_attention_heads;
        Ok(Some(table.index_select(&idx, 0)?.reshape((t, t, heads))?.permute((2, 0, 1))?.contiguous()?))
    }

    /// Every hidden state: the encoder's input to layer 0 (after the positional conv and, post-LN, the
    /// encoder LayerNorm), then each layer's output (pre-LN: the last through the encoder LayerNorm).
    /// Each (batch, tokens, encoder_embed_dim).
    pub fn forward_states(&self, fbank: &Tensor) -> Result<Vec<Tensor>> {
        self.forward_states_t(fbank, false)
    }

    /// As [`Self::forward_states`]; `train` applies the config's dropouts and LayerDrop (a dropped
    /// layer's output is its input).
    pub fn forward_states_t(&self, fbank: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let train = train.then_some(&self.rng);
        let x = dropout(self.embed(fbank)?, self.cfg.dropout_input, train)?;
        let mut x = (&x + self.pos_conv.forward(&x)?)?;
        if !self.cfg.layer_norm_first {
            x = self.encoder_layer_norm.forward(&x)?;
        }
        x = dropout(x, self.cfg.dropout, train)?;
        let bias = self.position_bias(x.dim(1)?)?;
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            let input = grad_multiply(&x, self.cfg.layer_wise_gradient_decay_ratio)?;
            states.push(x);
            x = if self.layer_dropped(train)? { input } else { layer.forward(&input, bias.as_ref(), train)? };
        }
        if self.cfg.layer_norm_first {
            x = self.encoder_layer_norm.forward(&x)?;
        }
        states.push(x);
        Ok(states)
    }

    /// LayerDrop: in training mode a layer is skipped when a uniform draw is at most `encoder_layerdrop`
    /// (the reference runs it when `np.random.random() > layerdrop`).
    fn layer_dropped(&self, train: Option<&DropoutRng>) -> Result<bool> {
        use rand::Rng;
        let p = self.cfg.encoder_layerdrop;
        let Some(rng) = train.filter(|_| p > 0.0) else { return Ok(false) };
        let mut g = rng.lock().map_err(|_| candle_core::Error::Msg("dropout rng lock poisoned".into()))?;
        Ok(g.random::<f64>() <= p)
    }

    /// `extract_features(fbank, padding_mask=None)[0]`: (batch, tokens, encoder_embed_dim).
    pub fn forward(&self, fbank: &Tensor) -> Result<Tensor> {
        self.forward_t(fbank, false)
    }

    /// As [`Self::forward`]; `train`: the reference in training mode (dropouts and LayerDrop).
    pub fn forward_t(&self, fbank: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_states_t(fbank, train)?.pop().ok_or_else(|| candle_core::Error::Msg("BEATs: no hidden states".into()))
    }
}

impl Module for Beats {
    fn forward(&self, fbank: &Tensor) -> Result<Tensor> {
        Beats::forward(self, fbank)
    }
}

/// Fbank features of (batch, samples) mono 16 kHz waveforms as BEATs takes them: (batch, frames, 128).
pub fn fbank_batch(wave: &Tensor) -> Result<Tensor> {
    let rows = match wave.dims() {
        &[_, _] => wave.to_dtype(DType::F32)?.to_vec2::<f32>()?,
        d => candle_core::bail!("waveform must be (batch, samples), got shape {d:?}"),
    };
    let fb = crate::media::fbank::KaldiFbank::new(&crate::media::fbank::FbankOptions::beats()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut out = Vec::new();
    let mut frames = 0;
    for row in &rows {
        let scaled: Vec<f32> = row.iter().map(|&v| v * 32768.0).collect();
        let f = fb.compute(&scaled).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        frames = f.len() / fb.num_mel_bins();
        out.extend(f);
    }
    Tensor::from_vec(out, (rows.len(), frames, fb.num_mel_bins()), wave.device())
}

/// BEATs' input from (batch, samples) waveforms at `rate`: the manifest's clip selection of each row
/// over its `lengths` valid samples (`[preprocess] audio_clips`; `None`: the whole waveform), then
/// [`fbank_batch`].
pub fn prepare_input(wave: &Tensor, lengths: Option<&[usize]>, clips: Option<&crate::media::audio_clips::AudioClips>, rate: u32) -> Result<Tensor> {
    fbank_batch(&crate::media::audio_clips::select_rows(clips, wave, lengths, rate)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> BeatsConfig {
        BeatsConfig {
            embed_dim: 24,
            encoder_layers: 2,
            encoder_embed_dim: 16,
            encoder_ffn_embed_dim: 32,
            encoder_attention_heads: 2,
            conv_pos: 8,
            conv_pos_groups: 4,
            num_buckets: 16,
            max_distance: 32,
            ..BeatsConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_reference_config() {
        let c = BeatsConfig::default();
        assert_eq!((c.input_patch_size, c.embed_dim, c.encoder_layers, c.encoder_embed_dim, c.encoder_ffn_embed_dim), (16, 512, 12, 768, 3072));
        assert_eq!((c.conv_pos, c.conv_pos_groups, c.num_buckets, c.max_distance), (128, 16, 320, 800));
        assert!(c.deep_norm && !c.layer_norm_first && c.gru_rel_pos && c.relative_position_embedding && !c.conv_bias);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unsupported_or_inconsistent_configs_are_refused() {
        let refused = |f: fn(&mut BeatsConfig)| {
            let mut c = tiny();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(refused(|c| c.activation_fn = "glu".into()));
        assert!(refused(|c| c.activation_fn = "mish".into()));
        assert!(refused(|c| c.layer_norm_first = true));
        assert!(refused(|c| c.encoder_attention_heads = 3));
        assert!(refused(|c| c.conv_pos_groups = 5));
        assert!(refused(|c| c.num_buckets = 2));
        assert!(refused(|c| c.max_distance = 4));
        assert!(refused(|c| c.layer_wise_gradient_decay_ratio = 0.0));
        assert!(refused(|c| c.encoder_layerdrop = 1.5));
        assert!(refused(|c| c.conv_pos = 0));
        assert!(!refused(|c| {
            c.layer_norm_first = true;
            c.deep_norm = false;
        }));
        let unknown: std::result::Result<BeatsConfig, _> = toml::from_str("encoder_layer = 3");
        assert!(unknown.is_err(), "a misspelt key must be refused");
    }

    #[test]
    fn buckets_match_the_reference_formula() {
        // num_buckets 320, max_distance 800: 160 per direction, exact below 80.
        let b = relative_buckets(1000, 320, 800);
        let at = |rel: i64| b[(rel + 999) as usize];
        assert_eq!(at(0), 0);
        assert_eq!(at(-79), 79);
        assert_eq!(at(79), 160 + 79);
        assert_eq!(at(80), 160 + 80);
        // 80 + floor(ln(799/80) / ln(10) · 80) = 80 + 79 = 159.
        assert_eq!(at(-799), 159);
        assert_eq!(at(-999), 159);
        assert_eq!(at(999), 319);
    }

    #[test]
    fn shapes_and_grid() -> Result<()> {
        let vm = VarMap::new();
        let m = Beats::new(&tiny(), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
        let x = Tensor::randn(10f32, 3.0, (2, 50, 128), &Device::Cpu)?;
        let states = m.forward_states(&x)?;
        assert_eq!(states.len(), 3);
        // 50 frames → 3 time patches (the last 2 frames dropped), 128 bins → 8.
        assert_eq!(states[2].dims(), &[2, 24, 16]);
        assert!(m.forward(&Tensor::zeros((1, 15, 128), DType::F32, &Device::Cpu)?).is_err());
        assert!(m.forward(&Tensor::zeros((1, 128), DType::F32, &Device::Cpu)?).is_err());
        Ok(())
    }

    /// Every parameter of a BEATs built from a VarMap gets a gradient, and the frozen (fused) path gives
    /// the same values as the differentiable one.
    #[test]
    fn every_parameter_is_trained() -> Result<()> {
        for pre_ln in [false, true] {
            let mut cfg = tiny();
            cfg.conv_bias = true;
            if pre_ln {
                cfg.layer_norm_first = true;
                cfg.deep_norm = false;
            }
            let vm = VarMap::new();
            let m = Beats::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
            let x = Tensor::randn(10f32, 3.0, (2, 40, 128), &Device::Cpu)?;
            let y = m.forward(&x)?;
            let w = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu)?;
            let grads = (y * &w)?.sum_all()?.backward()?;
            let vars = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?.clone();
            assert!(!vars.is_empty());
            for (name, var) in &vars {
                let g = grads.get(var.as_tensor()).ok_or_else(|| candle_core::Error::Msg(format!("no gradient for `{name}`")))?;
                let n = g.abs()?.sum_all()?.to_scalar::<f32>()?;
                assert!(n > 0.0 && n.is_finite(), "gradient of `{name}` is {n}");
            }
            // The same weights frozen: the fused inference path.
            let frozen: std::collections::HashMap<String, Tensor> = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
            let fm = Beats::new(&cfg, VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu))?;
            let d = (fm.forward(&x)? - m.forward(&x)?.detach())?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "frozen and trainable paths differ by {d}");
        }
        Ok(())
    }

    /// Training mode applies the config's dropouts and LayerDrop from the seeded stream; eval mode
    /// (every inference path) never does, whatever the config says.
    #[test]
    fn dropouts_and_layerdrop_apply_in_training_mode_only() -> Result<()> {
        let build = |f: fn(&mut BeatsConfig)| -> Result<Beats> {
            let mut cfg = tiny();
            f(&mut cfg);
            let vm = VarMap::new();
            Beats::new(&cfg, crate::model::init::SeededVarMap::builder(&vm, 5, DType::F32, &Device::Cpu))
        };
        let x = Tensor::randn(10f32, 3.0, (2, 40, 128), &Device::Cpu)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
        let plain = build(|_| ())?;
        let plain_states = plain.forward_states(&x)?;
        // Eval mode: the same output with every probability set.
        let noisy = build(|c| {
            c.dropout = 0.5;
            c.attention_dropout = 0.5;
            c.activation_dropout = 0.5;
            c.dropout_input = 0.5;
            c.encoder_layerdrop = 0.5;
        })?;
        assert_eq!(max_diff(&noisy.forward(&x)?, &plain.forward(&x)?)?, 0.0);
        // Training mode: dropout changes the output, reproducibly from the same seed.
        noisy.reseed_dropout(7);
        let a = noisy.forward_t(&x, true)?;
        noisy.reseed_dropout(7);
        let b = noisy.forward_t(&x, true)?;
        assert_eq!(max_diff(&a, &b)?, 0.0);
        assert!(max_diff(&a, &plain.forward(&x)?)? > 1e-3);
        // Zero probabilities train exactly as eval (the default encoder_layerdrop is 0.05: set to 0).
        let zero = build(|c| c.encoder_layerdrop = 0.0)?;
        assert_eq!(max_diff(&zero.forward_t(&x, true)?, &zero.forward(&x)?)?, 0.0);
        // LayerDrop near 1 skips every layer: the output is the encoder's input (post-LN), the state
        // before layer 0 in eval mode.
        let skip = build(|c| c.encoder_layerdrop = 0.999_999)?;
        let states = skip.forward_states_t(&x, true)?;
        assert_eq!(states.len(), plain_states.len());
        for s in &states {
            assert_eq!(max_diff(s, &plain_states[0])?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn grad_multiply_is_the_identity_forward_and_scales_the_gradient() -> Result<()> {
        let v = candle_core::Var::from_tensor(&Tensor::new(&[1.5f32, -2.25, 3.1], &Device::Cpu)?)?;
        let y = grad_multiply(v.as_tensor(), 0.6)?;
        assert_eq!(y.to_vec1::<f32>()?, v.as_tensor().to_vec1::<f32>()?);
        let g = y.sum_all()?.backward()?.get(v.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg("no grad".into()))?;
        for x in g.to_vec1::<f32>()? {
            assert!((x - 0.6).abs() < 1e-6);
        }
        Ok(())
    }
}
