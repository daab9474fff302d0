//! HuBERT (the wav2vec2 family) as `transformers.HubertModel` runs it in eval mode: conv feature extractor,
//! feature projection, weight-normed positional conv and a post-LN (`do_stable_layer_norm = false`,
//! hubert-base) or pre-LN (`true`, hubert-large / chinese-hubert-large) transformer. Tensor names are HF's,
//! so checkpoints load unchanged; `forward` returns every hidden state as `output_hidden_states=True` does,
//! because MERBench / Emotion-LLaMA features sum or pick intermediate layers.

use std::path::Path;

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Conv1dConfig, LayerNorm, Module, VarBuilder};

use crate::accel::Linear;
use serde::{Deserialize, Serialize};

/// Sample rate every HuBERT checkpoint is trained at (only used in messages).
const SAMPLE_RATE: usize = 16_000;

/// `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`'s epsilon (added to the variance).
const NORM_EPS: f64 = 1e-7;

/// torch `nn.LayerNorm` / `nn.GroupNorm` default eps: the conv feature extractor's norms use it, not
/// `layer_norm_eps`.
const TORCH_NORM_EPS: f64 = 1e-5;

/// `config.json` keys of HuBERT that never change the encoder's output (beyond
/// [`crate::model::hf_config::COMMON_IGNORED`]), with the reason.
pub const HF_IGNORED: &[(&str, &str)] = &[
    ("activation_dropout", "dropout: off at inference"),
    ("attention_dropout", "dropout: off at inference"),
    ("hidden_dropout", "dropout: off at inference"),
    ("hidden_dropout_prob", "dropout (older configs): off at inference"),
    ("feat_proj_dropout", "dropout: off at inference"),
    ("feat_extract_dropout", "dropout (older configs): off at inference"),
    ("final_dropout", "dropout before the CTC head: off at inference, no head loaded"),
    ("layerdrop", "LayerDrop: training only"),
    ("apply_spec_augment", "SpecAugment masking: training only"),
    ("mask_time_prob", "SpecAugment: training only"),
    ("mask_time_length", "SpecAugment: training only"),
    ("mask_time_min_masks", "SpecAugment: training only"),
    ("mask_time_selection", "SpecAugment (older configs): training only"),
    ("mask_feature_prob", "SpecAugment: training only"),
    ("mask_feature_length", "SpecAugment: training only"),
    ("mask_feature_min_masks", "SpecAugment: training only"),
    ("mask_channel_prob", "SpecAugment (older configs): training only"),
    ("mask_channel_length", "SpecAugment (older configs): training only"),
    ("mask_channel_selection", "SpecAugment (older configs): training only"),
    ("mask_channel_other", "SpecAugment (older configs): training only"),
    ("mask_channel_min_space", "SpecAugment (older configs): training only"),
    ("mask_time_other", "SpecAugment (older configs): training only"),
    ("mask_time_min_space", "SpecAugment (older configs): training only"),
    ("ctc_loss_reduction", "CTC head loss: no head loaded"),
    ("ctc_zero_infinity", "CTC head loss: no head loaded"),
    ("vocab_size", "CTC head size: no head loaded"),
    ("use_weighted_layer_sum", "classification head: no head loaded"),
    ("classifier_proj_size", "classification head: no head loaded"),
    ("bos_token_id", "CTC vocabulary"),
    ("eos_token_id", "CTC vocabulary"),
    ("num_feat_extract_layers", "checked: must equal the length of conv_dim"),
    ("conv_pos_batch_norm", "checked: refused unless false"),
];

