//! Inference-only convolution helpers for the small face networks, with TensorFlow's `SAME` padding.
//!
//! Both face models were trained in TensorFlow, whose `SAME` padding puts the odd pixel *after* the
//! image (a 5x5 stride-2 conv on 128 pads 1 before and 2 after); PyTorch-style symmetric padding would
//! shift every box. Depthwise convolutions are computed directly: candle runs a grouped conv as one
//! small convolution per channel, which is far slower for 3x3 kernels on tiny feature maps.

use candle_core::{D, Result, Tensor};
use rayon::prelude::*;

/// TensorFlow `SAME` padding of one axis: `(before, after)` for input `size`, kernel `k`, stride `s`.
pub fn same_padding(size: usize, k: usize, s: usize) -> (usize, usize) {
    let out = size.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A regular convolution `(out, in, k, k)` + optional bias with `SAME` padding, NCHW.
pub fn conv2d_same(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let k = weight.dim(D::Minus1)?;
    let (t, b) = same_padding(h, k, stride);
    let (l, r) = same_padding(w, k, stride);
    let x = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?;
    let y = x.conv2d(weight, 0, stride, 1, 1)?;
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// A 1x1 convolution as one matmul: `weight` (out, in, 1, 1), optional bias, stride 1.
pub fn pointwise(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let out = weight.dim(0)?;
    let wm = weight.reshape((out, c))?;
    let y = wm.broadcast_matmul(&x.reshape((b, c, h * w))?)?;
    let y = match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, out, 1))?)?,
        None => y,
    };
    y.reshape((b, out, h, w))
}

/// A depthwise convolution (one `k x k` filter per channel, `weight` (C, 1, k, k)), optional bias,
/// `SAME` padding with zeros. f32, CPU, computed directly; channels in parallel.
pub fn depthwise_same(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let k = weight.dim(D::Minus1)?;
    if weight.dims4()? != (c, 1, k, k) {
        candle_core::bail!("depthwise weight {:?} does not fit {c} channels", weight.dims());
    }
    let (pt, pb) = same_padding(h, k, stride);
    let (pl, pr) = same_padding(w, k, stride);
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let (ph, pw) = (h + pt + pb, w + pl + pr);
    let xs = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let ws = weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bs = match bias {
        Some(t) => t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; c],
    };
    let mut out = vec![0f32; b * c * oh * ow];
    out.par_chunks_mut(oh * ow).with_min_len(4).enumerate().for_each(|(plane, dst)| {
        let ch = plane % c;
        let src = &xs[plane * h * w..][..h * w];
        let kern = &ws[ch * k * k..][..k * k];
        // A zero-padded copy of the plane makes the inner loops branch-free (and vectorisable at stride 1).
        let mut padded = vec![0f32; ph * pw];
        for y in 0..h {
            padded[(y + pt) * pw + pl..][..w].copy_from_slice(&src[y * w..][..w]);
        }
        dst.fill(bs[ch]);
        for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
            for ky in 0..k {
                let srow = &padded[(oy * stride + ky) * pw..][..pw];
                for kx in 0..k {
                    let wv = kern[ky * k + kx];
                    if stride == 1 {
                        for (d, s) in drow.iter_mut().zip(&srow[kx..kx + ow]) {
                            *d += wv * s;
                        }
                    } else {
                        for (ox, d) in drow.iter_mut().enumerate() {
                            *d += wv * srow[ox * stride + kx];
                        }
                    }
                }
            }
        }
    });
    Tensor::from_vec(out, (b, c, oh, ow), x.device())
}

/// Max pooling `k x k`, stride `s`, `SAME` padding (padded cells never win), NCHW, f32 on the CPU.
pub fn max_pool_same(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (pt, _) = same_padding(h, k, s);
    let (pl, _) = same_padding(w, k, s);
    let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
    let xs = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * c * oh * ow];
    out.par_chunks_mut(oh * ow).with_min_len(4).enumerate().for_each(|(plane, dst)| {
        let src = &xs[plane * h * w..][..h * w];
        for oy in 0..oh {
            let y0 = (oy * s).saturating_sub(pt);
            let y1 = (oy * s + k).saturating_sub(pt).min(h);
            for ox in 0..ow {
                let x0 = (ox * s).saturating_sub(pl);
                let x1 = (ox * s + k).saturating_sub(pl).min(w);
                let mut m = f32::NEG_INFINITY;
                for row in src[y0 * w..y1 * w].chunks_exact(w) {
                    for &v in &row[x0..x1] {
                        m = m.max(v);
                    }
                }
                dst[oy * ow + ox] = m;
            }
        }
    });
    Tensor::from_vec(out, (b, c, oh, ow), x.device())
}

/// Inference batch norm folded into a per-channel scale and shift: `y = x * scale + shift`.
#[derive(Debug, Clone)]
pub struct FoldedBatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl FoldedBatchNorm {
    /// From `weight` (γ), `bias` (β), `running_mean`, `running_var` under `vb`.
    pub fn new(channels: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        let g = vb.get(channels, "weight")?;
        let b = vb.get(channels, "bias")?;
        let m = vb.get(channels, "running_mean")?;
        let v = vb.get(channels, "running_var")?;
        let scale = g.broadcast_div(&(v + eps)?.sqrt()?)?;
        let shift = (b - m.mul(&scale)?)?;
        Ok(Self { scale: scale.reshape((1, channels, 1, 1))?, shift: shift.reshape((1, channels, 1, 1))? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(128, 5, 2), (1, 2));
        assert_eq!(same_padding(64, 3, 2), (0, 1));
        assert_eq!(same_padding(64, 3, 1), (1, 1));
        assert_eq!(same_padding(60, 3, 2), (0, 1));
        assert_eq!(same_padding(15, 3, 2), (1, 1));
        assert_eq!(same_padding(15, 1, 2), (0, 0));
    }

    #[test]
    fn depthwise_equals_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 7), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 5, &dev)?;
        for stride in [1, 2] {
            let ours = depthwise_same(&x, &w, Some(&b), stride)?;
            let (t, bo) = same_padding(9, 3, stride);
            let (l, r) = same_padding(7, 3, stride);
            let xp = x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?;
            let reference = xp.conv2d(&w, 0, stride, 1, 5)?.broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
            let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "stride {stride}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn max_pool_same_ignores_padding() -> Result<()> {
        let x = Tensor::new(&[[[[-5f32, -4.0, -3.0], [-2.0, -1.0, -6.0], [-7.0, -8.0, -9.0]]]], &Device::Cpu)?;
        // 3x3 stride 2 on 3 → 2 outputs, padded (1, 1): the negative values must survive.
        let y = max_pool_same(&x, 3, 2)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-1.0, -1.0, -1.0, -1.0]);
        let y = max_pool_same(&x.narrow(2, 0, 2)?.narrow(3, 0, 2)?, 2, 2)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-1.0]);
        Ok(())
    }
}
