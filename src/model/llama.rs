//! A trainable LLaMA-architecture decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention).
//!
//! candle-transformers' llama cannot be trained: its fused rope, softmax_last_dim and rms_norm ops carry
//! no gradient, and it returns only the last position's logits. This one uses differentiable ops
//! throughout, returns logits for every position, and takes input embeddings so projected audio and
//! visual tokens can be spliced into the prompt. Parameter names follow HF `LlamaForCausalLM`.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

use super::lora::{LoraConfig, LoraLinear};
use serde::{Deserialize, Serialize};

/// The subset of HF `LlamaConfig` (`config.json`) this model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// 0 = taken from the tokenizer at build time.
    #[serde(default)]
    pub vocab_size: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
}

/// Precomputed rotary tables (HF "rotate half" convention).
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / cfg.head_dim() as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), dev)?;
        let t = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        Ok(Self { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    /// `x`: (batch, heads, seq, head_dim); positions start at `offset`.
    fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, _, seq, _) = x.dims4()?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        // rope_slow is the differentiable reference implementation of the same rotation.
        candle_nn::rotary_emb::rope_slow(&x.contiguous()?, &cos, &sin)
    }
}

/// RMSNorm through differentiable ops.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps: eps as f32 })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &LlamaConfig, lora: Option<&LoraConfig>, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let lin = |i, o, name: &str| LoraLinear::new(candle_nn::linear_no_bias(i, o, vb.pp(name))?, name, lora, vb.pp(name));
        Ok(Self {
            q_proj: lin(h, cfg.num_attention_heads * hd, "q_proj")?,
            k_proj: lin(h, cfg.kv_heads() * hd, "k_proj")?,
            v_proj: lin(h, cfg.kv_heads() * hd, "v_proj")?,
            o_proj: lin(cfg.num_attention_heads * hd, h, "o_proj")?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: hd,
        })
    }

    /// `offset`: absolute position of the first query; `cache`: this layer's keys and values of earlier
    /// positions (before head repetition), extended in place.
    fn forward(&self, x: &Tensor, rotary: &Rotary, mask: &Tensor, offset: usize, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, n: usize| y.reshape((b, t, n, self.head_dim))?.transpose(1, 2);
        let q = rotary.apply(&split(self.q_proj.forward(x)?, self.heads)?, offset)?;
        let mut k = rotary.apply(&split(self.k_proj.forward(x)?, self.kv_heads)?, offset)?;
        let mut v = split(self.v_proj.forward(x)?, self.kv_heads)?.contiguous()?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let (k, v) = (repeat_kv(k, self.heads / self.kv_heads)?, repeat_kv(v, self.heads / self.kv_heads)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, self.heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, kv, n, t, d))?.reshape((b, kv * n, t, d))
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

impl Mlp {
    fn new(cfg: &LlamaConfig, lora: Option<&LoraConfig>, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let lin = |a, b, name: &str| LoraLinear::new(candle_nn::linear_no_bias(a, b, vb.pp(name))?, name, lora, vb.pp(name));
        Ok(Self { gate_proj: lin(h, i, "gate_proj")?, up_proj: lin(h, i, "up_proj")?, down_proj: lin(i, h, "down_proj")? })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &LlamaConfig, lora: Option<&LoraConfig>, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, lora, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(cfg, lora, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, rotary: &Rotary, mask: &Tensor, offset: usize, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, rotary, mask, offset, cache)?)?;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

/// LLaMA for causal LM over input embeddings.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: LlamaConfig,
}