/// Checks an HF `config.json` object before it is read: settings the model does not implement are
/// refused by name, unknown keys named in a warning (and returned).
pub fn check_hf_keys(path: &Path, obj: &serde_json::Map<String, serde_json::Value>) -> std::result::Result<Vec<String>, crate::model::hf_config::KeyError> {
    use crate::model::hf_config::{self, KeyError, refuse_unless};
    refuse_unless(path, obj, "conv_pos_batch_norm", |v| v == &serde_json::Value::Bool(false), "the positional conv with weight norm (conv_pos_batch_norm false)")?;
    if let (Some(n), Some(dims)) = (obj.get("num_feat_extract_layers").and_then(|v| v.as_u64()), obj.get("conv_dim").and_then(|v| v.as_array()))
        && n as usize != dims.len()
    {
        return Err(KeyError::new(path, "num_feat_extract_layers", format!("{n} disagrees with the {} entries of conv_dim", dims.len())));
    }
    Ok(hf_config::warn_unknown_for::<HubertConfig>(path, obj, HF_IGNORED))
}

/// The fields of HF `HubertConfig` (`config.json`) the model reads, with HF's defaults (hubert-base);
/// the keys it ignores are [`HF_IGNORED`], with the reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubertConfig {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Activation of the transformer feed-forward.
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    /// Eps of the transformer and feature-projection LayerNorms.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// `group`: GroupNorm (one group per channel) after the first conv only; `layer`: LayerNorm over
    /// channels after every conv.
    #[serde(default = "d_group")]
    pub feat_extract_norm: String,
    #[serde(default = "d_gelu")]
    pub feat_extract_activation: String,
    #[serde(default = "d_conv_dim")]
    pub conv_dim: Vec<usize>,
    #[serde(default = "d_conv_stride")]
    pub conv_stride: Vec<usize>,
    #[serde(default = "d_conv_kernel")]
    pub conv_kernel: Vec<usize>,
    #[serde(default)]
    pub conv_bias: bool,
    #[serde(default = "d_pos_k")]
    pub num_conv_pos_embeddings: usize,
    #[serde(default = "d_pos_groups")]
    pub num_conv_pos_embedding_groups: usize,
    /// Pre-LN encoder layers with the encoder LayerNorm at the end instead of the start.
    #[serde(default)]
    pub do_stable_layer_norm: bool,
    /// LayerNorm before the feature projection.
    #[serde(default = "d_true")]
    pub feat_proj_layer_norm: bool,
}

fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_group() -> String {
    "group".into()
}
fn d_conv_dim() -> Vec<usize> {
    vec![512; 7]
}
fn d_conv_stride() -> Vec<usize> {
    vec![5, 2, 2, 2, 2, 2, 2]
}
fn d_conv_kernel() -> Vec<usize> {
    vec![10, 3, 3, 3, 3, 2, 2]
}
fn d_pos_k() -> usize {
    128
}
fn d_pos_groups() -> usize {
    16
}
fn d_true() -> bool {
    true
}

impl Default for HubertConfig {
    fn default() -> Self {
        Self {
            hidden_size: d_hidden(),
            num_hidden_layers: d_layers(),
            num_attention_heads: d_heads(),
            intermediate_size: d_intermediate(),
            hidden_act: d_gelu(),
            layer_norm_eps: d_eps(),
            feat_extract_norm: d_group(),
            feat_extract_activation: d_gelu(),
            conv_dim: d_conv_dim(),
            conv_stride: d_conv_stride(),
            conv_kernel: d_conv_kernel(),
            conv_bias: false,
            num_conv_pos_embeddings: d_pos_k(),
            num_conv_pos_embedding_groups: d_pos_groups(),
            do_stable_layer_norm: false,
            feat_proj_layer_norm: true,
        }
    }
}

