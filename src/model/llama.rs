//! A trainable LLaMA / Qwen2 decoder (RMSNorm, RoPE with scaling, SwiGLU, grouped-query attention, Qwen2's
//! q/k/v bias), one set of weights for a training path (`forward_embeds_t`) and a KV-cached inference path
//! (`forward_cached`, where GGUF matrices may stay quantized).
//!
//! candle-transformers' llama cannot be trained: its fused rope, softmax_last_dim and rms_norm ops carry
//! no gradient, and it returns only the last position's logits. This one uses differentiable ops
//! throughout, returns logits for every position, and takes input embeddings so projected audio and
//! visual tokens can be spliced into the prompt. Parameter names follow HF `LlamaForCausalLM`.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};

use candle_core::backprop::GradStore;

use super::autograd::{BlockFn, CheckpointGrads, Checkpointed};
use super::lora::{BaseLinear, DropoutRng, LoraConfig, LoraLinear};
pub use super::llm_config::{LlamaConfig, OneOrMany, RopeScaling};

/// Weight matrices kept quantized for inference (GGUF), by full parameter name (`<prefix>model.layers.0...`).
pub type QuantStore = HashMap<String, Arc<QTensor>>;

/// What the layers are built from: dense tensors through `vb`, quantized matrices from `quant` when
/// present, and the model-wide LoRA settings.
#[derive(Clone)]
struct Parts<'a> {
    cfg: &'a LlamaConfig,
    lora: Option<&'a LoraConfig>,
    quant: Option<&'a QuantStore>,
    /// Quantized layers keep a dense copy for prompts ([`BaseLinear::quantized_with_dense_prompt`]).
    dense_prompt: bool,
    rng: DropoutRng,
}

/// The most memory the dense prompt copies of a quantized model may take (f32 copy + packed form of every
/// quantized matrix): small models (SmolLM2-135M: ~1.1 GB) get the fast prompt path, a quantized 7B model
/// (~54 GB) stays quantized.
pub const DENSE_PROMPT_BUDGET_BYTES: usize = 2 << 30;

/// Whether the quantized matrices of `quant` get dense prompt copies within [`DENSE_PROMPT_BUDGET_BYTES`].
pub fn dense_prompt_fits(quant: &QuantStore) -> bool {
    let elements: usize = quant.values().map(|w| w.shape().elem_count()).sum();
    elements.saturating_mul(2 * std::mem::size_of::<f32>()) <= DENSE_PROMPT_BUDGET_BYTES
}

impl Parts<'_> {
    fn linear(&self, inp: usize, out: usize, bias: bool, name: &str, vb: &VarBuilder) -> Result<LoraLinear> {
        let vb = vb.pp(name);
        let key = format!("{}.weight", vb.prefix());
        let base = match self.quant.and_then(|q| q.get(&key)) {
            Some(w) => {
                if w.shape().dims() != [out, inp] {
                    candle_core::bail!("tensor `{key}` has shape {:?}, the config expects [{out}, {inp}]", w.shape().dims());
                }
                let b = if bias { Some(vb.get(out, "bias")?) } else { None };
                BaseLinear::quantized_for(w.clone(), b, self.dense_prompt)?
            }
            None if bias => BaseLinear::dense_from(candle_nn::linear(inp, out, vb.clone())?),
            None => BaseLinear::dense_from(candle_nn::linear_no_bias(inp, out, vb.clone())?),
        };
        LoraLinear::with_rng(base, name, self.lora, vb, self.rng.clone())
    }
}

/// Rotary tables (HF "rotate half" convention) for every position up to `max_position_embeddings`.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let inv_freq = cfg.inv_freq();
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), dev)?;
        let t = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        // yarn scales the tables (1 otherwise).
        let scale = cfg.rope_attention_factor() as f64;
        Ok(Self { cos: (freqs.cos()? * scale)?.to_dtype(dtype)?, sin: (freqs.sin()? * scale)?.to_dtype(dtype)? })
    }

    /// The tables at `positions` (batch, seq) u32, one position per token (left padding shifts them).
    fn at(&self, positions: &Tensor) -> Result<RotaryAt> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dim(1)?;
        Ok(RotaryAt { cos: self.cos.index_select(&flat, 0)?.reshape((b, t, half))?, sin: self.sin.index_select(&flat, 0)?.reshape((b, t, half))? })
    }
}

