//! The language-model loss fused with its vocabulary projection, forward and backward.
//!
//! candle's `cross_entropy(hidden · Wᵀ, targets)` keeps the (rows, vocab) logits and builds ~8 graph
//! nodes over them; each node's backward writes fresh (rows, vocab) tensors, and candle accumulates every
//! gradient as zeros + add. For SmolLM2 (vocab 49152) at 8 × 127 positions that is ~0.8 s of a 5.7 s
//! training step spent on 200 MB passes. Here the loss is one node over the hidden states: the forward
//! computes the logits, the loss, and (when the hidden states are tracked) turns the logits in place into
//! `w_i · (softmax − onehot)` and multiplies them back through the frozen head; the backward scales that.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::frozen_linear::frozen_product_cpu;
use super::train_ops::{SharedOut, exp_fast, par_chunks, vectorised};

/// `Σ_i w_i · (logsumexp(h_i · Wᵀ) − (h_i · Wᵀ)[t_i])` for `hidden` (rows, in) and a frozen head `weight`
/// (vocab, in), with the gradient of `hidden` only. `None` where the fused kernel does not apply (not the
/// CPU, not f32, a head that is trained): the caller composes candle's ops instead.
pub fn linear_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &[u32], row_weights: &[f32]) -> Result<Option<Tensor>> {
    let (rows, _) = hidden.dims2()?;
    let (vocab, _) = weight.dims2()?;
    if !hidden.device().is_cpu() || hidden.dtype() != DType::F32 || weight.dtype() != DType::F32 || weight.track_op() {
        return Ok(None);
    }
    if targets.len() != rows || row_weights.len() != rows {
        candle_core::bail!("loss over {rows} rows with {} targets and {} weights", targets.len(), row_weights.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target token {t} is outside the vocabulary of {vocab}");
    }
    let hidden = hidden.contiguous()?;
    let op = LinearCrossEntropy {
        weight: weight.contiguous()?,
        targets: targets.to_vec(),
        row_weights: row_weights.to_vec(),
        with_grad: hidden.track_op(),
        grad: Mutex::new(None),
    };
    Ok(Some(if op.with_grad { hidden.apply_op1(op)? } else { hidden.apply_op1_no_bwd(&op)? }))
}

struct LinearCrossEntropy {
    /// (vocab, in), contiguous f32, frozen.
    weight: Tensor,
    targets: Vec<u32>,
    row_weights: Vec<f32>,
    /// The loss is the graph's last node, so its backward is the hidden states' gradient for an upstream
    /// gradient of 1, scaled: the forward pass computes it while it holds the logits (no second product
    /// with the head, no second pass over the logits).
    with_grad: bool,
    grad: Mutex<Option<Tensor>>,
}

/// Rows per pool work item.
const ROWS_PER_ITEM: usize = 4;

/// Runs `f(row, logits_row)` for every row of `logits` (rows × vocab), in parallel on candle's pool.
fn for_each_row(logits: &mut [f32], vocab: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let out = SharedOut::new(logits);
    par_chunks(logits.len(), ROWS_PER_ITEM * vocab, |r| {
        // SAFETY: the pool hands out disjoint ranges of whole rows; `logits` outlives the call.
        let rows = unsafe { out.slice(r.clone()) };
        for (i, row) in rows.chunks_exact_mut(vocab).enumerate() {
            f(r.start / vocab + i, row);
        }
    });
}

/// `(max, Σ exp(x − max))` of a row.
fn max_and_exp_sum(row: &[f32]) -> (f32, f32) {
    vectorised(|| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (max, row.iter().map(|&x| exp_fast(x - max)).sum())
    })
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("fused loss: lock poisoned".into())
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, hidden: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let vocab = self.weight.dim(0)?;
        let CpuStorage::F32(mut logits) = frozen_product_cpu(hidden, layout, &self.weight)?.0 else {
            candle_core::bail!("fused loss: the logits are not f32")
        };
        let rows = logits.len() / vocab;
        let mut nll = vec![0f32; rows];
        let nll_out = SharedOut::new(&mut nll);
        for_each_row(&mut logits, vocab, |r, row| {
            let (max, sum) = max_and_exp_sum(row);
            let lse = max + sum.ln();
            let t = self.targets[r] as usize;
            // SAFETY: row r is visited once; `nll` holds `rows` values and outlives the call.
            unsafe { *nll_out.at(r) = lse - row[t] };
            if self.with_grad {
                // d loss / d logit_ij = w_i · (softmax_ij − [j = t_i]), written over the logits.
                let w = self.row_weights[r];
                vectorised(|| {
                    for x in row.iter_mut() {
                        *x = w * exp_fast(*x - lse);
                    }
                });
                row[t] -= w;
            }
        });
        let loss: f64 = nll.iter().zip(&self.row_weights).map(|(&n, &w)| n as f64 * w as f64).sum();
        if self.with_grad {
            let d_logits = Tensor::from_vec(logits, (rows, vocab), self.weight.device())?;
            *self.grad.lock().map_err(|_| poisoned())? = Some(super::matmul_in(&d_logits, &self.weight, super::Arith::F32)?);
        }
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(&self, _hidden: &Tensor, _loss: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let d_hidden = self.grad.lock().map_err(|_| poisoned())?.clone();
        let Some(d_hidden) = d_hidden else { candle_core::bail!("fused loss: backward without its forward pass") };
        if g == 1.0 { Ok(Some(d_hidden)) } else { Ok(Some((d_hidden * g as f64)?)) }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn reference(hidden: &Tensor, weight: &Tensor, targets: &[u32], w: &[f32]) -> Result<Tensor> {
        let logits = hidden.matmul(&weight.t()?)?;
        let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
        let t = Tensor::new(targets, hidden.device())?.unsqueeze(1)?;
        let nll = logp.gather(&t, 1)?.squeeze(1)?.neg()?;
        (nll * Tensor::new(w, hidden.device())?)?.sum_all()
    }

    #[test]
    fn loss_and_hidden_gradient_match_candles_composition() -> Result<()> {
        let dev = Device::Cpu;
        // Rows not a multiple of the work item, a vocabulary not a multiple of the SIMD width.
        let hidden = Var::randn(0f32, 1.0, (11, 24), &dev)?;
        let weight = (Tensor::randn(0f32, 1.0, (37, 24), &dev)? * 0.5)?;
        let targets: Vec<u32> = (0..11).map(|i| (i * 7 % 37) as u32).collect();
        let w: Vec<f32> = (0..11).map(|i| 0.05 + 0.01 * i as f32).collect();
        let ours = linear_cross_entropy(hidden.as_tensor(), &weight, &targets, &w)?.expect("CPU f32 takes the fused kernel");
        let theirs = reference(hidden.as_tensor(), &weight, &targets, &w)?;
        let (a, b) = (ours.to_scalar::<f32>()?, theirs.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "loss {a} vs {b}");
        // A non-unit upstream gradient, as a loss scaled before backward.
        let (g_ours, g_theirs) = ((ours * 3.0)?.backward()?, (theirs * 3.0)?.backward()?);
        let (ga, gb) = (g_ours.get(hidden.as_tensor()).expect("grad"), g_theirs.get(hidden.as_tensor()).expect("grad"));
        let diff = (ga - gb)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let scale = gb.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff < 1e-5 * scale.max(1.0), "hidden gradient off by {diff} (scale {scale})");
        // The frozen head gets no gradient.
        assert!(g_ours.get(&weight).is_none());
        Ok(())
    }

    #[test]
    fn other_dtypes_trained_heads_and_bad_targets_are_refused_or_left_to_the_caller() -> Result<()> {
        let dev = Device::Cpu;
        let hidden = Tensor::randn(0f32, 1.0, (2, 4), &dev)?;
        let weight = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        assert!(linear_cross_entropy(&hidden.to_dtype(DType::BF16)?, &weight.to_dtype(DType::BF16)?, &[0, 1], &[0.5, 0.5])?.is_none());
        let trained = Var::from_tensor(&weight)?;
        assert!(linear_cross_entropy(&hidden, trained.as_tensor(), &[0, 1], &[0.5, 0.5])?.is_none());
        let err = linear_cross_entropy(&hidden, &weight, &[0, 5], &[0.5, 0.5]).expect_err("token 5 of a vocabulary of 5");
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        assert!(linear_cross_entropy(&hidden, &weight, &[0], &[1.0]).is_err());
        Ok(())
    }
}