impl HubertConfig {
    /// Structural checks the model relies on, so a bad config fails here rather than as a shape error.
    pub fn validate(&self) -> Result<()> {
        let n = self.conv_dim.len();
        if n == 0 || self.conv_kernel.len() != n || self.conv_stride.len() != n {
            candle_core::bail!(
                "HuBERT config: conv_dim, conv_kernel and conv_stride must be non-empty and of equal length (got {}, {}, {})",
                n,
                self.conv_kernel.len(),
                self.conv_stride.len()
            );
        }
        if self.conv_dim.contains(&0) || self.conv_kernel.contains(&0) || self.conv_stride.contains(&0) {
            candle_core::bail!("HuBERT config: conv_dim, conv_kernel and conv_stride entries must be positive");
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            candle_core::bail!(
                "HuBERT config: hidden_size {} must be a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let g = self.num_conv_pos_embedding_groups;
        if g == 0 || !self.hidden_size.is_multiple_of(g) {
            candle_core::bail!(
                "HuBERT config: hidden_size {} must be a multiple of num_conv_pos_embedding_groups {g}",
                self.hidden_size
            );
        }
        if self.num_conv_pos_embeddings == 0 {
            candle_core::bail!("HuBERT config: num_conv_pos_embeddings must be positive");
        }
        if !["group", "layer"].contains(&self.feat_extract_norm.as_str()) {
            candle_core::bail!("HuBERT config: feat_extract_norm `{}` must be `group` or `layer`", self.feat_extract_norm);
        }
        Activation::parse(&self.hidden_act)?;
        Activation::parse(&self.feat_extract_activation)?;
        Ok(())
    }

    /// Reads an HF `config.json` (a `model_type` other than `hubert` is refused).
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| candle_core::Error::Msg(format!("`{}`: {e}", path.display())))?;
        Self::from_json_str(&text).map_err(|e| candle_core::Error::Msg(format!("`{}`: {e}", path.display())))
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| candle_core::Error::Msg(format!("not a JSON config: {e}")))?;
        if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()).filter(|m| *m != "hubert") {
            candle_core::bail!("model_type `{mt}` is not a HuBERT config (expected `hubert`)");
        }
        let cfg: Self = serde_json::from_value(v).map_err(|e| candle_core::Error::Msg(format!("bad HuBERT config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Output frames of the conv feature extractor for `samples` input samples (0 when too short).
    pub fn frames_for(&self, samples: usize) -> usize {
        self.conv_kernel.iter().zip(&self.conv_stride).fold(samples, |len, (&k, &s)| if len < k { 0 } else { (len - k) / s + 1 })
    }

    /// The receptive field of one output frame: the shortest input that yields a frame.
    pub fn min_samples(&self) -> usize {
        self.conv_kernel.iter().zip(&self.conv_stride).rev().fold(1, |n, (&k, &s)| (n - 1) * s + k)
    }
}

/// The `ACT2FN` entries HuBERT checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    /// torch's exact (erf) GELU, HF `gelu`.
    Gelu,
    /// tanh approximation, HF `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => candle_core::bail!("HuBERT config: activation `{other}` is not supported (gelu, gelu_new, relu, silu)"),
        })
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// LayerNorm over the last dim (the vectorised pass of `accel::layer_norm` for frozen f32 weights).
fn layer_norm(x: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
    crate::accel::layer_norm(x, ln)
}

#[derive(Debug, Clone)]
enum ConvNorm {
    None,
    /// One group per channel (torch `GroupNorm(C, C)`): each channel normalised over time; weight, bias.
    Group(Tensor, Tensor),
    /// Over channels, per frame.
    Layer(LayerNorm),
}

/// One conv of the feature extractor, on time-major activations (batch, time, channels) so the
/// LayerNorm over channels needs no transposes and the stack ends in the transformer's layout.
#[derive(Debug, Clone)]
struct ConvLayer {
    conv: crate::accel::Conv1d,
    norm: ConvNorm,
    /// `None` when the exact GELU is fused into the conv (no norm in between).
    act: Option<Activation>,
}

