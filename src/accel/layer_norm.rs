//! LayerNorm for the frozen encoders in f32 on the CPU: one vectorised pass per row on candle's pool.
//!
//! candle's fused LayerNorm sums each row with one scalar accumulator chain (no vectorisation: f32 sums
//! are not reassociated), on rayon's pool beside the barrier pool and oneDNN's OpenMP team: 1.1 ms for
//! VideoMAE-L's 1568 × 1024 activations on the 2-core AVX-512 Xeon against 0.3-0.5 ms in PyTorch, twice per
//! layer; this pass takes 0.37 ms. Here the sums run in 16 lanes, and the variance is taken about the mean (two passes over a row
//! that is in L1), as PyTorch does, rather than as E[x²] − mean².
//!
//! Tracked gradients, other dtypes and devices, and RMS norms fall back to candle's op.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};

use super::train_ops::{SharedOut, f32_slice, par_chunks, vectorised};

/// `ln(x)` over the last dimension: this module's pass for a frozen f32 LayerNorm with a bias on the CPU,
/// candle's op (on the contiguous input) otherwise.
pub fn layer_norm(x: &Tensor, ln: &candle_nn::LayerNorm) -> Result<Tensor> {
    let x = x.contiguous()?;
    let frozen = !x.track_op() && !ln.weight().track_op() && ln.bias().is_none_or(|b| !b.track_op());
    if let Some(bias) = ln.bias()
        && frozen
        && ln.remove_mean()
        && super::fast_path_enabled()
        && [&x, ln.weight(), bias].iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && ln.weight().dims() == [x.dim(candle_core::D::Minus1)?]
        && bias.dims() == ln.weight().dims()
    {
        return x.apply_op3_no_bwd(ln.weight(), bias, &LayerNormOp { eps: ln.eps() as f32 });
    }
    ln.forward(&x)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "accel-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm input")?;
        let (w, b) = (f32_slice(s2, l2, "layer_norm weight")?, f32_slice(s3, l3, "layer_norm bias")?);
        let dim = w.len();
        if dim == 0 || b.len() != dim || !x.len().is_multiple_of(dim) {
            candle_core::bail!("layer_norm: input {:?} does not end in the weight's {dim}", l1.dims());
        }
        let eps = self.eps;
        let y = super::written_by(x.len(), |y| {
            let out = SharedOut::from_ptr(y);
            // About 16 K values per work item: whole rows.
            let rows_per_item = (1usize << 14).div_ceil(dim);
            par_chunks(x.len(), rows_per_item * dim, |range| {
                // SAFETY: each work item writes only its own range of y, which has x.len() elements.
                let dst = unsafe { out.slice(range.clone()) };
                vectorised(|| {
                    for (src, dst) in x[range].chunks_exact(dim).zip(dst.chunks_exact_mut(dim)) {
                        normalise_row(src, dst, w, b, eps);
                    }
                });
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

/// Sum of `xs` in 16 lanes (vectorised; the order is fixed, so the result does not depend on threads).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

#[inline(always)]
fn normalise_row(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = src.len() as f32;
    let mean = lane_sum(src, |v| v) / n;
    let var = lane_sum(src, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((d, &s), &w), &b) in dst.iter_mut().zip(src).zip(w).zip(b) {
        *d = (s - mean) * inv * w + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// Rows of 1024 and of an odd width (a remainder past the 16 lanes), values with a large offset (where
    /// E[x²] − mean² loses digits): within 2e-5 of the two-pass formula composed from candle's ops, and
    /// candle's fused op is no closer.
    #[test]
    fn equals_the_two_pass_formula() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, dim) in [(37, 1024), (5, 77)] {
            let x = ((Tensor::arange(0f32, (rows * dim) as f32, &dev)?.reshape((1, rows, dim))? * 0.37)?.sin()? + 30.0)?;
            let w = (Tensor::arange(0f32, dim as f32, &dev)? * 0.01)?.cos()?;
            let b = (Tensor::arange(0f32, dim as f32, &dev)? * 0.02)?.sin()?;
            let ln = candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-6);
            let got = layer_norm(&x, &ln)?;
            let mean = x.mean_keepdim(2)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(2)?;
            let want = centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)?;
            let diff = max_diff(&got, &want)?;
            assert!(diff < 2e-5, "({rows}, {dim}): max |diff| {diff}");
            assert!(diff <= max_diff(&ln.forward(&x)?, &want)?, "({rows}, {dim}): candle's op is closer");
        }
        Ok(())
    }

    /// A trained weight and an RMS norm: candle's op, bitwise (on values where the two formulas differ,
    /// as the frozen case shows); a non-contiguous input is made contiguous first.
    #[test]
    fn leaves_trained_weights_and_rms_norms_to_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = ((Tensor::arange(0f32, 4.0 * 64.0, &dev)?.reshape((4, 64))? * 0.7)?.sin()? + 300.0)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect()) };
        let frozen = candle_nn::LayerNorm::new(Tensor::ones(64, DType::F32, &dev)?, Tensor::zeros(64, DType::F32, &dev)?, 1e-5);
        assert_ne!(bits(&layer_norm(&x, &frozen)?)?, bits(&frozen.forward(&x)?)?, "the fast pass differs from candle's here");
        let w = candle_core::Var::from_tensor(&Tensor::ones(64, DType::F32, &dev)?)?;
        let trained = candle_nn::LayerNorm::new(w.as_tensor().clone(), Tensor::zeros(64, DType::F32, &dev)?, 1e-5);
        assert_eq!(bits(&layer_norm(&x, &trained)?)?, bits(&trained.forward(&x)?)?);
        let rms = candle_nn::LayerNorm::rms_norm(Tensor::ones(64, DType::F32, &dev)?, 1e-5);
        assert_eq!(bits(&layer_norm(&x, &rms)?)?, bits(&rms.forward(&x)?)?);
        let square = x.narrow(1, 0, 4)?;
        let frozen4 = candle_nn::LayerNorm::new(Tensor::ones(4, DType::F32, &dev)?, Tensor::zeros(4, DType::F32, &dev)?, 1e-5);
        assert_eq!(bits(&layer_norm(&square.t()?, &frozen4)?)?, bits(&layer_norm(&square.t()?.contiguous()?, &frozen4)?)?);
        Ok(())
    }
}
