//! Grouped-query attention with an additive mask as one op with a hand-written backward, for training on
//! the CPU in f32.
//!
//! Composed from candle's ops, a layer's attention records ~20 graph nodes (head transposes and their
//! copies, the two products, scale, mask, softmax, the heads merge), each of whose backward writes fresh
//! tensors and accumulates as zeros + add, and the mask gets a gradient too. Here the projections'
//! outputs are read in place in their (batch, seq, heads, head_dim) layout, the output is written
//! heads-merged, and the backward recomputes the probabilities per head (no (seq, keys) tensor is kept
//! between the passes). The products are `gemm`'s kernels (candle's own CPU matmul) on strided views.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;

use super::train_ops::{SharedOut, exp_fast, f32_slice, vectorised};

/// `softmax(scale · Q Kᵀ + mask) V` for `q` (batch, seq, heads, head_dim), `k` and `v` (batch, keys,
/// kv_heads, head_dim) with `heads` a multiple of `kv_heads` (query head `h` reads key/value head
/// `h / (heads / kv_heads)`), and an additive f32 `mask` (batch, 1, seq, keys). Returns (batch, seq,
/// heads · head_dim). `None` off the CPU or outside f32: the caller composes candle's ops.
pub fn attention_bthd(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32) -> Result<Option<Tensor>> {
    if ![q, k, v, mask].iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32) {
        return Ok(None);
    }
    let (b, t, heads, d) = q.dims4()?;
    let (kb, keys, kv, kd) = k.dims4()?;
    if (kb, kd) != (b, d) || v.dims() != k.dims() || kv == 0 || !heads.is_multiple_of(kv) || mask.dims() != [b, 1, t, keys] {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?}, mask {:?} do not fit", q.dims(), k.dims(), v.dims(), mask.dims());
    }
    let op = Attention { mask: mask.contiguous()?, scale, dims: Dims { b, t, keys, heads, kv, d } };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let y = if q.track_op() || k.track_op() || v.track_op() { q.apply_op3(&k, &v, op)? } else { q.apply_op3_no_bwd(&k, &v, &op)? };
    Ok(Some(y))
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    keys: usize,
    heads: usize,
    kv: usize,
    d: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        self.heads / self.kv
    }
    /// Offset of query head `h` of batch row `bi` in a (batch, seq, heads, d) buffer (row stride heads·d).
    fn q_at(&self, bi: usize, h: usize) -> usize {
        bi * self.t * self.heads * self.d + h * self.d
    }
    /// Offset of key/value head `g` of batch row `bi` in a (batch, keys, kv, d) buffer (row stride kv·d).
    fn kv_at(&self, bi: usize, g: usize) -> usize {
        bi * self.keys * self.kv * self.d + g * self.d
    }
}

struct Attention {
    /// (batch, 1, seq, keys), contiguous.
    mask: Tensor,
    scale: f32,
    dims: Dims,
}

/// A contiguous f32 slice of a CPU storage.
fn slice<'a>(s: &'a Storage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => f32_slice(c, l, &format!("attention {what}")),
        _ => candle_core::bail!("attention: {what} left the CPU"),
    }
}

/// `dst (m×n) = beta · lhs (m×k) · rhs (k×n) [+ dst when accumulate]`, strides in elements as
/// (row stride, column stride).
/// SAFETY: every pointer covers the strided matrix it describes; `dst` is not read or written elsewhere
/// meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(m: usize, n: usize, k: usize, dst: *mut f32, dst_s: (usize, usize), accumulate: bool, lhs: *const f32, lhs_s: (usize, usize), rhs: *const f32, rhs_s: (usize, usize), beta: f32) {
    unsafe {
        gemm::gemm(
            m, n, k,
            dst, dst_s.1 as isize, dst_s.0 as isize, accumulate,
            lhs, lhs_s.1 as isize, lhs_s.0 as isize,
            rhs, rhs_s.1 as isize, rhs_s.0 as isize,
            1.0, beta, false, false, false, Parallelism::None,
        )
    }
}

