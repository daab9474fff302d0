//! `x · Wᵀ` for a frozen weight, whose backward computes the gradient of `x` only. candle's matmul
//! backward always computes the gradient of both operands, so a frozen weight under LoRA would get a
//! weight-sized gradient in every layer (13.5 GB for LLaMA-2-7B in bf16, kept until the backward pass
//! ends) and twice the backward arithmetic.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `x · Wᵀ` for a weight (out, in) that receives no gradient. Same values as `x.broadcast_matmul(&w.t())`.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let weight = if weight.dtype() == x.dtype() { weight.clone() } else { weight.to_dtype(x.dtype())? };
    let op = FrozenMatmul { weight: weight.contiguous()? };
    let x = x.contiguous()?;
    // Untracked input (inference): no graph node, as candle's own ops.
    if x.track_op() { x.apply_op1(op) } else { x.apply_op1_no_bwd(&op) }
}

/// `x · Wᵀ` on the CPU storage of a contiguous `x` (…, in) and a contiguous weight (out, in) of its
/// dtype: the product behind [`frozen_linear`], for kernels that need it inside their own op.
pub(crate) fn frozen_product_cpu(x: &CpuStorage, xl: &Layout, weight: &Tensor) -> Result<(CpuStorage, Shape)> {
    FrozenMatmul { weight: weight.clone() }.cpu_fwd(x, xl)
}

struct FrozenMatmul {
    /// (out, in), contiguous, the activations' dtype.
    weight: Tensor,
}

/// The 2-D product behind a frozen linear: `(m, k)` rows of `x` times the transposed weight `(k, n)`.
struct Operands {
    m: usize,
    k: usize,
    n: usize,
    lhs: Layout,
    rhs: Layout,
    /// `x`'s shape with the last dim `n`.
    out: Shape,
}

impl FrozenMatmul {
    /// Checks `x` (..., in) is contiguous and lays out both operands (the weight read transposed in place).
    fn operands(&self, xl: &Layout, wl: &Layout) -> Result<Operands> {
        let (n, k) = self.weight.dims2()?;
        let dims = xl.dims();
        if !xl.is_contiguous() || dims.last() != Some(&k) {
            candle_core::bail!("frozen linear: input {dims:?} is not contiguous (…, {k})");
        }
        let m = xl.shape().elem_count() / k;
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank >= 1") = n;
        Ok(Operands {
            m,
            k,
            n,
            lhs: Layout::contiguous_with_offset((m, k), xl.start_offset()),
            rhs: Layout::new(Shape::from((k, n)), vec![1, k], wl.start_offset()),
            out: Shape::from(out),
        })
    }

    /// The product on one backend's own matmul.
    fn forward<S: BackendStorage>(&self, x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
        let o = self.operands(xl, wl)?;
        Ok((x.matmul(w, (1, o.m, o.n, o.k), &o.lhs, &o.rhs)?, o.out))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        let Storage::Cpu(w) = &*w else { candle_core::bail!("frozen linear: the weight is not on the CPU") };
        // f32 through oneDNN's GEMM (about twice candle's on these shapes), in f32 whatever the inference
        // precision: this op also serves training.
        #[cfg(feature = "onednn")]
        if let (CpuStorage::F32(xs), CpuStorage::F32(ws)) = (x, w)
            && super::fast_path_on()
        {
            let o = self.operands(xl, wl)?;
            let (y, _) = super::onednn::bmm_slices(xs, &o.lhs, ws, &o.rhs, super::Arith::F32)?;
            return Ok((CpuStorage::F32(y), o.out));
        }
        self.forward(x, xl, w, wl)
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        match &*w {
            Storage::Cuda(w) => self.forward(x, xl, w, wl),
            _ => candle_core::bail!("frozen linear: the weight is not on the GPU"),
        }
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, _) = self.weight.dims2()?;
        let g = super::matmul_in(&grad.contiguous()?.reshape(((), n))?, &self.weight, super::Arith::F32)?;
        Ok(Some(g.reshape(x.shape())?))
    }
}


#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor, Var};

    use super::*;

    #[test]
    fn same_values_and_input_gradient_as_candle_and_no_weight_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (5, 8), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 5, &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev)?;
        let ours = frozen_linear(x.as_tensor(), &w)?.broadcast_add(&b)?;
        let theirs = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(x.as_tensor())?;
        let max = |t: Tensor| -> Result<f32> { t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
        assert!(max((&ours - &theirs)?)? < 1e-6);
        let g_ours = (ours * &probe)?.sum_all()?.backward()?;
        let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
        let (gx, gx_ref) = (g_ours.get(x.as_tensor()).expect("x grad"), g_theirs.get(x.as_tensor()).expect("x grad"));
        assert!(max((gx - gx_ref)?)? < 1e-5);
        // candle computes a weight-sized gradient for the frozen operand (through `w.t()`); this op does not.
        let weight_sized = |g: &candle_core::backprop::GradStore| g.get_ids().filter_map(|id| g.get_id(*id)).filter(|t| t.elem_count() == 40).count();
        assert_eq!(weight_sized(&g_ours), 0);
        assert_eq!(weight_sized(&g_theirs), 1);
        Ok(())
    }

    #[test]
    fn weights_of_another_dtype_are_cast_and_untracked_inputs_make_no_graph() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 8), &dev)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 1.0, (3, 8), &dev)?;
        let y = frozen_linear(&x, &w)?;
        assert_eq!((y.dtype(), y.dims()), (DType::BF16, &[4usize, 3][..]));
        assert!(!y.track_op());
        let reference = x.to_dtype(DType::F32)?.matmul(&w.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.t()?)?;
        let diff = (y.to_dtype(DType::F32)? - reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff < 0.1, "bf16 product off by {diff}");
        Ok(())
    }
}