/// The rotary tables gathered for one forward pass: (batch, seq, head_dim / 2), shared by every layer.
#[derive(Debug, Clone)]
struct RotaryAt {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryAt {
    /// `x`: (batch, seq, heads, head_dim), as the projections give it. Training on the CPU in f32 takes
    /// one op with its own backward ([`crate::accel::train_ops::rotary_thd`]); elsewhere [`Self::apply`]
    /// on the heads-first view.
    fn apply_thd(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if !fused && let Some(y) = crate::accel::train_ops::rotary_thd(x, &self.cos, &self.sin)? {
            return Ok(y);
        }
        self.apply(&x.transpose(1, 2)?, fused)?.transpose(1, 2)
    }

    /// `x`: (batch, heads, seq, head_dim). Differentiable; `fused` (generation, where nothing
    /// backpropagates): candle's fused kernel instead (the same products and sums).
    fn apply(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            return candle_nn::rotary_emb::rope(&x.contiguous()?, &self.cos, &self.sin);
        }
        let d = x.dim(D::Minus1)?;
        let (cos, sin) = (self.cos.unsqueeze(1)?, self.sin.unsqueeze(1)?);
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let c = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[a, c], D::Minus1)
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

impl RmsNorm {
    /// For generation (nothing backpropagates): candle's fused kernel in f32 (it rounds the norm to the
    /// input dtype, so other dtypes keep the f32 path of [`Module::forward`]).
    fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            return candle_nn::ops::rms_norm(x, &self.weight, self.eps);
        }
        self.forward(x)
    }
}

impl Module for RmsNorm {
    /// In f32 whatever the activations' dtype (as HF's `LlamaRMSNorm`), returned in that dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            // One op with its own backward on the CPU (`accel::train_ops`), candle's composition elsewhere.
            if let Some(y) = crate::accel::train_ops::rms_norm(x, &self.weight, self.eps)? {
                return Ok(y);
            }
            return candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps);
        }
        candle_nn::ops::rms_norm_slow(&x.to_dtype(DType::F32)?, &self.weight.to_dtype(DType::F32)?, self.eps)?.to_dtype(x.dtype())
    }
}

/// Per-call inputs shared by every layer (owned: a checkpointed layer keeps them for its recomputation).
struct Step {
    rotary: RotaryAt,
    mask: Tensor,
    train: bool,
    /// KV-cached generation: nothing backpropagates, so frozen linears may take the oneDNN path.
    generate: bool,
}

impl Step {
    fn linear(&self, l: &LoraLinear, x: &Tensor) -> Result<Tensor> {
        if self.generate { l.forward_inference(x) } else { l.forward_t(x, self.train) }
    }

    fn norm(&self, n: &RmsNorm, x: &Tensor) -> Result<Tensor> {
        if self.generate { n.forward_inference(x) } else { n.forward(x) }
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
    fn new(p: &Parts, vb: VarBuilder) -> Result<Self> {
        let cfg = p.cfg;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        Ok(Self {
            q_proj: p.linear(h, cfg.num_attention_heads * hd, cfg.qkv_bias(), "q_proj", &vb)?,
            k_proj: p.linear(h, cfg.kv_heads() * hd, cfg.qkv_bias(), "k_proj", &vb)?,
            v_proj: p.linear(h, cfg.kv_heads() * hd, cfg.qkv_bias(), "v_proj", &vb)?,
            o_proj: p.linear(cfg.num_attention_heads * hd, h, cfg.o_bias(), "o_proj", &vb)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: hd,
        })
    }

    /// `cache`: this layer's keys and values of earlier positions (before head repetition), extended in place.
    fn forward(&self, x: &Tensor, s: &Step, cache: Option<&mut Option<LayerCache>>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, n: usize| y.reshape((b, t, n, self.head_dim));
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // (batch, seq, heads, head_dim), as the projections give them.
        let q = s.rotary.apply_thd(&split(s.linear(&self.q_proj, x)?, self.heads)?, s.generate)?;
        let k = s.rotary.apply_thd(&split(s.linear(&self.k_proj, x)?, self.kv_heads)?, s.generate)?;
        let v = split(s.linear(&self.v_proj, x)?, self.kv_heads)?;
        if cache.is_none()
            && !s.generate
            && let Some(out) = crate::accel::train_attention::attention_bthd(&q, &k, &v, &s.mask, scale as f32)?
        {
            // Training (and full passes) on the CPU in f32: one op with its own backward.
            return s.linear(&self.o_proj, &out);
        }
        let q = q.transpose(1, 2)?;
        let mut k = k.transpose(1, 2)?.contiguous()?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some(slot) = cache {
            // Detached: a cached key computed from trainable weights would keep this step's graph alive.
            (k, v) = LayerCache::append(slot, &k.detach(), &v.detach())?;
        }
        // Grouped-query attention without repeating keys and values: the `rep` query heads that share a
        // key/value head are stacked as rows of one product against it.
        let (kv, rep, keys) = (self.kv_heads, self.heads / self.kv_heads, k.dim(2)?);
        let q = q.contiguous()?.reshape((b, kv, rep * t, self.head_dim))?;
        // The softmax in f32 whatever the compute dtype (as HF's eager attention).
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = scores.reshape((b, kv, rep, t, keys))?.broadcast_add(&s.mask.unsqueeze(2)?)?.reshape((b, kv, rep * t, keys))?;
        let probs = crate::model::nn::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.reshape((b, self.heads, t, self.head_dim))?.transpose(1, 2)?.reshape((b, t, self.heads * self.head_dim))?;
        s.linear(&self.o_proj, &out)
    }
}

/// One layer's cached keys and values: (batch, kv_heads, capacity, head_dim) buffers holding `len`
/// positions. A decoding step writes its position in place; the buffers double when full, so the cache
/// is not copied at every step.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
    /// Positions the buffers may take. A clone shares the buffers up to `len` and gets `capacity = len`,
    /// so it reallocates before writing; the original only writes past `len`, which the clone never reads.
    capacity: usize,
}

