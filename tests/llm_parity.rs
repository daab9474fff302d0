//! Parity with transformers / peft on tiny random models written by `tools/fixtures/make_llm_fixtures.py`:
//! a LLaMA (tied embeddings, llama3 rope scaling, f32, 4 safetensors shards) and a Qwen2 (q/k/v bias,
//! bf16 weights). Logits of a right-padded batch, 32 greedy tokens of a left-padded batch, and a LoRA
//! adapter saved by peft: logits, loss and the gradients of every LoRA tensor.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarMap;
use emollama::model::generate::{GenerateOptions, generate_ids_batch};
use emollama::model::llama::Llama;
use emollama::model::lora::load_peft;
use emollama::model::weights::{PretrainedBackend, apply_adapter, open_hf_model};
use rand::SeedableRng;

type R = anyhow::Result<()>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn rows(t: &Tensor) -> anyhow::Result<Vec<Vec<u32>>> {
    Ok(t.to_dtype(DType::I64)?.to_vec2::<i64>()?.into_iter().map(|r| r.into_iter().map(|v| v as u32).collect()).collect())
}

fn load(name: &str, lora: Option<&emollama::model::lora::LoraConfig>) -> anyhow::Result<(Llama, VarMap)> {
    let (cfg, store) = open_hf_model(&fixture(name))?;
    let varmap = VarMap::new();
    let vb = PretrainedBackend::builder(Arc::new(store), "", &varmap, 0, DType::F32, &Device::Cpu);
    Ok((Llama::load(&cfg, lora, None, vb)?, varmap))
}

/// Logits of the real (unpadded) positions of each row.
fn check_logits(model: &Llama, ids: &Tensor, mask: &Tensor, want: &Tensor, what: &str) -> anyhow::Result<Tensor> {
    let ids = ids.to_dtype(DType::U32)?;
    let logits = model.forward_embeds(&model.embed(&ids)?, &mask.to_dtype(DType::U8)?)?;
    for (row, len) in mask.to_dtype(DType::I64)?.sum(1)?.to_vec1::<i64>()?.into_iter().enumerate() {
        let len = len as usize;
        let d = max_diff(&logits.i((row, ..len))?, &want.i((row, ..len))?)?;
        assert!(d < 1e-4, "{what}: row {row} logits differ from transformers by {d}");
    }
    Ok(logits)
}

fn parity(name: &str) -> R {
    let (model, _) = load(name, None)?;
    let r = candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)?;
    check_logits(&model, &r["input_ids"], &r["attention_mask"], &r["logits"], name)?;

    // Greedy generation, left-padded batch of two, 32 tokens, no EOS.
    let prompts: Vec<Vec<u32>> = rows(&r["gen_input_ids"])?
        .into_iter()
        .zip(rows(&r["gen_attention_mask"])?)
        .map(|(ids, m)| ids.into_iter().zip(m).filter(|(_, m)| *m == 1).map(|(i, _)| i).collect())
        .collect();
    let prompt_len = r["gen_input_ids"].dim(1)?;
    let new_tokens = r["gen_output"].dim(1)? - prompt_len;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let out = generate_ids_batch(&model, &prompts, 0, &[], &GenerateOptions::greedy(new_tokens), &mut rng)?;
    let want = rows(&r["gen_output"])?;
    for (row, got) in out.iter().enumerate() {
        assert_eq!(got.len(), new_tokens);
        assert_eq!(got.as_slice(), &want[row][prompt_len..], "{name}: greedy tokens of row {row} differ from transformers");
    }
    Ok(())
}

fn lora_parity(name: &str) -> R {
    let dir = fixture(name).join("adapter");
    let (cfg, tensors) = load_peft(&dir, "")?;
    let (model, varmap) = load(name, Some(&cfg))?;
    assert_eq!(apply_adapter(&varmap, &tensors, &dir)?, 8, "2 layers x (q, v) x (A, B)");
    let r = candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)?;
    let l = candle_core::safetensors::load(fixture(name).join("lora_reference.safetensors"), &Device::Cpu)?;
    let logits = check_logits(&model, &r["input_ids"], &r["attention_mask"], &l["logits"], "with the adapter")?;

    // HF causal-LM loss: position t predicts label t+1; -100 is ignored; mean over the rest.
    let (b, t, v) = logits.dims3()?;
    let labels = l["labels"].to_vec2::<i64>()?;
    let (mut pos, mut tgt) = (Vec::new(), Vec::new());
    for (row, lab) in labels.iter().enumerate() {
        for (k, &label) in lab.iter().enumerate().skip(1) {
            if label >= 0 {
                pos.push((row * t + k - 1) as u32);
                tgt.push(label as u32);
            }
        }
    }
    let picked = logits.reshape((b * t, v))?.index_select(&Tensor::new(pos.as_slice(), &Device::Cpu)?, 0)?;
    let loss = candle_nn::loss::cross_entropy(&picked, &Tensor::new(tgt.as_slice(), &Device::Cpu)?)?;
    let want = l["loss"].to_vec1::<f32>()?[0];
    let got = loss.to_scalar::<f32>()?;
    assert!((got - want).abs() < 1e-4, "loss {got} vs PyTorch {want}");

    let grads = loss.backward()?;
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let mut checked = 0;
    for (key, want) in l.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = key.trim_start_matches("grad.base_model.model.");
        let var = data.get(name).ok_or_else(|| anyhow::anyhow!("no variable {name}"))?;
        let g = grads.get(var.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
        let d = max_diff(g, want)?;
        assert!(d < 1e-4, "gradient of {name} differs from PyTorch by {d}");
        checked += 1;
    }
    assert_eq!(checked, 8);
    Ok(())
}