impl Attention {
    /// The probabilities of query head `h` of batch row `bi` into `p` (seq × keys).
    fn probabilities(&self, q: &[f32], k: &[f32], mask: &[f32], bi: usize, h: usize, p: &mut [f32]) {
        let Dims { t, keys, heads, kv, d, .. } = self.dims;
        let g = h / self.dims.rep();
        // SAFETY: q holds (b, t, heads, d) and k (b, keys, kv, d); `p` is this item's own buffer.
        unsafe {
            product(t, keys, d, p.as_mut_ptr(), (keys, 1), false, q[self.dims.q_at(bi, h)..].as_ptr(), (heads * d, 1), k[self.dims.kv_at(bi, g)..].as_ptr(), (1, kv * d), self.scale);
        }
        let mask = &mask[bi * t * keys..(bi + 1) * t * keys];
        vectorised(|| {
            for (row, m) in p.chunks_exact_mut(keys).zip(mask.chunks_exact(keys)) {
                let mut max = f32::NEG_INFINITY;
                for (s, &m) in row.iter_mut().zip(m) {
                    *s += m;
                    max = max.max(*s);
                }
                let mut sum = 0f32;
                for s in row.iter_mut() {
                    *s = exp_fast(*s - max);
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
        });
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "emollama-attention"
    }

    fn cpu_fwd(&self, q: &CpuStorage, ql: &Layout, k: &CpuStorage, kl: &Layout, v: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let Dims { b, t, keys, heads, kv, d } = self.dims;
        let (q, k, v) = (f32_slice(q, ql, "attention q")?, f32_slice(k, kl, "attention k")?, f32_slice(v, vl, "attention v")?);
        let (ms, ml) = self.mask.storage_and_layout();
        let mask = slice(&ms, ml, "the mask")?;
        let mut out = vec![0f32; b * t * heads * d];
        let dst = SharedOut::new(&mut out);
        candle_core::utils::barrier_pool().execute_chunked(b * heads, |items| {
            let mut p = vec![0f32; t * keys];
            for item in items {
                let (bi, h) = (item / heads, item % heads);
                self.probabilities(q, k, mask, bi, h, &mut p);
                let g = h / self.dims.rep();
                // SAFETY: head h of row bi owns these output elements.
                unsafe {
                    product(t, d, keys, dst.at(self.dims.q_at(bi, h)), (heads * d, 1), false, p.as_ptr(), (keys, 1), v[self.dims.kv_at(bi, g)..].as_ptr(), (kv * d, 1), 1.0);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t, heads * d))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { b, t, keys, heads, kv, d } = self.dims;
        let rep = self.dims.rep();
        let grad = grad.contiguous()?;
        let guards = [q, k, v, out, &grad, &self.mask].map(|t| t.storage_and_layout());
        let [qs, ks, vs, os, gs, ms] = &guards;
        let (q_, k_, v_) = (slice(&qs.0, qs.1, "q")?, slice(&ks.0, ks.1, "k")?, slice(&vs.0, vs.1, "v")?);
        let (o_, dy, mask) = (slice(&os.0, os.1, "the output")?, slice(&gs.0, gs.1, "the gradient")?, slice(&ms.0, ms.1, "the mask")?);
        let (mut dq, mut dk, mut dv) = (vec![0f32; q_.len()], vec![0f32; k_.len()], vec![0f32; v_.len()]);
        let (pq, pk, pv) = (SharedOut::new(&mut dq), SharedOut::new(&mut dk), SharedOut::new(&mut dv));
        // One item per (batch row, key/value head): its `rep` query heads accumulate into its dK, dV.
        candle_core::utils::barrier_pool().execute_chunked(b * kv, |items| {
            let (mut p, mut dp) = (vec![0f32; t * keys], vec![0f32; t * keys]);
            let mut row_dot = vec![0f32; t];
            for item in items {
                let (bi, g) = (item / kv, item % kv);
                let kv_at = self.dims.kv_at(bi, g);
                for (n, h) in (g * rep..(g + 1) * rep).enumerate() {
                    let q_at = self.dims.q_at(bi, h);
                    self.probabilities(q_, k_, mask, bi, h, &mut p);
                    // SAFETY: the inputs hold their full shapes; dq's head h and dk/dv's head g of row bi
                    // belong to this item only.
                    unsafe {
                        // dP = dY · Vᵀ.
                        product(t, keys, d, dp.as_mut_ptr(), (keys, 1), false, dy[q_at..].as_ptr(), (heads * d, 1), v_[kv_at..].as_ptr(), (1, kv * d), 1.0);
                    }
                    // dS = P ⊙ (dP − rowsum(dY ⊙ Y)).
                    vectorised(|| {
                        for (i, r) in row_dot.iter_mut().enumerate() {
                            let at = q_at + i * heads * d;
                            *r = dy[at..at + d].iter().zip(&o_[at..at + d]).map(|(a, b)| a * b).sum();
                        }
                        for ((dpr, pr), &r) in dp.chunks_exact_mut(keys).zip(p.chunks_exact(keys)).zip(&row_dot) {
                            for (x, &p) in dpr.iter_mut().zip(pr) {
                                *x = p * (*x - r);
                            }
                        }
                    });
                    let acc = n > 0;
                    unsafe {
                        // dQ = scale · dS · K.
                        product(t, d, keys, pq.at(q_at), (heads * d, 1), false, dp.as_ptr(), (keys, 1), k_[kv_at..].as_ptr(), (kv * d, 1), self.scale);
                        // dK += scale · dSᵀ · Q.
                        product(keys, d, t, pk.at(kv_at), (kv * d, 1), acc, dp.as_ptr(), (1, keys), q_[q_at..].as_ptr(), (heads * d, 1), self.scale);
                        // dV += Pᵀ · dY.
                        product(keys, d, t, pv.at(kv_at), (kv * d, 1), acc, p.as_ptr(), (1, keys), dy[q_at..].as_ptr(), (heads * d, 1), 1.0);
                    }
                }
            }
        });
        drop(guards);
        let dq = q.track_op().then(|| Tensor::from_vec(dq, q.shape(), q.device())).transpose()?;
        let dk = k.track_op().then(|| Tensor::from_vec(dk, k.shape(), k.device())).transpose()?;
        let dv = v.track_op().then(|| Tensor::from_vec(dv, v.shape(), v.device())).transpose()?;
        Ok((dq, dk, dv))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    fn max_abs(t: &Tensor) -> Result<f32> {
        t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// candle's composition: heads repeated, the scores, mask, softmax, product, heads merged.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, t, heads, d) = q.dims4()?;
        let rep = heads / k.dim(2)?;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            let (b, s, kv, d) = x.dims4()?;
            x.unsqueeze(3)?.broadcast_as((b, s, kv, rep, d))?.reshape((b, s, kv * rep, d))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (q.transpose(1, 2)?.contiguous()?, repeat(k)?, repeat(v)?);
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
        p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, heads * d))
    }

    #[test]
    fn matches_candles_composition_forward_and_backward_with_grouped_heads_and_padding() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, heads, kv, d) = (2, 7, 6, 2, 8);
        let q = Var::randn(0f32, 1.0, (b, t, heads, d), &dev)?;
        let k = Var::randn(0f32, 1.0, (b, t, kv, d), &dev)?;
        let v = Var::randn(0f32, 1.0, (b, t, kv, d), &dev)?;
        // Causal, and row 1 has two padding keys at the end (fully masked query rows included).
        let mut m = vec![0f32; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (bi == 1 && j >= t - 2) {
                        m[(bi * t + i) * t + j] = -1e9;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        let ours = attention_bthd(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale as f32)?.expect("CPU f32");
        let theirs = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale)?;
        let diff = max_abs(&(&ours - &theirs)?)?;
        assert!(diff < 1e-5, "forward differs by {diff}");
        let probe = Tensor::randn(0f32, 1.0, ours.shape(), &dev)?;
        let (ga, gb) = ((ours * &probe)?.sum_all()?.backward()?, (theirs * &probe)?.sum_all()?.backward()?);
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, r) = (ga.get(x.as_tensor()).expect("ours"), gb.get(x.as_tensor()).expect("reference"));
            let diff = max_abs(&(a - r)?)?;
            assert!(diff < 1e-5 * max_abs(r)?.max(1.0), "d{name} differs by {diff}");
        }
        assert!(ga.get(&mask).is_none(), "the mask is a constant");
        Ok(())
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused_and_other_dtypes_left_to_the_caller() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 3, 4, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 3, 3, 8), DType::F32, &dev)?;
        let mask = Tensor::zeros((1, 1, 3, 3), DType::F32, &dev)?;
        assert!(attention_bthd(&q, &k, &k, &mask, 1.0).is_err(), "4 heads over 3 key/value heads");
        let k2 = Tensor::zeros((1, 3, 2, 8), DType::F32, &dev)?;
        assert!(attention_bthd(&q, &k2, &k2, &Tensor::zeros((1, 1, 3, 4), DType::F32, &dev)?, 1.0).is_err());
        let bf = |t: &Tensor| t.to_dtype(DType::BF16);
        assert!(attention_bthd(&bf(&q)?, &bf(&k2)?, &bf(&k2)?, &mask, 1.0)?.is_none());
        Ok(())
    }
}
