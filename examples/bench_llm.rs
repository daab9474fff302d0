//! `just bench`: SmolLM2-135M-Instruct (the Q4_1 GGUF from `just fetch-models`) on the CPU: prompt
//! processing and greedy decoding speed, quantized matmuls (as `emollama generate`) and dequantized f32.
//! Prints one JSON line per mode; `tools/bench/llm_vs_llamacpp.sh` runs llama.cpp on the same file,
//! prompt and thread count and writes the comparison.
//!
//! Usage: RAYON_NUM_THREADS=2 cargo run --release --example bench_llm [-- NEW_TOKENS [MODE_PREFIX]]
//! (`MODE_PREFIX`, e.g. `q4_1`, runs only the modes whose name starts with it: for profiling one path).
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};
use emollama::model::chat::ChatModel;
use emollama::model::llama::KvCache;
use emollama::registry::Registry;

pub const PROMPT: &str = "Describe the facial expression of a person who has just heard good news.";

fn run(chat: &ChatModel, ids: &[u32], new_tokens: usize) -> anyhow::Result<(f64, f64)> {
    let llm = &chat.llm;
    let dev = llm.device().clone();
    let mut cache = KvCache::new();
    let t = Instant::now();
    let x = llm.embed(&Tensor::new(ids, &dev)?.unsqueeze(0)?)?;
    let logits = llm.forward_cached(&x, &Tensor::ones((1, ids.len()), DType::U8, &dev)?, &mut cache)?;
    let mut next = logits.i((0, ids.len() - 1))?.argmax(0)?.to_scalar::<u32>()?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..new_tokens {
        let x = llm.embed(&Tensor::new(&[next], &dev)?.unsqueeze(0)?)?;
        let valid = Tensor::ones((1, cache.len + 1), DType::U8, &dev)?;
        next = llm.forward_cached(&x, &valid, &mut cache)?.i((0, 0))?.argmax(0)?.to_scalar::<u32>()?;
    }
    Ok((prefill, t.elapsed().as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    emollama::accel::init_process();
    let new_tokens: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(64);
    let only = std::env::args().nth(2).unwrap_or_default();
    let registry = Registry::load(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let threads = candle_core::utils::get_num_threads();
    // q4_1: prompts through the dense f32 copy (`lora::PROMPT_ROWS`), decoding steps quantized. f32 twice:
    // candle's own matmuls, then the oneDNN path generation takes for frozen weights.
    for (mode, quantized, accel) in [("q4_1: prompt dense f32, decode q4_1·q8_1 kernel", true, true), ("f32, candle matmuls", false, false), ("f32, oneDNN (generation path)", false, true)] {
        if !mode.starts_with(only.as_str()) {
            continue;
        }
        emollama::accel::set_enabled(accel);
        let chat = ChatModel::load(&registry, "smollm2-135m-instruct", None, quantized)?;
        let ids = chat.prompt_ids(PROMPT, false)?;
        run(&chat, &ids, 4)?; // warm-up
        let mut runs: Vec<(f64, f64)> = (0..3).map(|_| run(&chat, &ids, new_tokens)).collect::<anyhow::Result<_>>()?;
        runs.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
        let (prefill, decode) = runs[1];
        println!(
            "{}",
            serde_json::json!({"engine": "emollama", "mode": mode, "threads": threads, "prompt_tokens": ids.len(),
                "new_tokens": new_tokens, "prefill_tok_s": ids.len() as f64 / prefill, "decode_tok_s": new_tokens as f64 / decode})
        );
    }
    Ok(())
}
