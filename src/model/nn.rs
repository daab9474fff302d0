//! Small differentiable building blocks shared by the trainable encoders.
//!
//! candle-nn's `LayerNorm::forward` takes a fused kernel without backward for contiguous inputs, so the
//! trainable encoders use [`LayerNorm`] here, written with plain tensor ops.

use candle_core::{D, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// LayerNorm with weight and bias, differentiable.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Pre-LN transformer encoder block (ViT / wav2vec2 "stable layer norm" style), bidirectional attention.
#[derive(Debug, Clone)]
pub struct EncoderBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl EncoderBlock {
    pub fn new(dim: usize, heads: usize, mlp_dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("hidden size {dim} is not divisible by {heads} heads");
        }
        Ok(Self {
            norm1: LayerNorm::new(dim, eps, vb.pp("norm1"))?,
            qkv: candle_nn::linear(dim, 3 * dim, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(dim, dim, vb.pp("attn.proj"))?,
            norm2: LayerNorm::new(dim, eps, vb.pp("norm2"))?,
            fc1: candle_nn::linear(dim, mlp_dim, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(mlp_dim, dim, vb.pp("mlp.fc2"))?,
            heads,
        })
    }
}

impl Module for EncoderBlock {
    /// `x`: (batch, tokens, dim).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((b, t, 3, self.heads, hd))?;
        let qkv = qkv.permute((2, 0, 3, 1, 4))?; // (3, b, heads, t, hd)
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
        let attn = attn.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.proj.forward(&attn)?)?;
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        &x + h
    }
}
