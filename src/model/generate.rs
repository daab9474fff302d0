//! Greedy / temperature generation over input embeddings, with a KV cache (the prompt is processed once,
//! then one position per new token).

use candle_core::{D, IndexOp, Result, Tensor};
use rand::Rng;

use super::llama::KvCache;
use super::multimodal::{EmotionModel, MmTokens, TokenizedPrompt};

#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
}

/// Generates answer ids for one prompt (batch of one). `mm` holds this sample's tokens (batch dim 1).
pub fn generate_one(
    model: &EmotionModel,
    prompt: &TokenizedPrompt,
    mm: Option<&MmTokens>,
    opts: GenerateOptions,
    rng: &mut impl Rng,
) -> Result<Vec<u32>> {
    let inputs = model.build_inputs(std::slice::from_ref(prompt), mm, false)?;
    let mut step_input = inputs.embeds;
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    for _ in 0..opts.max_new_tokens {
        let t = step_input.dim(1)?;
        if cache.len + t > model.llm.config().max_position_embeddings {
            break;
        }
        let logits = model.llm.forward_cached(&step_input, &mut cache)?.i((0, t - 1))?;
        let next = if opts.temperature <= 0.0 {
            logits.argmax(D::Minus1)?.to_scalar::<u32>()?
        } else {
            let probs = candle_nn::ops::softmax(&(logits / opts.temperature)?, D::Minus1)?.to_vec1::<f32>()?;
            sample(&probs, rng)
        };
        if next == model.eos {
            break;
        }
        out.push(next);
        step_input = model.llm.embed(&Tensor::new(&[next], step_input.device())?)?.unsqueeze(0)?;
    }
    Ok(out)
}

fn sample(probs: &[f32], rng: &mut impl Rng) -> u32 {
    let r: f32 = rng.random();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    probs.len().saturating_sub(1) as u32
}