impl ConvLayer {
    fn new(cfg: &HubertConfig, i: usize, vb: VarBuilder) -> Result<Self> {
        let (inp, out) = (if i == 0 { 1 } else { cfg.conv_dim[i - 1] }, cfg.conv_dim[i]);
        let stride = cfg.conv_stride[i];
        let conv_cfg = Conv1dConfig { stride, ..Default::default() };
        let vc = vb.pp("conv");
        let conv = if cfg.conv_bias {
            candle_nn::conv1d(inp, out, cfg.conv_kernel[i], conv_cfg, vc)?
        } else {
            candle_nn::conv1d_no_bias(inp, out, cfg.conv_kernel[i], conv_cfg, vc)?
        };
        let conv = crate::accel::Conv1d::new(conv.weight().clone(), conv.bias().cloned(), stride, 0, 1);
        let norm = match (cfg.feat_extract_norm.as_str(), i) {
            ("layer", _) => ConvNorm::Layer(candle_nn::layer_norm(out, TORCH_NORM_EPS, vb.pp("layer_norm"))?),
            ("group", 0) => ConvNorm::Group(
                vb.get_with_hints(out, "layer_norm.weight", candle_nn::Init::Const(1.0))?,
                vb.get_with_hints(out, "layer_norm.bias", candle_nn::Init::Const(0.0))?,
            ),
            _ => ConvNorm::None,
        };
        let act = Activation::parse(&cfg.feat_extract_activation)?;
        Ok(match (&norm, act) {
            (ConvNorm::None, Activation::Gelu) => Self { conv: conv.with_gelu_erf(), norm, act: None },
            _ => Self { conv, norm, act: Some(act) },
        })
    }

    /// (batch, time, channels) -> (batch, time', channels').
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv.forward_time_major(x)?;
        let x = match &self.norm {
            ConvNorm::None => x,
            ConvNorm::Group(w, b) => {
                let mean = x.mean_keepdim(1)?;
                let centred = x.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim(1)?;
                centred.broadcast_div(&(var + TORCH_NORM_EPS)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)?
            }
            ConvNorm::Layer(ln) => layer_norm(&x, ln)?,
        };
        match self.act {
            None => Ok(x),
            Some(Activation::Gelu) => crate::accel::gelu_erf(&x),
            Some(act) => act.apply(&x),
        }
    }
}

/// Grouped conv over time whose output is added to the features (HuBERT's only position signal).
#[derive(Debug, Clone)]
struct PositionalConv {
    /// The effective weight-normed kernel (hidden, hidden / groups, k), "same" padding.
    conv: crate::accel::Conv1d,
    kernel: usize,
    /// `None` when fused into the conv (the exact GELU).
    act: Option<Activation>,
}

impl PositionalConv {
    /// Accepts the weight norm as `parametrizations.weight.original0/1` (transformers >= 4.3x
    /// `save_pretrained`), as `weight_g/weight_v` (older checkpoints such as facebook/hubert-base-ls960), or
    /// already folded into `weight`. With none present (a fresh VarMap) `weight_g/weight_v` are created.
    fn new(cfg: &HubertConfig, vb: VarBuilder) -> Result<Self> {
        let (h, k, groups) = (cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups);
        let vb = vb.pp("conv");
        let g_shape = (1, 1, k);
        let v_shape = (h, h / groups, k);
        let param = "parametrizations.weight";
        let weight = if vb.contains_tensor(&format!("{param}.original0")) {
            let g = vb.get(g_shape, &format!("{param}.original0"))?;
            let v = vb.get(v_shape, &format!("{param}.original1"))?;
            weight_norm(&g, &v)?
        } else if !vb.contains_tensor("weight_g") && vb.contains_tensor("weight") {
            vb.get(v_shape, "weight")?
        } else {
            let g = vb.get_with_hints(g_shape, "weight_g", candle_nn::Init::Const(1.0))?;
            let v = vb.get_with_hints(v_shape, "weight_v", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
            weight_norm(&g, &v)?
        };
        let bias = vb.get(h, "bias")?;
        let conv = crate::accel::Conv1d::new(weight, Some(bias), 1, k / 2, groups);
        // The exact GELU commutes with dropping the extra frame, so it can be fused.
        Ok(match Activation::parse(&cfg.feat_extract_activation)? {
            Activation::Gelu => Self { conv: conv.with_gelu_erf(), kernel: k, act: None },
            act => Self { conv, kernel: k, act: Some(act) },
        })
    }

    /// (batch, frames, hidden) -> same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(1)?;
        let y = self.conv.forward_time_major(x)?;
        // "Same" padding with an even kernel yields one extra frame at the end; HF drops it.
        let y = if self.kernel.is_multiple_of(2) { y.narrow(1, 0, t)? } else { y };
        match self.act {
            None => Ok(y),
            Some(act) => act.apply(&y),
        }
    }
}