impl Llama {
    /// Builds from `vb` with HF names (`model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head`).
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_lora(cfg, None, vb)
    }

    /// As [`Self::new`], with LoRA adapters on the `lora.target_modules` projections
    /// (`model.layers.N.self_attn.q_proj.lora_A.weight`, ...).
    pub fn new_with_lora(cfg: &LlamaConfig, lora: Option<&LoraConfig>, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, lora, m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let rotary = Rotary::new(cfg, vb.dtype(), vb.device())?;
        Ok(Self { embed_tokens, layers, norm, lm_head, rotary, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.embeddings().device()
    }

    /// Token ids (any shape) → embeddings (shape + hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// `embeds`: (batch, seq, hidden); `valid`: (batch, seq) with 1 for real positions, 0 for padding.
    /// Returns logits (batch, seq, vocab) for every position.
    pub fn forward_embeds(&self, embeds: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        if t > self.cfg.max_position_embeddings {
            candle_core::bail!("sequence of {t} tokens exceeds max_position_embeddings {}", self.cfg.max_position_embeddings);
        }
        let mask = attention_mask(valid, 0, embeds.dtype())?;
        let mut x = embeds.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &self.rotary, &mask, 0, None)?;
        }
        self.lm_head.forward(&self.norm.forward(&x)?)
    }

    /// Inference with a KV cache, batch of one, no padding: `embeds` (1, t, hidden) are the positions after
    /// those already in `cache`. Returns logits (1, t, vocab) and extends the cache.
    pub fn forward_cached(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        if b != 1 {
            candle_core::bail!("forward_cached takes a batch of one, got {b}");
        }
        let offset = cache.len;
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!("{} positions exceed max_position_embeddings {}", offset + t, self.cfg.max_position_embeddings);
        }
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        let all_keys = Tensor::ones((1, offset + t), DType::U8, embeds.device())?;
        let mask = attention_mask(&all_keys, offset, embeds.dtype())?;
        let mut x = embeds.clone();
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &self.rotary, &mask, offset, Some(slot))?;
        }
        cache.len += t;
        self.lm_head.forward(&self.norm.forward(&x)?)
    }
}

/// Keys and values of the positions processed so far, per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions cached.
    pub len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Additive mask (batch, 1, queries, keys) over `valid` (batch, keys): the queries are the positions from
