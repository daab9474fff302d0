//! The pre-norm transformer layer HF's ViT family (ViT-MAE, VideoMAE) and SigLIP share: `x +
//! attn(ln_before(x))`, then `h + mlp(ln_after(h))`, the three input projections fused into one matmul at
//! load time. Only the checkpoints' tensor names differ ([`BlockNames`]).

use candle_core::{Result, Tensor};
use candle_nn::{Activation, LayerNorm, Module, VarBuilder};

use crate::accel::Linear;

/// Where a checkpoint keeps one layer's tensors, relative to the encoder (`layers`) and to the layer (the
/// rest; `qkv` relative to `attention`).
#[derive(Debug)]
pub(crate) struct BlockNames {
    /// The list of layers: `{layers}.N.*`.
    pub layers: &'static str,
    /// The input projections' parent (also where `q_bias` / `v_bias` sit).
    pub attention: &'static str,
    pub qkv: [&'static str; 3],
    pub out: &'static str,
    pub ln_before: &'static str,
    pub ln_after: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

/// HF `ViTLayer` (ViT-MAE, VideoMAE) under `encoder.layer.N`.
pub(crate) const HF_VIT: BlockNames = BlockNames {
    layers: "layer",
    attention: "attention.attention",
    qkv: ["query", "key", "value"],
    out: "attention.output.dense",
    ln_before: "layernorm_before",
    ln_after: "layernorm_after",
    fc1: "intermediate.dense",
    fc2: "output.dense",
};

/// HF `SiglipEncoderLayer` under `encoder.layers.N`.
pub(crate) const SIGLIP: BlockNames = BlockNames {
    layers: "layers",
    attention: "self_attn",
    qkv: ["q_proj", "k_proj", "v_proj"],
    out: "self_attn.out_proj",
    ln_before: "layer_norm1",
    ln_after: "layer_norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

/// How a checkpoint stores the attention input biases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum QkvBias {
    None,
    /// One bias per projection (HF ViT, ViT-MAE, SigLIP).
    PerProjection,
    /// `q_bias` and `v_bias` beside the projections; the key has none (VideoMAE, BEiT).
    QueryValue,
}

/// The shape and names of one pre-norm block.
#[derive(Debug, Clone)]
pub(crate) struct VitBlockSpec {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub eps: f64,
    pub act: Activation,
    pub bias: QkvBias,
    pub names: &'static BlockNames,
}

impl VitBlockSpec {
    pub fn validate(&self, model: &str) -> Result<()> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            candle_core::bail!(
                "{model} hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_heads
            );
        }
        Ok(())
    }
}

/// One pre-norm layer (HF `ViTLayer`, `SiglipEncoderLayer`).
#[derive(Debug, Clone)]
struct VitLayer {
    qkv: Linear,
    out: Linear,
    ln_before: LayerNorm,
    ln_after: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// `None` when fused into `fc1` (the exact GELU).
    act: Option<Activation>,
    heads: usize,
}

impl VitLayer {
    fn new(spec: &VitBlockSpec, vb: VarBuilder) -> Result<Self> {
        let (h, names) = (spec.hidden_size, spec.names);
        let att = vb.pp(names.attention);
        let weights = names.qkv.iter().map(|n| att.pp(*n).get((h, h), "weight")).collect::<Result<Vec<_>>>()?;
        let bias = match spec.bias {
            QkvBias::None => None,
            QkvBias::PerProjection => {
                let b = names.qkv.iter().map(|n| att.pp(*n).get(h, "bias")).collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&b, 0)?)
            }
            QkvBias::QueryValue => {
                let q = att.get(h, "q_bias")?;
                let v = att.get(h, "v_bias")?;
                Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
            }
        };
        let erf = spec.act == Activation::Gelu;
        let fc1 = crate::accel::linear(h, spec.intermediate_size, vb.pp(names.fc1))?;
        Ok(Self {
            qkv: Linear::new(Tensor::cat(&weights, 0)?, bias),
            out: crate::accel::linear(h, h, vb.pp(names.out))?,
            ln_before: candle_nn::layer_norm(h, spec.eps, vb.pp(names.ln_before))?,
            ln_after: candle_nn::layer_norm(h, spec.eps, vb.pp(names.ln_after))?,
            fc1: if erf { fc1.with_gelu_erf() } else { fc1 },
            fc2: crate::accel::linear(spec.intermediate_size, h, vb.pp(names.fc2))?,
            act: (!erf).then_some(spec.act),
            heads: spec.num_heads,
        })
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(2)? / self.heads;
        // (b, heads, n, d) views of the fused projection: the fast paths read them in place.
        let [q, k, v] = crate::accel::split_fused_qkv(&self.qkv.forward(x)?, self.heads)?;
        let ctx = crate::accel::attention(&q, &k, &v, (d as f64).powf(-0.5))?;
        self.out.forward(&ctx)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (self.attention(&crate::accel::layer_norm(x, &self.ln_before)?)? + x)?;
        let mut m = self.fc1.forward(&crate::accel::layer_norm(&h, &self.ln_after)?)?;
        if let Some(act) = &self.act {
            m = act.forward(&m)?;
        }
        self.fc2.forward(&m)? + h
    }
}

/// The stack of layers under `encoder.{layers}.N`.
#[derive(Debug, Clone)]
pub(crate) struct VitEncoder {
    layers: Vec<VitLayer>,
}

impl VitEncoder {
    /// `vb` at `encoder`.
    pub fn new(spec: &VitBlockSpec, num_layers: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp(spec.names.layers);
        let layers = (0..num_layers).map(|i| VitLayer::new(spec, vb.pp(i))).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The embeddings followed by every layer's output (HF `output_hidden_states`).
    pub fn forward(&self, embeddings: Tensor) -> Result<Vec<Tensor>> {
        self.forward_upto(embeddings, self.layers.len())
    }

    /// The hidden states `0..=last` only (the layers past `last` are not run).
    pub fn forward_upto(&self, embeddings: Tensor, last: usize) -> Result<Vec<Tensor>> {
        let last = last.min(self.layers.len());
        let mut states = Vec::with_capacity(last + 1);
        let mut x = embeddings;
        for layer in &self.layers[..last] {
            let next = layer.forward(&x)?;
            states.push(x);
            x = next;
        }
        states.push(x);
        Ok(states)
    }
}