/// torch `weight_norm(dim=2)`: `g * v / ||v||`, the norm over every dim except the kernel position.
fn weight_norm(g: &Tensor, v: &Tensor) -> Result<Tensor> {
    let norm = v.sqr()?.sum_keepdim(0)?.sum_keepdim(1)?.sqrt()?;
    v.broadcast_mul(&g.broadcast_div(&norm)?)
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &HubertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: crate::accel::linear(h, h, vb.pp("q_proj"))?,
            k_proj: crate::accel::linear(h, h, vb.pp("k_proj"))?,
            v_proj: crate::accel::linear(h, h, vb.pp("v_proj"))?,
            out_proj: crate::accel::linear(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// Full bidirectional attention (no padding mask: every frame is real).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        // (b, heads, t, head_dim) views: the fast path reads them in place.
        let split = |y: Tensor| y.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2);
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let out = crate::accel::attention(&q, &k, &v, (self.head_dim as f64).powf(-0.5))?;
        debug_assert_eq!(out.dims(), &[b, t, h]);
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    intermediate_dense: Linear,
    output_dense: Linear,
    /// `None` when fused into `intermediate_dense` (the exact GELU).
    act: Option<Activation>,
}

impl FeedForward {
    fn new(cfg: &HubertConfig, vb: VarBuilder) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act)?;
        let dense = crate::accel::linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("intermediate_dense"))?;
        let fused = matches!(act, Activation::Gelu);
        Ok(Self {
            intermediate_dense: if fused { dense.with_gelu_erf() } else { dense },
            output_dense: crate::accel::linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("output_dense"))?,
            act: (!fused).then_some(act),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.intermediate_dense.forward(x)?;
        let h = match &self.act {
            Some(act) => act.apply(&h)?,
            None => h,
        };
        self.output_dense.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attention: Attention,
    layer_norm: LayerNorm,
    feed_forward: FeedForward,
    final_layer_norm: LayerNorm,
    /// Pre-LN (`HubertEncoderLayerStableLayerNorm`) instead of post-LN.
    stable: bool,
}

impl EncoderLayer {
    fn new(cfg: &HubertConfig, vb: VarBuilder) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            attention: Attention::new(cfg, vb.pp("attention"))?,
            layer_norm: candle_nn::layer_norm(h, eps, vb.pp("layer_norm"))?,
            feed_forward: FeedForward::new(cfg, vb.pp("feed_forward"))?,
            final_layer_norm: candle_nn::layer_norm(h, eps, vb.pp("final_layer_norm"))?,
            stable: cfg.do_stable_layer_norm,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.stable {
            let x = (x + self.attention.forward(&layer_norm(x, &self.layer_norm)?)?)?;
            &x + self.feed_forward.forward(&layer_norm(&x, &self.final_layer_norm)?)?
        } else {
            let x = layer_norm(&(x + self.attention.forward(x)?)?, &self.layer_norm)?;
            let x = (&x + self.feed_forward.forward(&x)?)?;
            layer_norm(&x, &self.final_layer_norm)
        }
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    pos_conv_embed: PositionalConv,
    layer_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    stable: bool,
}