/// `offset` on (earlier ones are cached); query i (absolute offset + i) sees key j when j <= offset + i and
/// key j is not padding.
fn attention_mask(valid: &Tensor, offset: usize, dtype: DType) -> Result<Tensor> {
    let (b, keys) = valid.dims2()?;
    let t = keys - offset;
    let dev = valid.device();
    let qi = Tensor::arange(offset as u32, keys as u32, dev)?.reshape((t, 1))?;
    let kj = Tensor::arange(0u32, keys as u32, dev)?.reshape((1, keys))?;
    let causal = qi.broadcast_ge(&kj)?;
    let allowed = causal.reshape((1, 1, t, keys))?.broadcast_mul(&valid.to_dtype(DType::U8)?.reshape((b, 1, 1, keys))?)?;
    // A large finite negative keeps fully-masked (padding) query rows free of NaN.
    let neg = Tensor::new(-1e9f32, dev)?.to_dtype(dtype)?.broadcast_as((b, 1, t, keys))?;
    let zero = Tensor::zeros((b, 1, t, keys), dtype, dev)?;
    allowed.where_cond(&zero, &neg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            vocab_size: 50,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
        }
    }

    #[test]
    fn causal_logits_do_not_see_the_future_or_padding() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Llama::new(&tiny(), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let ids = Tensor::new(&[[1u32, 5, 7, 9, 11, 13]], &dev)?;
        let valid = Tensor::ones((1, 6), DType::U8, &dev)?;
        let full = model.forward_embeds(&model.embed(&ids)?, &valid)?;
        let prefix = model.forward_embeds(&model.embed(&ids.narrow(1, 0, 3)?)?, &valid.narrow(1, 0, 3)?)?;
        let diff = (full.narrow(1, 0, 3)? - prefix)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "future tokens leaked into earlier logits: {diff}");
        // Right padding must not change the logits of real positions.
        let padded = Tensor::new(&[[1u32, 5, 7, 0, 0, 0]], &dev)?;
        let pvalid = Tensor::new(&[[1u8, 1, 1, 0, 0, 0]], &dev)?;
        let out = model.forward_embeds(&model.embed(&padded)?, &pvalid)?;
        let diff = (out.narrow(1, 0, 3)? - full.narrow(1, 0, 3)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "padding changed real logits: {diff}");
        assert!(out.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn lora_adapters_get_gradients_and_start_as_a_no_op() -> Result<()> {
        let dev = Device::Cpu;
        let lora = crate::model::lora::LoraConfig { r: 4, lora_alpha: 8.0, lora_dropout: 0.0, target_modules: vec!["q_proj".into(), "v_proj".into()] };
        let (vm_a, vm_b) = (VarMap::new(), VarMap::new());
        let plain = Llama::new(&tiny(), crate::model::init::SeededVarMap::builder(&vm_a, 1, DType::F32, &dev))?;
        let adapted = Llama::new_with_lora(&tiny(), Some(&lora), crate::model::init::SeededVarMap::builder(&vm_b, 1, DType::F32, &dev))?;
        let ids = Tensor::new(&[[1u32, 5, 7, 9]], &dev)?;
        let valid = Tensor::ones((1, 4), DType::U8, &dev)?;
        let (la, lb) = (plain.forward_embeds(&plain.embed(&ids)?, &valid)?, adapted.forward_embeds(&adapted.embed(&ids)?, &valid)?);
        assert!((la - &lb)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6, "same seed + B = 0: identical logits");
        let loss = candle_nn::loss::cross_entropy(&lb.squeeze(0)?, &Tensor::new(&[5u32, 7, 9, 2], &dev)?)?;
        let grads = loss.backward()?;
        let data = vm_b.data().lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let lora_names: Vec<&String> = data.keys().filter(|k| k.contains(".lora_")).collect();
        assert_eq!(lora_names.len(), 2 * 2 * 2, "2 layers x q,v x A,B");
        let b = &data["model.layers.0.self_attn.q_proj.lora_B.weight"];
        assert!(grads.get(b.as_tensor()).is_some_and(|g| g.abs().and_then(|a| a.sum_all()).and_then(|s| s.to_scalar::<f32>()).unwrap_or(0.0) > 0.0));
        Ok(())
    }

    #[test]
    fn kv_cache_gives_the_same_logits_as_the_full_pass() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Llama::new(&tiny(), crate::model::init::SeededVarMap::builder(&vm, 2, DType::F32, &dev))?;
        let ids = Tensor::new(&[[1u32, 5, 7, 9, 11, 13, 3]], &dev)?;
        let full = model.forward_embeds(&model.embed(&ids)?, &Tensor::ones((1, 7), DType::U8, &dev)?)?;
        let mut cache = KvCache::new();
        let mut parts = vec![model.forward_cached(&model.embed(&ids.narrow(1, 0, 4)?)?, &mut cache)?];
        for i in 4..7 {
            parts.push(model.forward_cached(&model.embed(&ids.narrow(1, i, 1)?)?, &mut cache)?);
        }
        let cached = Tensor::cat(&parts, 1)?;
        let diff = (full - cached)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "cached logits differ by {diff}");
        assert_eq!(cache.len, 7);
        Ok(())
    }

    #[test]
    fn every_parameter_receives_a_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Llama::new(&tiny(), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let ids = Tensor::new(&[[1u32, 5, 7, 9]], &dev)?;
        let valid = Tensor::ones((1, 4), DType::U8, &dev)?;
        let logits = model.forward_embeds(&model.embed(&ids)?, &valid)?;
        let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0)?, &Tensor::new(&[5u32, 7, 9, 2], &dev)?)?;
        let grads = loss.backward()?;
        let data = vm.data().lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(n > 0.0, "zero gradient for {name}");
        }
        Ok(())
    }
}