impl Clone for LayerCache {
    fn clone(&self) -> Self {
        Self { k: self.k.clone(), v: self.v.clone(), len: self.len, capacity: self.len }
    }
}

impl LayerCache {
    /// Appends `k`, `v` (batch, kv_heads, t, head_dim) and returns views of every cached position.
    fn append(slot: &mut Option<Self>, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let c = match slot {
            Some(c) if c.len + t <= c.capacity => c,
            _ => {
                let (b, h, _, d) = k.dims4()?;
                let len = slot.as_ref().map_or(0, |c| c.len);
                let capacity = (2 * (len + t)).max(64);
                let (nk, nv) = (Tensor::zeros((b, h, capacity, d), k.dtype(), k.device())?, Tensor::zeros((b, h, capacity, d), v.dtype(), v.device())?);
                if let Some(old) = slot.as_ref() {
                    nk.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                slot.insert(Self { k: nk, v: nv, len, capacity })
            }
        };
        c.k.slice_set(&k, 2, c.len)?;
        c.v.slice_set(&v, 2, c.len)?;
        c.len += t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

impl Mlp {
    fn new(p: &Parts, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (p.cfg.hidden_size, p.cfg.intermediate_size);
        Ok(Self {
            gate_proj: p.linear(h, i, false, "gate_proj", &vb)?,
            up_proj: p.linear(h, i, false, "up_proj", &vb)?,
            down_proj: p.linear(i, h, false, "down_proj", &vb)?,
        })
    }

    fn forward(&self, x: &Tensor, s: &Step) -> Result<Tensor> {
        let (gate, up) = (s.linear(&self.gate_proj, x)?, s.linear(&self.up_proj, x)?);
        let h = match crate::accel::train_ops::swiglu(&gate, &up)? {
            Some(h) => h,
            None => (gate.silu()? * up)?,
        };
        s.linear(&self.down_proj, &h)
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
    fn new(p: &Parts, vb: VarBuilder) -> Result<Self> {
        let cfg = p.cfg;
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(p, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(p, vb.pp("mlp"))?,
        })
    }

    /// The trainable tensors (variables) of this layer: LoRA adapters, or every weight of a model trained
    /// from scratch.
    fn variables(&self) -> Vec<Tensor> {
        let a = &self.self_attn;
        let m = &self.mlp;
        let mut out: Vec<Tensor> = [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj].iter().flat_map(|l| l.tensors()).collect();
        out.extend([self.input_layernorm.weight.clone(), self.post_attention_layernorm.weight.clone()]);
        out.retain(|t| t.is_variable());
        out
    }

    fn forward(&self, x: &Tensor, s: &Step, cache: Option<&mut Option<LayerCache>>) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&s.norm(&self.input_layernorm, x)?, s, cache)?)?;
        &x + self.mlp.forward(&s.norm(&self.post_attention_layernorm, &x)?, s)?
    }
}

/// LLaMA / Qwen2 for causal LM over input embeddings.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: BaseLinear,
    rotary: Rotary,
    cfg: LlamaConfig,
    dropout_rng: DropoutRng,
    /// The activations' dtype (`runtime.dtype`); trainable weights are f32 masters cast to it.
    compute: DType,
    /// Training keeps only each layer's input and recomputes the layer in the backward pass.
    checkpointing: bool,
    checkpoint_grads: CheckpointGrads,
}

