//! Generation over input embeddings with a KV cache (the prompt is processed once, then one position per
//! new token): greedy or temperature sampling with top-p, a repetition penalty, and stop tokens.

use candle_core::{IndexOp, Result, Tensor};
use rand::Rng;

use super::llama::{KvCache, Llama};
use super::multimodal::{EmotionModel, MmTokens, TokenizedPrompt};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling: keep the most probable tokens whose mass reaches `top_p` (1 = off).
    pub top_p: f64,
    /// HF `repetition_penalty`: logits of tokens already generated are divided (if > 0) or multiplied
    /// (if < 0) by it (1 = off).
    pub repetition_penalty: f32,
    /// Tokens that end generation besides EOS (not included in the output).
    pub stop_tokens: Vec<u32>,
}

impl GenerateOptions {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, temperature: 0.0, top_p: 1.0, repetition_penalty: 1.0, stop_tokens: Vec::new() }
    }
}

/// Generates answer ids for one prompt (batch of one). `mm` holds this sample's tokens (batch dim 1).
pub fn generate_one(
    model: &EmotionModel,
    prompt: &TokenizedPrompt,
    mm: Option<&MmTokens>,
    opts: &GenerateOptions,
    rng: &mut impl Rng,
) -> Result<Vec<u32>> {
    generate_one_streaming(model, prompt, mm, opts, rng, &mut |_| true)
}

/// [`generate_one`] calling `on_token` with each new id as soon as it is chosen (the same ids, in
/// order); `on_token` returning `false` stops generation there (the ids so far are returned).
pub fn generate_one_streaming(
    model: &EmotionModel,
    prompt: &TokenizedPrompt,
    mm: Option<&MmTokens>,
    opts: &GenerateOptions,
    rng: &mut impl Rng,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let inputs = model.build_inputs(std::slice::from_ref(prompt), mm, false)?;
    let t = inputs.embeds.dim(1)?;
    let mut out = decode(&model.llm, inputs.embeds, vec![vec![1; t]], model.eos, &[model.eos], opts, rng, on_token)?;
    Ok(out.pop().unwrap_or_default())
}

/// Generates continuations of token-id prompts, batched with left padding (each row's positions count
/// its own tokens, as HF `generate` does). A row ends at an `eos` id (not included) or after
/// `max_new_tokens`; `pad` fills the left of shorter prompts.
pub fn generate_ids_batch(llm: &Llama, prompts: &[Vec<u32>], pad: u32, eos: &[u32], opts: &GenerateOptions, rng: &mut impl Rng) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if b == 0 || prompts.iter().any(Vec::is_empty) {
        candle_core::bail!("every prompt needs at least one token");
    }
    let mut ids = Vec::with_capacity(b * longest);
    let mut valid: Vec<Vec<u8>> = Vec::with_capacity(b);
    for p in prompts {
        let padding = longest - p.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(p.iter().copied()));
        valid.push(std::iter::repeat_n(0u8, padding).chain(std::iter::repeat_n(1u8, p.len())).collect());
    }
    let embeds = llm.embed(&Tensor::from_vec(ids, (b, longest), llm.device())?)?;
    decode(llm, embeds, valid, pad, eos, opts, rng, &mut |_| true)
}

/// The decoding loop behind both entry points: `embeds` (batch, t, hidden) is the prompt, `valid` marks
/// its real (non-padding) positions per row. Each step feeds one token per row through the KV cache; a
/// finished row is fed `pad` until every row is done. `on_token` sees each id appended to row 0 (a
/// batch of one streams); its `false` ends generation after that id.
#[allow(clippy::too_many_arguments)]
fn decode(
    llm: &Llama,
    embeds: Tensor,
    mut valid: Vec<Vec<u8>>,
    pad: u32,
    eos: &[u32],
    opts: &GenerateOptions,
    rng: &mut impl Rng,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Vec<Vec<u32>>> {
    let b = valid.len();
    let dev = llm.device().clone();
    let mut step = embeds;
    let mut cache = KvCache::new();
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..opts.max_new_tokens {
        let t = step.dim(1)?;
        if cache.len + t > llm.config().max_position_embeddings {
            break;
        }
        let flat: Vec<u8> = valid.iter().flatten().copied().collect();
        let mask = Tensor::from_vec(flat, (b, cache.len + t), &dev)?;
        let logits = llm.forward_cached(&step, &mask, &mut cache)?.i((.., t - 1))?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        let mut stop = false;
        for (row, mut l) in logits.into_iter().enumerate() {
            if done[row] {
                next.push(pad);
                continue;
            }
            apply_repetition_penalty(&mut l, &out[row], opts.repetition_penalty);
            let tok = pick(&l, opts, rng);
            if eos.contains(&tok) || opts.stop_tokens.contains(&tok) {
                done[row] = true;
            } else {
                out[row].push(tok);
                if row == 0 && !on_token(tok) {
                    stop = true;
                }
            }
            next.push(tok);
        }
        if stop || done.iter().all(|d| *d) {
            break;
        }
        for v in valid.iter_mut() {
            v.push(1);
        }
        step = llm.embed(&Tensor::from_vec(next, (b, 1), &dev)?)?;
    }
    Ok(out)
}

/// HF semantics: positive logits of seen tokens are divided by `penalty`, negative ones multiplied.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::new();
    for &id in seen {
        if let Some(l) = logits.get_mut(id as usize).filter(|_| done.insert(id)) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// The next token: argmax when greedy, else a draw from the temperature-scaled, top-p-truncated softmax.
pub fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut impl Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b }).0 as u32;
    if opts.temperature <= 0.0 || logits.is_empty() {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &l)| (i, (((l - max) as f64) / opts.temperature).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    if opts.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs.iter().take_while(|p| {
            let before = mass;
            mass += p.1;
            before < opts.top_p
        });
        let kept = keep.count().max(1);
        probs.truncate(kept);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * total;
    for (i, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *i as u32;
        }
    }
    probs.last().map(|p| p.0 as u32).unwrap_or_else(argmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn repetition_penalty_follows_hf() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0], "each seen token once, sign-aware");
    }

    #[test]
    fn greedy_is_argmax_and_top_p_keeps_only_the_nucleus() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let logits = [0.0f32, 3.0, 2.9, -5.0];
        assert_eq!(pick(&logits, &GenerateOptions::greedy(1), &mut rng), 1);
        // Probabilities ≈ [0.03, 0.50, 0.45, 0.0003]: top_p 0.9 keeps tokens 1 and 2 only.
        let opts = GenerateOptions { temperature: 1.0, top_p: 0.9, ..GenerateOptions::greedy(1) };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            seen.insert(pick(&logits, &opts, &mut rng));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2]);
        // Without top-p every token can appear.
        let opts = GenerateOptions { temperature: 5.0, ..GenerateOptions::greedy(1) };
        let all: std::collections::BTreeSet<u32> = (0..2000).map(|_| pick(&logits, &opts, &mut rng)).collect();
        assert_eq!(all.len(), 4);
    }
}