#[test]
fn llama_matches_transformers() -> R {
    parity("tiny-llama-hf")
}

/// Checkpoints saved by transformers 5.25 (`rope_parameters` instead of `rope_theta` / `rope_scaling`;
/// tools/fixtures/make_tf5_fixtures.py): logits and 24 greedy tokens for every rotary type. The default-rope
/// model has theta 250 000, which a loader falling back to 10 000 gets wrong.
#[test]
fn transformers_5_llama_default_rope_matches() -> R {
    parity("tf5-llama")
}

#[test]
fn transformers_5_llama_linear_rope_matches() -> R {
    parity("tf5-llama-linear")
}

#[test]
fn transformers_5_llama_dynamic_rope_matches() -> R {
    parity("tf5-llama-dynamic")
}

#[test]
fn transformers_5_llama_yarn_rope_matches() -> R {
    parity("tf5-llama-yarn")
}

#[test]
fn transformers_5_llama3_rope_matches() -> R {
    parity("tf5-llama3")
}

#[test]
fn transformers_5_qwen2_matches() -> R {
    parity("tf5-qwen2")
}

/// `emollama generate --raw --greedy` on the transformers-5 LLaMA prints the 24 tokens transformers
/// generates, and its first step's logits are within 1e-4.
#[test]
fn transformers_5_llama_generates_the_same_text_through_the_cli() -> R {
    let dir = fixture("tf5-llama");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json"))?)?;
    let prompt = reference["prompt"].as_str().expect("prompt");
    let tmp = tempfile::tempdir()?;
    let logits = tmp.path().join("logits.safetensors");
    let out = common::emollama(
        &["generate", "--llm", dir.to_str().expect("utf-8"), "--prompt", prompt, "--raw", "--greedy", "--max-new-tokens", "24", "--logits-out", logits.to_str().expect("utf-8")],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.trim_end_matches('\n'), reference["text"].as_str().expect("text"), "generated text differs from transformers 5");
    let want = candle_core::safetensors::load(dir.join("generate_logits.safetensors"), &Device::Cpu)?;
    let got = candle_core::safetensors::load(&logits, &Device::Cpu)?;
    let d = max_diff(&got["logits"], &want["logits"])?;
    assert!(d <= 1e-4, "first-step logits differ from transformers 5 by {d}");
    Ok(())
}

/// A config.json with an unknown rope type, or a key that changes results and that the model does not
/// implement, is refused with the key named (and nothing is generated).
#[test]
fn unsupported_config_keys_are_refused_by_name() -> R {
    let tmp = tempfile::tempdir()?;
    for (edit, key) in [
        (r#""rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0}"#, "rope_type"),
        (r#""rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rope_theta": 500000.0"#, "rope_theta"),
        (r#""rope_parameters": {"rope_type": "default", "rope_theta": 250000.0}, "mlp_bias": true"#, "mlp_bias"),
    ] {
        let dir = tmp.path().join(key);
        std::fs::create_dir_all(&dir)?;
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixture("tf5-llama").join(f), dir.join(f))?;
        }
        let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixture("tf5-llama").join("config.json"))?)?;
        cfg.remove("rope_parameters");
        let extra: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!("{{{edit}}}"))?;
        cfg.extend(extra);
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
        let out = common::emollama(&["generate", "--llm", dir.to_str().expect("utf-8"), "--prompt", "hi", "--raw", "--greedy", "--max-new-tokens", "2"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: accepted");
        assert!(err.contains(key) && err.contains("config.json"), "{key}: the error does not name the key and file:\n{err}");
    }
    Ok(())
}

#[test]
fn qwen2_matches_transformers() -> R {
    parity("tiny-qwen2-hf")
}

#[test]
fn llama_lora_matches_peft() -> R {
    lora_parity("tiny-llama-hf")
}

#[test]
fn qwen2_lora_matches_peft() -> R {
    lora_parity("tiny-qwen2-hf")
}