impl Llama {
    /// Builds from `vb` with HF names (`model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head`).
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, None, None, vb)
    }

    /// As [`Self::new`], with LoRA adapters on the `lora.target_modules` projections
    /// (`model.layers.N.self_attn.q_proj.lora_A.weight`, ...).
    pub fn new_with_lora(cfg: &LlamaConfig, lora: Option<&LoraConfig>, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, lora, None, vb)
    }

    /// The general constructor: matrices found in `quant` (keyed by full name under `vb`) stay quantized
    /// (inference only); everything else comes from `vb`.
    pub fn load(cfg: &LlamaConfig, lora: Option<&LoraConfig>, quant: Option<&QuantStore>, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let rng = super::lora::dropout_rng(0);
        let dense_prompt = quant.is_some_and(dense_prompt_fits);
        let parts = Parts { cfg, lora, quant, dense_prompt, rng: rng.clone() };
        let m = vb.pp("model");
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(&parts, m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let tied_key = format!("{}.weight", m.pp("embed_tokens").prefix());
        let head_key = format!("{}.weight", vb.pp("lm_head").prefix());
        let quant_head = quant.and_then(|q| q.get(if cfg.tie_word_embeddings { &tied_key } else { &head_key }));
        let lm_head = match quant_head {
            Some(w) => BaseLinear::quantized_for(w.clone(), None, dense_prompt)?,
            None if cfg.tie_word_embeddings => BaseLinear::dense_from(candle_nn::Linear::new(embed_tokens.embeddings().clone(), None)),
            None => BaseLinear::dense_from(candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?),
        };
        let rotary = Rotary::new(cfg, vb.dtype(), vb.device())?;
        Ok(Self { embed_tokens, layers, norm, lm_head, rotary, cfg: cfg.clone(), dropout_rng: rng, compute: vb.dtype(), checkpointing: false, checkpoint_grads: CheckpointGrads::default() })
    }

    /// Computes in `dtype` (f32, bf16 or f16): embeddings are cast to it, and every weight of another
    /// dtype (the f32 trainable masters) is cast at its use.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Result<Self> {
        if dtype != self.compute {
            self.rotary = Rotary::new(&self.cfg, dtype, self.embed_tokens.embeddings().device())?;
            self.compute = dtype;
        }
        Ok(self)
    }

    /// Activation checkpointing for training (`runtime.activation_checkpointing`): a layer's activations
    /// live only while its backward runs, for one more forward pass of compute. Gradients reach the
    /// parameters through [`Self::backward`].
    pub fn with_activation_checkpointing(mut self, on: bool) -> Self {
        self.checkpointing = on;
        self
    }

    pub fn activation_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// `loss.backward()` plus the gradients the checkpointed layers computed on the way.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.checkpoint_grads.clear();
        let mut grads = loss.backward()?;
        self.checkpoint_grads.merge_into(&mut grads)?;
        Ok(grads)
    }

    fn checkpointed(&self, layer: &Block, x: &Tensor, step: &Arc<Step>) -> Result<Tensor> {
        let (block, step) = (layer.clone(), step.clone());
        let f: BlockFn = Arc::new(move |x: &Tensor| block.forward(x, &step, None));
        Checkpointed::new(f, layer.variables(), self.checkpoint_grads.clone(), self.dropout_rng.clone()).apply(x)
    }

    /// The activations' dtype.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.embeddings().device()
    }

    /// Restarts the LoRA dropout stream (a run seeds it per stage so dropout masks are reproducible).
    pub fn reseed_dropout(&self, seed: u64) {
        use rand::SeedableRng;
        if let Ok(mut g) = self.dropout_rng.lock() {
            *g = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        }
    }

    /// Token ids (any shape) → embeddings (shape + hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)?.to_dtype(self.compute)
    }

    /// `embeds`: (batch, seq, hidden); `valid`: (batch, seq) with 1 for real positions, 0 for padding
    /// (right padding: positions count from 0). Returns logits (batch, seq, vocab) for every position.
    pub fn forward_embeds(&self, embeds: &Tensor, valid: &Tensor) -> Result<Tensor> {
        self.forward_embeds_t(embeds, valid, false)
    }

    /// As [`Self::forward_embeds`]; `train` applies LoRA dropout.
    pub fn forward_embeds_t(&self, embeds: &Tensor, valid: &Tensor, train: bool) -> Result<Tensor> {
        self.lm_head(&self.hidden_states(embeds, valid, train)?)
    }

    /// Final (normed) hidden states (batch, seq, hidden): a loss over a few positions applies
    /// [`Self::lm_head`] to those rows only (the vocabulary projection dominates for large vocabularies).
    pub fn hidden_states(&self, embeds: &Tensor, valid: &Tensor, train: bool) -> Result<Tensor> {
        let embeds = &embeds.to_dtype(self.compute)?;
        let (b, t, _) = embeds.dims3()?;
        if t > self.cfg.max_position_embeddings {
            candle_core::bail!("sequence of {t} tokens exceeds max_position_embeddings {}", self.cfg.max_position_embeddings);
        }
        let positions = Tensor::arange(0u32, t as u32, embeds.device())?.unsqueeze(0)?.broadcast_as((b, t))?.contiguous()?;
        let mask = attention_mask(valid, 0)?;
        let step = Arc::new(Step { rotary: self.rotary.at(&positions)?, mask, train, generate: false });
        let mut x = embeds.clone();
        for layer in &self.layers {
            x = if self.checkpointing && train { self.checkpointed(layer, &x, &step)? } else { layer.forward(&x, &step, None)? };
        }
        self.norm.forward(&x)
    }

    /// Every weight under its HF name, LoRA adapters merged into their base matrices and quantized
    /// matrices dequantized: a plain `LlamaForCausalLM` / `Qwen2ForCausalLM` state dict for export.
    pub fn merged_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.embeddings().clone())];
        fn push_linear(out: &mut Vec<(String, Tensor)>, name: String, l: &LoraLinear) -> Result<()> {
            let m = l.merged()?;
            out.push((format!("{name}.weight"), m.weight().clone()));
            if let Some(b) = m.bias() {
                out.push((format!("{name}.bias"), b.clone()));
            }
            Ok(())
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            for (n, lin) in [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)] {
                push_linear(&mut out, format!("{p}.self_attn.{n}"), lin)?;
            }
            for (n, lin) in [("gate_proj", &l.mlp.gate_proj), ("up_proj", &l.mlp.up_proj), ("down_proj", &l.mlp.down_proj)] {
                push_linear(&mut out, format!("{p}.mlp.{n}"), lin)?;
            }
            out.push((format!("{p}.input_layernorm.weight"), l.input_layernorm.weight.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.weight.clone()));
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.dense()?.weight().clone()));
        }
        Ok(out)
    }

    /// Writes the merged model as an HF directory (`config.json` + `model.safetensors`).
    pub fn export_merged(&self, dir: &std::path::Path) -> Result<usize> {
        std::fs::create_dir_all(dir)?;
        let state = self.merged_state()?;
        let map: HashMap<String, Tensor> = state.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.contiguous()?))).collect::<Result<_>>()?;
        // transformers requires the `format: pt` header entry that candle's writer leaves out.
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(map.iter(), Some(meta), &dir.join("model.safetensors")).map_err(candle_core::Error::wrap)?;
        let mut cfg = serde_json::to_value(&self.cfg).map_err(candle_core::Error::wrap)?;
        if let Some(o) = cfg.as_object_mut() {
            let arch = if self.cfg.model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
            o.insert("architectures".into(), serde_json::json!([arch]));
            o.insert("hidden_act".into(), "silu".into());
            o.insert("torch_dtype".into(), "float32".into());
            o.retain(|_, v| !v.is_null());
        }
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).map_err(candle_core::Error::wrap)?)?;
        Ok(map.len())
    }

    /// Hidden states → logits.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Hidden states → logits in f32 whatever the compute dtype (the head's weights cast for the product):
    /// for the loss over the few answer positions, where bf16 logits would round the gradient that every
    /// layer receives.
    pub fn lm_head_f32(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&hidden.to_dtype(DType::F32)?)
    }

    /// `Σ_i w_i · nll_i`: the next-token loss of final hidden states `hidden` (rows, hidden) against
    /// `targets`, row `i` weighted by `weights[i]`, in f32 whatever the compute dtype (as
    /// [`Self::lm_head_f32`]). A frozen dense f32 head on the CPU takes the fused kernel
    /// ([`crate::accel::fused_loss`]: the (rows, vocab) logits never become graph nodes).
    pub fn weighted_nll(&self, hidden: &Tensor, targets: &[u32], weights: &[f32]) -> Result<Tensor> {
        let hidden = hidden.to_dtype(DType::F32)?;
        if let BaseLinear::Dense(l) = &self.lm_head
            && l.bias().is_none()
            && let Some(loss) = crate::accel::fused_loss::linear_cross_entropy(&hidden, l.weight(), targets, weights)?
        {
            return Ok(loss);
        }
        let dev = hidden.device();
        let logp = candle_nn::ops::log_softmax(&self.lm_head.forward(&hidden)?, D::Minus1)?;
        let nll = logp.gather(&Tensor::new(targets, dev)?.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        (nll * Tensor::new(weights, dev)?)?.sum_all()
    }

    /// Inference with a KV cache: `embeds` (batch, t, hidden) are the positions after those already in
    /// `cache`; `valid` (batch, cached + t) marks real keys (left padding allowed: each row's positions
    /// count its real tokens only, as HF `generate` does). Returns logits (batch, t, vocab).
    pub fn forward_cached(&self, embeds: &Tensor, valid: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        // Nothing backpropagates through generation: inputs, layer outputs and cached keys are detached,
        // or trainable parameters (LoRA, projected media tokens) would record a graph that the KV cache
        // keeps alive across every step (for a 7B over a 466-token prompt, ~0.3 GiB per layer).
        let embeds = &embeds.to_dtype(self.compute)?.detach();
        let (_, t, _) = embeds.dims3()?;
        let offset = cache.len;
        if valid.dim(1)? != offset + t {
            candle_core::bail!("valid covers {} keys, expected {} cached + {t} new", valid.dim(1)?, offset);
        }
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!("{} positions exceed max_position_embeddings {}", offset + t, self.cfg.max_position_embeddings);
        }
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        // Position of each key = number of real keys before it (padding gets 0, never attended).
        let counts = valid.to_dtype(DType::F32)?.cumsum(1)?;
        let positions = (counts - 1.0)?.clamp(0.0, f64::MAX)?.narrow(1, offset, t)?.to_dtype(DType::U32)?;
        let mask = attention_mask(valid, offset)?;
        let step = Step { rotary: self.rotary.at(&positions)?, mask, train: false, generate: true };
        let mut x = embeds.clone();
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &step, Some(slot))?.detach();
        }
        cache.len += t;
        Ok(self.lm_head.forward_inference(&self.norm.forward_inference(&x)?)?.detach())
    }
}

