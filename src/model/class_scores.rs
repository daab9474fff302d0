//! Class scores from the LLM's likelihood: for each candidate answer (a class word, tokenized as the
//! training answers are), log p(answer | prompt) = Σ log p(token_k | prompt, token_<k). The prompt is
//! processed once through the KV cache; each candidate continues from a copy of it. The probabilities
//! are the softmax of these log-likelihoods over the candidates (the model's choice among the classes,
//! not a parse of generated text).

use candle_core::{D, IndexOp, Result, Tensor};

use super::llama::KvCache;
use super::multimodal::{EmotionModel, MmTokens, TokenizedPrompt};

/// The log-likelihood of each candidate (token ids) after `prompt` (batch of one; `mm` its tokens).
pub fn candidate_log_likelihoods(model: &EmotionModel, prompt: &TokenizedPrompt, mm: Option<&MmTokens>, candidates: &[Vec<u32>]) -> Result<Vec<f64>> {
    if let Some(i) = candidates.iter().position(Vec::is_empty) {
        candle_core::bail!("candidate {i} has no tokens");
    }
    let llm = &model.llm;
    let dev = llm.device().clone();
    let inputs = model.build_inputs(std::slice::from_ref(prompt), mm, false)?;
    let t = inputs.embeds.dim(1)?;
    let mut cache = KvCache::new();
    let logits = llm.forward_cached(&inputs.embeds, &Tensor::ones((1, t), candle_core::DType::U8, &dev)?, &mut cache)?;
    let first = log_softmax_row(&logits.i((0, t - 1))?)?;
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        let mut total = first[c[0] as usize] as f64;
        if c.len() > 1 {
            // Feed every token but the last; position k's logits score token k + 1.
            let mut branch = cache.clone();
            let fed = &c[..c.len() - 1];
            let embeds = llm.embed(&Tensor::new(fed, &dev)?.unsqueeze(0)?)?;
            let valid = Tensor::ones((1, t + fed.len()), candle_core::DType::U8, &dev)?;
            let logits = llm.forward_cached(&embeds, &valid, &mut branch)?;
            for (k, &next) in c[1..].iter().enumerate() {
                total += log_softmax_row(&logits.i((0, k))?)?[next as usize] as f64;
            }
        }
        out.push(total);
    }
    Ok(out)
}

/// The clip's words in a content-free prompt for [`calibrate`]: what the prompt says when it says nothing.
pub const CONTENT_FREE: &str = "N/A";

/// Contextual calibration (Zhao et al., 2021, "Calibrate Before Use"): each class's log-likelihood minus
/// its log-likelihood after a content-free prompt (the same prompt with the clip's words replaced by
/// [`CONTENT_FREE`]), which removes the LLM's prior preference for some class words, e.g. a small
/// model's "happy".
pub fn calibrate(log_likelihoods: &[f64], content_free: &[f64]) -> Vec<f64> {
    log_likelihoods.iter().zip(content_free).map(|(l, c)| l - c).collect()
}

/// Softmax over log-likelihoods (stable for very negative values).
pub fn probabilities(log_likelihoods: &[f64]) -> Vec<f64> {
    let max = log_likelihoods.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = log_likelihoods.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn log_softmax_row(logits: &Tensor) -> Result<Vec<f32>> {
    candle_nn::ops::log_softmax(&logits.to_dtype(candle_core::DType::F32)?, D::Minus1)?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_removes_the_content_free_preference() {
        // A model that prefers class 0 by ln 4 whatever the input ranks them equally after calibration.
        let prior = [4f64.ln(), 0.0];
        assert_eq!(probabilities(&calibrate(&prior, &prior)), vec![0.5, 0.5]);
        let p = probabilities(&calibrate(&[4f64.ln(), 2f64.ln()], &prior));
        assert!((p[1] - 2.0 / 3.0).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn probabilities_are_a_stable_softmax() {
        let p = probabilities(&[-1000.0, -1000.0 + 2f64.ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12, "{p:?}");
        assert!((probabilities(&[0.0, 0.0, 0.0]).iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