/// A config/weights mismatch, a missing shard, a corrupt file, an unknown architecture: errors that name
/// the file and the tensor, never a panic.
#[test]
fn bad_weights_are_named_errors() -> R {
    let tmp = tempfile::tempdir()?;
    let copy = |to: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(fixture("tiny-qwen2-hf"))? {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::copy(e.path(), to.join(e.file_name()))?;
            }
        }
        Ok(())
    };
    let build = |dir: &Path| -> anyhow::Result<Llama> {
        let (cfg, store) = open_hf_model(dir)?;
        let vm = VarMap::new();
        Ok(Llama::load(&cfg, None, None, PretrainedBackend::builder(Arc::new(store), "", &vm, 0, DType::F32, &Device::Cpu))?)
    };

    // Shape mismatch: the config claims a wider MLP than the weights have.
    let d = tmp.path().join("shape");
    copy(&d)?;
    let cfg = std::fs::read_to_string(d.join("config.json"))?.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(d.join("config.json"), cfg)?;
    let e = build(&d).map(|_| ()).expect_err("shape mismatch").to_string();
    assert!(e.contains("model.safetensors") && e.contains("mlp.gate_proj.weight") && e.contains("[128, 64]"), "{e}");

    // Corrupt weights file.
    let d = tmp.path().join("corrupt");
    copy(&d)?;
    std::fs::write(d.join("model.safetensors"), b"garbage, not safetensors")?;
    let e = build(&d).map(|_| ()).expect_err("corrupt").to_string();
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");

    // Missing weights.
    let d = tmp.path().join("missing");
    copy(&d)?;
    std::fs::remove_file(d.join("model.safetensors"))?;
    let e = build(&d).map(|_| ()).expect_err("missing").to_string();
    assert!(e.contains("missing") || e.contains("no `model.safetensors`"), "{e}");

    // A tensor missing from the file.
    let d = tmp.path().join("tensor");
    copy(&d)?;
    let mut ts: HashMap<String, Tensor> = candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu)?;
    ts.remove("model.layers.1.self_attn.k_proj.bias");
    candle_core::safetensors::save(&ts, d.join("model.safetensors"))?;
    let e = build(&d).map(|_| ()).expect_err("missing tensor").to_string();
    assert!(e.contains("model.layers.1.self_attn.k_proj.bias") && e.contains("missing"), "{e}");

    // Unknown architecture.
    let d = tmp.path().join("arch");
    copy(&d)?;
    let cfg = std::fs::read_to_string(d.join("config.json"))?.replace("\"model_type\": \"qwen2\"", "\"model_type\": \"gpt_neox\"");
    std::fs::write(d.join("config.json"), cfg)?;
    let e = build(&d).map(|_| ()).expect_err("arch").to_string();
    assert!(e.contains("config.json") && e.contains("gpt_neox"), "{e}");
    Ok(())
}

/// Merging the peft adapter into the base and exporting an HF directory gives a plain model with the
/// adapter model's logits (which match peft's, above).
#[test]
fn merged_export_reproduces_the_adapter_model() -> R {
    for name in ["tiny-llama-hf", "tiny-qwen2-hf"] {
        let dir = fixture(name).join("adapter");
        let (cfg, tensors) = load_peft(&dir, "")?;
        let (model, varmap) = load(name, Some(&cfg))?;
        apply_adapter(&varmap, &tensors, &dir)?;
        let out = tempfile::tempdir()?;
        model.export_merged(out.path())?;
        let (mcfg, store) = open_hf_model(out.path())?;
        let vm = VarMap::new();
        let merged = Llama::load(&mcfg, None, None, PretrainedBackend::builder(Arc::new(store), "", &vm, 0, DType::F32, &Device::Cpu))?;
        assert!(vm.all_vars().is_empty(), "a merged model has no adapter variables");
        let l = candle_core::safetensors::load(fixture(name).join("lora_reference.safetensors"), &Device::Cpu)?;
        let r = candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)?;
        check_logits(&merged, &r["input_ids"], &r["attention_mask"], &l["logits"], &format!("{name} merged"))?;
    }
    Ok(())
}

/// An HF directory's `tokenizer.json` (byte-level BPE) encodes as transformers does; LLaMA adds BOS.
#[test]
fn hf_tokenizer_json_matches_transformers() -> R {
    let registry = emollama::registry::Registry::load(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let dir = fixture("tiny-llama-hf");
    let spec = emollama::model::llm_load::LlmSpec::resolve(&registry, &dir.display().to_string())?;
    let tok = spec.tokenizer()?.ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_reference.json"))?)?;
    let ids: Vec<u32> = want["ids"].as_array().into_iter().flatten().filter_map(|v| v.as_u64().map(|u| u as u32)).collect();
    assert_eq!(tok.encode(want["text"].as_str().unwrap_or_default())?, ids);
    assert_eq!((tok.bos, tok.eos), (Some(1), 2));
    // The same directory through the chat path: LLaMA-2 template, BOS first, deterministic greedy output.
    let chat = emollama::model::chat::ChatModel::load(&registry, &dir.display().to_string(), None, false)?;
    let prompt = chat.prompt_ids("the person smiles", false)?;
    assert_eq!(prompt[0], 1);
    assert_eq!(chat.tokenizer.decode(&prompt[1..])?, "[INST] the person smiles [/INST]");
    let opts = GenerateOptions::greedy(6);
    assert_eq!(chat.generate(std::slice::from_ref(&prompt), &opts, 0)?, chat.generate(&[prompt], &opts, 9)?);
    Ok(())
}