/// Keys and values of the positions processed so far, per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
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
/// In f32 whatever the compute dtype: it is added to the scores of the f32 softmax.
fn attention_mask(valid: &Tensor, offset: usize) -> Result<Tensor> {
    let (b, keys) = valid.dims2()?;
    let t = keys - offset;
    let dev = valid.device();
    let qi = Tensor::arange(offset as u32, keys as u32, dev)?.reshape((t, 1))?;
    let kj = Tensor::arange(0u32, keys as u32, dev)?.reshape((1, keys))?;
    let causal = qi.broadcast_ge(&kj)?;
    let allowed = causal.reshape((1, 1, t, keys))?.broadcast_mul(&valid.to_dtype(DType::U8)?.reshape((b, 1, 1, keys))?)?;
    // A large finite negative keeps fully-masked (padding) query rows free of NaN.
    let neg = Tensor::new(-1e9f32, dev)?.broadcast_as((b, 1, t, keys))?;
    let zero = Tensor::zeros((b, 1, t, keys), DType::F32, dev)?;
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
            max_position_embeddings: 64,
            ..LlamaConfig::default()
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

    /// `weighted_nll` with a frozen f32 head on the CPU (a loaded model's) takes the fused kernel, and that
    /// equals the composition the other devices and dtypes use, in value and in the hidden states' gradient.
    #[test]
    fn weighted_nll_takes_the_fused_kernel_and_equals_the_log_softmax_of_the_head() -> Result<()> {
        let dev = Device::Cpu;
        let model = Llama::new(&tiny(), crate::model::init::SeededTensors::builder(2, DType::F32, &dev))?;
        let BaseLinear::Dense(head) = &model.lm_head else { panic!("a dense head") };
        assert!(!head.weight().track_op(), "seeded weights are frozen, as loaded ones");
        let hidden = candle_core::Var::randn(0f32, 1.0, (7, 32), &dev)?;
        let (targets, weights) = ([5u32, 7, 9, 4, 6, 8, 10], [0.1f32, 0.2, 0.05, 0.15, 0.1, 0.3, 0.1]);
        let loss = model.weighted_nll(hidden.as_tensor(), &targets, &weights)?;
        let direct = crate::accel::fused_loss::linear_cross_entropy(hidden.as_tensor(), head.weight(), &targets, &weights)?.expect("CPU f32");
        assert_eq!(loss.to_scalar::<f32>()?, direct.to_scalar::<f32>()?, "the fused kernel's own result");
        let logp = candle_nn::ops::log_softmax(&model.lm_head_f32(hidden.as_tensor())?, D::Minus1)?;
        let nll = logp.gather(&Tensor::new(&targets[..], &dev)?.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        let reference = (nll * Tensor::new(&weights[..], &dev)?)?.sum_all()?;
        let (a, b) = (loss.to_scalar::<f32>()?, reference.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "loss {a} vs {b}");
        let (ga, gb) = (loss.backward()?, reference.backward()?);
        let (x, y) = (ga.get(hidden.as_tensor()).expect("fused gradient"), gb.get(hidden.as_tensor()).expect("reference gradient"));
        let scale = y.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (x - y)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scale > 0.0 && diff <= 1e-5 * scale.max(1.0), "hidden gradients differ by {diff} (scale {scale})");
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
        let all = Tensor::ones((1, 7), DType::U8, &dev)?;
        let mut parts = vec![model.forward_cached(&model.embed(&ids.narrow(1, 0, 4)?)?, &all.narrow(1, 0, 4)?, &mut cache)?];
        for i in 4..7 {
            parts.push(model.forward_cached(&model.embed(&ids.narrow(1, i, 1)?)?, &all.narrow(1, 0, i + 1)?, &mut cache)?);
        }
        let cached = Tensor::cat(&parts, 1)?;
        let diff = (full - cached)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "cached logits differ by {diff}");
        assert_eq!(cache.len, 7);
        Ok(())
    }

    /// Generation's fused rotary kernel gives the differentiable path's values (left-padded positions).
    #[test]
    fn fused_rotary_equals_the_differentiable_one() -> Result<()> {
        let dev = Device::Cpu;
        let at = Rotary::new(&tiny(), DType::F32, &dev)?.at(&Tensor::new(&[[0u32, 1, 2, 3, 4], [0, 0, 1, 2, 3]], &dev)?)?;
        let x = crate::test_utils::seeded_uniform(&[2, 4, 5, 8], 3)?.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
        let diff = (at.apply(&x, true)? - at.apply(&x, false)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "fused rotary differs by {diff}");
        Ok(())
    }

    /// A cloned cache (class scores branch one per candidate) and its original both continue from the
    /// shared prefix without seeing each other's positions, past the buffers' first growth (64).
    #[test]
    fn cloned_kv_caches_continue_independently() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Llama::new(&tiny(), crate::model::init::SeededVarMap::builder(&vm, 5, DType::F32, &dev))?;
        let prefix: Vec<u32> = (0..40).map(|i| (i * 7 % 50) as u32).collect();
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..20).map(|i| (i * 3 % 50) as u32).collect(), (0..20).map(|i| (i * 11 % 50) as u32).collect());
        let run = |cache: &mut KvCache, ids: &[u32]| -> Result<Tensor> {
            let mut out = Vec::new();
            for &id in ids {
                let valid = Tensor::ones((1, cache.len + 1), DType::U8, &dev)?;
                out.push(model.forward_cached(&model.embed(&Tensor::new(&[[id]], &dev)?)?, &valid, cache)?);
            }
            Tensor::cat(&out, 1)
        };
        let mut original = KvCache::new();
        run(&mut original, &prefix)?;
        let mut branch = original.clone();
        // Interleaved, so each writes while the other holds the shared buffers.
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for i in 0..a.len() {
            got_a.push(run(&mut original, &a[i..i + 1])?);
            got_b.push(run(&mut branch, &b[i..i + 1])?);
        }
        for (ids, got) in [(&a, got_a), (&b, got_b)] {
            let mut fresh = KvCache::new();
            run(&mut fresh, &prefix)?;
            let want = run(&mut fresh, ids)?;
            let diff = (Tensor::cat(&got, 1)? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "a branch's logits differ from a fresh cache's by {diff}");
        }
        Ok(())
    }

    #[test]
    fn generation_with_frozen_weights_matches_the_full_pass() -> Result<()> {
        // Loaded (non-variable) weights: KV-cached generation packs them for oneDNN when the build has it.
        let dev = Device::Cpu;
        let vm = VarMap::new();
        Llama::new(&tiny(), crate::model::init::SeededVarMap::builder(&vm, 3, DType::F32, &dev))?;
        let frozen: std::collections::HashMap<String, Tensor> = {
            let data = vm.data().lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
            data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
        };
        let model = Llama::new(&tiny(), VarBuilder::from_tensors(frozen, DType::F32, &dev))?;
        let ids = Tensor::new(&[[2u32, 4, 6, 8, 10]], &dev)?;
        let all = Tensor::ones((1, 5), DType::U8, &dev)?;
        let full = model.forward_embeds(&model.embed(&ids)?, &all)?;
        let mut cache = KvCache::new();
        let mut parts = vec![model.forward_cached(&model.embed(&ids.narrow(1, 0, 3)?)?, &all.narrow(1, 0, 3)?, &mut cache)?];
        for i in 3..5 {
            parts.push(model.forward_cached(&model.embed(&ids.narrow(1, i, 1)?)?, &all.narrow(1, 0, i + 1)?, &mut cache)?);
        }
        let diff = (full - Tensor::cat(&parts, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "generation logits differ by {diff}");
        Ok(())
    }

    /// Generation records no graph even when the embeddings come from trainable parameters (projected media
    /// tokens): otherwise the KV cache would keep every step's activations alive.
    #[test]
    fn kv_cached_generation_records_no_graph() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Llama::new(&tiny(), crate::model::init::SeededVarMap::builder(&vm, 2, DType::F32, &dev))?;
        let scale = candle_core::Var::ones((1, 1, 32), DType::F32, &dev)?;
        let embeds = model.embed(&Tensor::new(&[[1u32, 5, 7]], &dev)?)?.broadcast_mul(scale.as_tensor())?;
        assert!(embeds.track_op());
        let mut cache = KvCache::new();
        let logits = model.forward_cached(&embeds, &Tensor::ones((1, 3), DType::U8, &dev)?, &mut cache)?;
        assert!(!logits.track_op());
        assert!(cache.layers.iter().flatten().all(|c| !c.k.track_op() && !c.v.track_op()));
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

    /// Activation checkpointing changes memory, not numbers: same loss and the same gradients for the
    /// LoRA adapters (with dropout, whose masks the recomputation must draw again) and for the input.
    #[test]
    fn activation_checkpointing_gives_the_same_loss_and_gradients() -> Result<()> {
        use crate::model::weights::{PretrainedBackend, TensorStore};
        let dev = Device::Cpu;
        let cfg = LlamaConfig { num_hidden_layers: 3, ..tiny() };
        let seeded = VarMap::new();
        Llama::new(&cfg, crate::model::init::SeededVarMap::builder(&seeded, 4, DType::F32, &dev))?;
        let tensors: HashMap<String, Tensor> = {
            let data = seeded.data().lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
            data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
        };
        let store = Arc::new(TensorStore::Memory { origin: "test".into(), tensors });
        let lora = LoraConfig { r: 4, lora_alpha: 8.0, lora_dropout: 0.2, target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
        let vm = VarMap::new();
        let plain = Llama::load(&cfg, Some(&lora), None, PretrainedBackend::builder(store, "", &vm, 5, DType::F32, &dev))?;
        // B starts at zero: give the adapters values so every path carries gradient.
        for (name, var) in vm.data().lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?.iter() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &dev)?)?;
            assert!(name.contains(".lora_"), "only adapters are variables: {name}");
        }
        let checkpointed = plain.clone().with_activation_checkpointing(true);
        let scale = candle_core::Var::ones((1, 1, 32), DType::F32, &dev)?;
        let ids = Tensor::new(&[[1u32, 5, 7, 9, 11]], &dev)?;
        let valid = Tensor::ones((1, 5), DType::U8, &dev)?;
        let targets = Tensor::new(&[5u32, 7, 9, 11, 2], &dev)?;
        let run = |m: &Llama| -> Result<(f32, candle_core::backprop::GradStore)> {
            m.reseed_dropout(11);
            let embeds = m.embed(&ids)?.broadcast_mul(scale.as_tensor())?;
            let logits = m.forward_embeds_t(&embeds, &valid, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0)?, &targets)?;
            Ok((loss.to_scalar::<f32>()?, m.backward(&loss)?))
        };
        let (la, ga) = run(&plain)?;
        let (lb, gb) = run(&checkpointed)?;
        assert_eq!(la, lb);
        let data = vm.data().lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        // The layers really were checkpointed: the outer backward alone reaches no adapter.
        let logits = checkpointed.forward_embeds_t(&checkpointed.embed(&ids)?.broadcast_mul(scale.as_tensor())?, &valid, true)?;
        let outer = candle_nn::loss::cross_entropy(&logits.squeeze(0)?, &targets)?.backward()?;
        assert!(data.values().all(|v| outer.get(v.as_tensor()).is_none()));
        assert!(outer.get(scale.as_tensor()).is_some());
        assert_eq!(data.len(), 3 * 3 * 2);
        for (name, var) in data.iter().map(|(k, v)| (k.as_str(), v.as_tensor())).chain([("input scale", scale.as_tensor())]) {
            let (a, b) = (ga.get(var).unwrap_or_else(|| panic!("{name}: no gradient")), gb.get(var).unwrap_or_else(|| panic!("{name}: no gradient with checkpointing")));
            let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let norm = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(norm > 0.0 && diff <= 1e-6 * norm.max(1.0), "{name}: gradients differ by {diff} (max {norm})");
        }
        Ok(())
    }
}