impl Encoder {
    fn new(cfg: &HubertConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pos_conv_embed: PositionalConv::new(cfg, vb.pp("pos_conv_embed"))?,
            layer_norm: candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm"))?,
            layers,
            stable: cfg.do_stable_layer_norm,
        })
    }

    /// HF's `hidden_states`: the input of every layer, then the output. Post-LN normalises the input of the
    /// first layer; stable-layer-norm normalises only the last output.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = (x + self.pos_conv_embed.forward(x)?)?;
        if !self.stable {
            x = layer_norm(&x, &self.layer_norm)?;
        }
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            let next = layer.forward(&x)?;
            states.push(x);
            x = next;
        }
        if self.stable {
            x = layer_norm(&x, &self.layer_norm)?;
        }
        states.push(x);
        Ok(states)
    }
}

/// `transformers.HubertModel` (eval mode: no SpecAugment masking, no dropout, no padding mask).
#[derive(Debug, Clone)]
pub struct HubertModel {
    cfg: HubertConfig,
    conv_layers: Vec<ConvLayer>,
    feat_proj_norm: Option<LayerNorm>,
    projection: Linear,
    encoder: Encoder,
    dtype: DType,
    device: Device,
}

impl HubertModel {
    /// `vb` at the model root (`feature_extractor.*`, `feature_projection.*`, `encoder.*`); a checkpoint of
    /// `HubertForCTC` etc. needs `vb.pp("hubert")`.
    pub fn new(cfg: &HubertConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let fe = vb.pp("feature_extractor").pp("conv_layers");
        let conv_layers = (0..cfg.conv_dim.len()).map(|i| ConvLayer::new(cfg, i, fe.pp(i))).collect::<Result<Vec<_>>>()?;
        let fp = vb.pp("feature_projection");
        let c = cfg.conv_dim[cfg.conv_dim.len() - 1];
        let feat_proj_norm = if cfg.feat_proj_layer_norm {
            Some(candle_nn::layer_norm(c, cfg.layer_norm_eps, fp.pp("layer_norm"))?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            conv_layers,
            feat_proj_norm,
            projection: crate::accel::linear(c, cfg.hidden_size, fp.pp("projection"))?,
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &HubertConfig {
        &self.cfg
    }

    /// Output frames for an input of `samples` samples (0 when shorter than `min_samples`).
    pub fn frames_for(&self, samples: usize) -> usize {
        self.cfg.frames_for(samples)
    }

    /// The feature extractor's receptive field (400 samples for the standard conv stack): shorter input is
    /// an error.
    pub fn min_samples(&self) -> usize {
        self.cfg.min_samples()
    }

    fn check_input(&self, input_values: &Tensor) -> Result<(usize, usize)> {
        let (b, n) = match input_values.dims() {
            &[b, n] => (b, n),
            d => candle_core::bail!("HuBERT input must be (batch, samples) audio, got shape {d:?}"),
        };
        if b == 0 {
            candle_core::bail!("HuBERT input is an empty batch");
        }
        let min = self.min_samples();
        if n < min {
            candle_core::bail!(
                "audio of {n} samples is shorter than the feature extractor's receptive field ({min} samples = {} ms at {} kHz)",
                min * 1000 / SAMPLE_RATE,
                SAMPLE_RATE / 1000
            );
        }
        Ok((b, n))
    }

    /// `input_values`: (batch, samples), already normalised if the checkpoint expects it (see
    /// [`normalize_waveform`]). Returns the `num_hidden_layers + 1` hidden states, each
    /// (batch, frames, hidden), in HF's order.
    pub fn forward(&self, input_values: &Tensor) -> Result<Vec<Tensor>> {
        self.check_input(input_values)?;
        // Time-major (batch, samples, 1) through the conv stack.
        let mut x = input_values.to_device(&self.device)?.to_dtype(self.dtype)?.unsqueeze(2)?;
        for layer in &self.conv_layers {
            x = layer.forward(&x)?;
        }
        if let Some(ln) = &self.feat_proj_norm {
            x = layer_norm(&x, ln)?;
        }
        self.encoder.forward(&self.projection.forward(&x)?)
    }

    /// MERBench's long-audio path (`split_into_batch` in `feature_extraction/audio/extract_audio_huggingface.py`):
    /// an utterance no longer than `chunk_samples` runs whole (no padding); a longer one is zero-padded to a
    /// multiple of `chunk_samples`, each chunk runs on its own, and every hidden state's frames are
    /// concatenated along time, keeping the frames of the padded tail. MERBench normalises the whole
    /// utterance before chunking, so pass normalised `input_values` (each row one utterance). MERBench uses
    /// `chunk_samples` = 160000 (10 s at 16 kHz).
    pub fn forward_chunked(&self, input_values: &Tensor, chunk_samples: usize) -> Result<Vec<Tensor>> {
        let (b, n) = self.check_input(input_values)?;
        if chunk_samples == 0 {
            candle_core::bail!("chunk_samples must be positive");
        }
        if n <= chunk_samples {
            return self.forward(input_values);
        }
        let min = self.min_samples();
        if chunk_samples < min {
            candle_core::bail!("chunk_samples {chunk_samples} is shorter than the feature extractor's receptive field ({min} samples)");
        }
        let chunks = n.div_ceil(chunk_samples);
        let pad = chunks * chunk_samples - n;
        let x = input_values.to_device(&self.device)?.to_dtype(self.dtype)?;
        let x = if pad > 0 { Tensor::cat(&[&x, &Tensor::zeros((b, pad), self.dtype, &self.device)?], 1)? } else { x };
        let mut per_chunk: Vec<Vec<Tensor>> = Vec::new();
        for c in 0..chunks {
            let states = self.forward(&x.narrow(1, c * chunk_samples, chunk_samples)?)?;
            if per_chunk.is_empty() {
                per_chunk = states.into_iter().map(|s| vec![s]).collect();
            } else {
                for (acc, s) in per_chunk.iter_mut().zip(states) {
                    acc.push(s);
                }
            }
        }
        per_chunk.iter().map(|parts| Tensor::cat(parts, 1)).collect()
    }
}

/// `Wav2Vec2FeatureExtractor`'s `do_normalize`: each row (utterance) to zero mean and unit variance,
/// `(x - mean) / sqrt(var + 1e-7)` with the population variance. `x`: (samples) or (batch, samples);
/// computed in f64, returned in `x`'s dtype.
pub fn normalize_waveform(x: &Tensor) -> Result<Tensor> {
    let n = match x.dims() {
        &[n] | &[_, n] => n,
        d => candle_core::bail!("waveform must be (samples) or (batch, samples), got shape {d:?}"),
    };
    if n == 0 {
        candle_core::bail!("cannot normalise an empty waveform");
    }
    let xd = x.to_dtype(DType::F64)?;
    let centered = xd.broadcast_sub(&xd.mean_keepdim(D::Minus1)?)?;
    let std = (centered.sqr()?.mean_keepdim(D::Minus1)? + NORM_EPS)?.sqrt()?;
    centered.broadcast_div(&std)?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(norm: &str, stable: bool) -> HubertConfig {
        HubertConfig {
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            feat_extract_norm: norm.into(),
            conv_dim: vec![8; 7],
            num_conv_pos_embeddings: 8,
            num_conv_pos_embedding_groups: 2,
            do_stable_layer_norm: stable,
            ..HubertConfig::default()
        }
    }

    fn model(cfg: &HubertConfig) -> Result<(HubertModel, VarMap)> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Ok((HubertModel::new(cfg, vb)?, vm))
    }

    #[test]
    fn geometry_of_the_standard_conv_stack() {
        let cfg = HubertConfig::default();
        assert_eq!(cfg.min_samples(), 400);
        assert_eq!(cfg.frames_for(399), 0);
        assert_eq!(cfg.frames_for(400), 1);
        assert_eq!(cfg.frames_for(16_000), 49);
        assert_eq!(cfg.frames_for(160_000), 499);
    }

    #[test]
    fn random_init_runs_and_names_weight_norm_old_style() -> Result<()> {
        for (norm, stable) in [("group", false), ("layer", true)] {
            let cfg = tiny(norm, stable);
            let (m, vm) = model(&cfg)?;
            let keys: Vec<String> = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?.keys().cloned().collect();
            assert!(keys.iter().any(|k| k == "encoder.pos_conv_embed.conv.weight_g"), "{keys:?}");
            assert!(keys.iter().any(|k| k == "encoder.pos_conv_embed.conv.weight_v"));
            let x = Tensor::randn(0f32, 1., (2, 1000), &Device::Cpu)?;
            let hs = m.forward(&x)?;
            assert_eq!(hs.len(), 2);
            for h in &hs {
                assert_eq!(h.dims(), &[2, m.frames_for(1000), 16]);
            }
        }
        Ok(())
    }

    #[test]
    fn short_or_malformed_input_is_an_error() -> Result<()> {
        let (m, _) = model(&tiny("group", false))?;
        let err = m.forward(&Tensor::zeros((1, 399), DType::F32, &Device::Cpu)?).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("399 samples") && err.contains("400 samples"), "{err}");
        assert!(m.forward(&Tensor::zeros(1000, DType::F32, &Device::Cpu)?).is_err());
        assert!(m.forward(&Tensor::zeros((0, 1000), DType::F32, &Device::Cpu)?).is_err());
        let x = Tensor::zeros((1, 1000), DType::F32, &Device::Cpu)?;
        assert!(m.forward_chunked(&x, 0).is_err());
        assert!(m.forward_chunked(&x, 300).is_err());
        assert!(m.forward_chunked(&Tensor::zeros((1, 100), DType::F32, &Device::Cpu)?, 3200).is_err());
        Ok(())
    }

    #[test]
    fn chunking_short_input_equals_forward_and_pads_long_input() -> Result<()> {
        let (m, _) = model(&tiny("layer", true))?;
        let x = Tensor::randn(0f32, 1., (1, 1000), &Device::Cpu)?;
        let whole = m.forward(&x)?;
        let same = m.forward_chunked(&x, 1000)?;
        let d = (&whole[1] - &same[1])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        let long = m.forward_chunked(&Tensor::randn(0f32, 1., (1, 2100), &Device::Cpu)?, 1000)?;
        assert_eq!(long[0].dims(), &[1, 3 * m.frames_for(1000), 16]);
        Ok(())
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = tiny("group", false);
        c.conv_kernel.pop();
        assert!(c.validate().is_err());
        let mut c = tiny("batch", false);
        assert!(c.validate().is_err());
        c = tiny("group", false);
        c.num_attention_heads = 3;
        assert!(c.validate().is_err());
        c = tiny("group", false);
        c.hidden_act = "mish".into();
        assert!(c.validate().is_err());
        assert!(HubertConfig::from_json_str(r#"{"model_type": "llama"}"#).is_err());
        assert!(HubertConfig::from_json_str("[1]").is_err());
        assert_eq!(HubertConfig::from_json_str(r#"{"model_type": "hubert", "mask_time_prob": 0.05}"#).ok(), Some(HubertConfig::default()));
    }

    #[test]
    fn normalisation_is_per_row() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [10., 10., 10., 10.]], &Device::Cpu)?;
        let y = normalize_waveform(&x)?.to_vec2::<f32>()?;
        let s = (1.25f64 + 1e-7).sqrt();
        for (a, b) in y[0].iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        assert_eq!(y[1], vec![0.0; 4]);
        assert!(normalize_waveform(&Tensor::zeros((1, 0), DType::F32, &Device::Cpu)?).is_err());
        assert!(normalize_waveform(&Tensor::zeros((1, 1, 4), DType::F32, &Device::Cpu)?).is_err());
        Ok(())
    }
}
