//! The seeded real-size manifests (`*-seeded`): the same model as their real twins but for the weights,
//! and the LLaMA vocabulary they tokenize with, checked against llama.cpp's own tokenizer tests.

mod common;

use emollama::model::llm_load::LlmSpec;
use emollama::registry::{Registry, Weights};

fn registry() -> Registry {
    Registry::load(&common::repo()).expect("registry")
}

/// A manifest as TOML without the keys allowed to differ.
fn without(path: &std::path::Path, keys: &[&str]) -> toml::Table {
    let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(path).expect("manifest")).expect("TOML");
    for k in keys {
        t.remove(*k);
    }
    t
}

#[test]
fn seeded_manifests_equal_their_real_twins_but_for_the_weights() {
    let reg = registry();
    let mut checked = 0;
    for (name, (path, m)) in &reg.encoders {
        let Some(twin) = name.strip_suffix("-seeded") else { continue };
        assert!(matches!(m.weights, Weights::Seeded { .. }), "{name}: weights must be seeded");
        let (twin_path, _) = reg.encoder(twin).unwrap_or_else(|e| panic!("{name} has no twin: {e}"));
        assert_eq!(without(path, &["name", "description", "weights"]), without(twin_path, &["name", "description", "weights"]), "{name} differs from {twin}");
        checked += 1;
    }
    for (name, (path, m)) in &reg.llms {
        let Some(stem) = name.strip_suffix("-seeded") else { continue };
        assert!(matches!(m.weights, Weights::Seeded { .. }), "{name}: weights must be seeded");
        let twin = format!("{stem}-chat");
        let (twin_path, _) = reg.llm(&twin).unwrap_or_else(|e| panic!("{name} has no twin: {e}"));
        let keys = ["name", "description", "weights", "tokenizer"];
        assert_eq!(without(path, &keys), without(twin_path, &keys), "{name} differs from {twin}");
        checked += 1;
    }
    assert_eq!(checked, 5, "four encoders and LLaMA-2-7B");
}

/// llama.cpp's tokenizer test set for this vocabulary (inputs separated by `__ggml_vocab_test__`, one
/// line of expected ids per input), tokenized without BOS as llama.cpp's test does.
#[test]
fn llama_vocabulary_tokenizes_as_llama_cpp() {
    let dir = emollama::model::hub::models_cache().join("llama-spm-vocab");
    let inp = dir.join("ggml-vocab-llama-spm.gguf.inp");
    assert!(inp.is_file(), "{} is missing: run `just fetch-models` (part of `bash tools/setup.sh`)", inp.display());
    let spec = LlmSpec::resolve(&registry(), "llama-2-7b-seeded").expect("manifest");
    let tok = spec.tokenizer().expect("tokenizer").expect("a file tokenizer");
    assert_eq!(tok.vocab_size(), 32000);
    let inputs = std::fs::read_to_string(&inp).expect("inputs");
    let outputs = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.out")).expect("outputs");
    let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<&str> = outputs.lines().collect();
    assert_eq!(inputs.len() - 1, outputs.len(), "one expected line per input (the file ends with a separator)");
    let mut failed = Vec::new();
    for (text, want) in inputs.iter().zip(&outputs) {
        let want: Vec<u32> = want.split_whitespace().map(|t| t.parse().expect("id")).collect();
        let got = tok.encode(text).expect("encode");
        if got != want {
            failed.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{} of {} differ:\n{}", failed.len(), outputs.len(), failed.join("\n"));
}

/// A seeded LLM builds like a pretrained one: its base frozen in the run dtype (made directly in bf16),
/// only the LoRA adapters in the run's parameters; the model runs.
#[test]
fn a_seeded_llm_is_frozen_in_the_run_dtype_with_trainable_adapters() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = registry();
    let (_, real) = reg.llm("llama-2-7b-seeded").expect("manifest");
    // The same manifest at a tiny width, in a registry of its own.
    let mut m = real.clone();
    m.name = "tiny-seeded".into();
    let cfg = m.config.as_mut().expect("config");
    (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) = (64, 128, 2, 4, Some(4));
    for sub in ["plugins/llms", "plugins/encoders", "datasets"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("dirs");
    }
    std::fs::write(dir.path().join("plugins/llms/tiny-seeded.toml"), toml::to_string(&m).expect("toml")).expect("write");
    let reg = Registry::load(dir.path()).expect("registry");
    let spec = LlmSpec::resolve(&reg, "tiny-seeded").expect("spec");
    assert!(spec.is_pretrained());
    assert_eq!(spec.describe(), "seeded random weights (seed 7, frozen)");
    let varmap = candle_nn::VarMap::new();
    let lora = spec.default_lora.clone();
    let (llm, _) = spec.build(lora.as_ref(), &varmap, 0, "llm.", false, DType::BF16, &Device::Cpu).expect("build");
    let names: Vec<String> = varmap.data().lock().expect("lock").keys().cloned().collect();
    assert_eq!(names.len(), 2 * 2 * 2, "q and v adapters, A and B, in 2 layers: {names:?}");
    assert!(names.iter().all(|n| n.contains(".lora_")));
    assert!(varmap.all_vars().iter().all(|v| v.dtype() == DType::F32), "adapters are f32 masters");
    let tok = spec.tokenizer().expect("tokenizer").expect("vocabulary");
    let ids = Tensor::new(tok.encode("Hello world").expect("encode").as_slice(), &Device::Cpu).expect("ids").unsqueeze(0).expect("batch");
    let embeds = llm.embed(&ids).expect("embed");
    assert_eq!(embeds.dtype(), DType::BF16);
    let valid = Tensor::ones(ids.dims(), DType::U8, &Device::Cpu).expect("valid");
    let logits = llm.forward_embeds(&embeds, &valid).expect("forward").to_dtype(DType::F32).expect("f32");
    assert_eq!(logits.dims(), &[1, 2, 32000]);
    assert!(logits.flatten_all().expect("flat").to_vec1::<f32>().expect("values").iter().all(|v| v.is_finite()));
}
