//! `just bench`: LoRA training steps of SmolLM2-135M-Instruct (the Q4_1 GGUF from `just fetch-models`,
//! dequantized to f32 and frozen; the manifest's adapter: r 16, α 32, dropout 0.05 on q_proj + v_proj), as
//! `recipes/quickstart_smollm2.toml` trains it: batch 8 of seeded random token ids, the causal-LM loss over
//! every position (HF's `labels = input_ids`), backward, AdamW with gradient clipping at 1. Median of 3
//! steps after a warm-up step, per sequence length. Prints one JSON line per length, and writes the
//! model's HF `config.json` to the directory given (for `tools/bench/lora_step_torch.py`, which runs
//! PyTorch + PEFT on the same shapes).
//!
//! Usage: RAYON_NUM_THREADS=2 cargo run --release --example bench_lora_step -- CONFIG_DIR [SEQ_LEN ...]
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use emollama::model::llm_load::LlmSpec;
use emollama::registry::Registry;
use emollama::train::optim::GroupedAdamW;

const BATCH: usize = 8;

fn main() -> anyhow::Result<()> {
    emollama::accel::init_process();
    let mut args = std::env::args().skip(1);
    let config_dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: bench_lora_step CONFIG_DIR [SEQ_LEN ...]"))?;
    let lengths: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let lengths = if lengths.is_empty() { vec![128, 192] } else { lengths };
    let registry = Registry::load(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let spec = LlmSpec::resolve(&registry, "smollm2-135m-instruct")?;
    let lora = spec.default_lora.clone().ok_or_else(|| anyhow::anyhow!("the SmolLM2 manifest has no [lora]"))?;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let (llm, _) = spec.build(Some(&lora), &varmap, 0, "", false, DType::F32, &dev)?;
    let dir = Path::new(&config_dir);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&serde_json::json!({
        "model": spec.config, "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout, "target_modules": lora.target_modules},
    }))?)?;
    let vars: Vec<(String, candle_core::Var)> = {
        let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut opt = GroupedAdamW::new(&vars, 1e-4, 0.0, &BTreeMap::new())?;
    let threads = candle_core::utils::get_num_threads();
    let vocab = spec.config.vocab_size as u32;
    for len in lengths {
        let ids: Vec<u32> = (0..BATCH * len).map(|i| ((i as u64 * 2_654_435_761) % vocab as u64) as u32).collect();
        let ids = Tensor::from_vec(ids, (BATCH, len), &dev)?;
        let valid = Tensor::ones((BATCH, len), DType::U8, &dev)?;
        let targets: Vec<u32> = ids.narrow(1, 1, len - 1)?.flatten_all()?.to_vec1()?;
        let weights = vec![1.0 / targets.len() as f32; targets.len()];
        let mut step = || -> anyhow::Result<f64> {
            let t = Instant::now();
            // The training loss's route (`EmotionModel::loss`): final hidden states, the rows with a target
            // (here every position but the last; position i predicts token i + 1, as HF shifts
            // `labels = input_ids`), the token-mean next-token loss.
            let hidden = llm.hidden_states(&llm.embed(&ids)?, &valid, true)?;
            let hidden = hidden.narrow(1, 0, len - 1)?.reshape((BATCH * (len - 1), ()))?;
            let loss = llm.weighted_nll(&hidden, &targets, &weights)?;
            let grads = llm.backward(&loss)?;
            opt.step(&grads, 1.0)?;
            Ok(t.elapsed().as_secs_f64())
        };
        step()?; // warm-up
        let mut times: Vec<f64> = (0..3).map(|_| step()).collect::<anyhow::Result<_>>()?;
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"engine": "emollama", "batch": BATCH, "seq_len": len, "threads": threads, "trainable": vars.iter().map(|(_, v)| v.elem_count()).sum::<usize>(), "step_s": times[1]})
        );
    }
    Ok(())
}
