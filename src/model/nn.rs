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
        let [q, k, v] = crate::accel::split_fused_qkv(&self.qkv.forward(&self.norm1.forward(x)?)?, self.heads)?;
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?); // (b, heads, t, hd) each
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let attn = softmax_last_dim(&scores)?.matmul(&v)?;
        let attn = attn.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.proj.forward(&attn)?)?;
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        &x + h
    }
}

/// Softmax over the last dimension with a fused forward and a short backward (`y ⊙ (g − Σ g⊙y)`),
/// for training on the CPU: candle's fused `softmax_last_dim` has no backward, and the composite
/// `candle_nn::ops::softmax` records max, sub, exp, sum and div, each with its own backward pass over
/// the (batch, heads, seq, seq) attention scores. Other devices and dtypes use the composite.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

struct SoftmaxLastDim;

impl candle_core::CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "emollama-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &candle_core::CpuStorage, layout: &candle_core::Layout) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(data) = storage else { candle_core::bail!("softmax_last_dim: f32 only") };
        let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("softmax_last_dim: contiguous input only") };
        let src = &data[start..end];
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(dim).zip(src.par_chunks(dim)).for_each(|(o, s)| {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(s) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
    }
}

#[cfg(test)]
mod softmax_tests {
    use candle_core::{D, Device, Tensor, Var};

    /// Same values and gradients as the composite softmax.
    #[test]
    fn fused_softmax_matches_composite_forward_and_backward() -> candle_core::Result<()> {
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (2, 3, 5, 7), &Device::Cpu)?))?;
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &Device::Cpu)?;
        let fused = super::softmax_last_dim(x.as_tensor())?;
        let composite = candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?;
        let diff = (&fused - &composite)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?.get(x.as_tensor()).cloned().expect("grad");
        let g2 = (composite * &w)?.sum_all()?.backward()?.get(x.as_tensor()).cloned().expect("grad");
        let diff = (g1 - g2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "backward differs by {diff}");
        Ok(())
    }
}
