//! `emollama extract` on preprocessed tensors reproduces the reference implementations' hidden states
//! through the whole loading path: an HF model directory (`--encoder DIR`), a checkpoint saved by a
//! wrapper model (`vit.` prefix plus decoder tensors, re-rooted at load), and a LAVIS-style PyTorch `.pth`
//! behind a manifest. Fixtures: tests/fixtures/encoders/ (tools/fixtures/make_*_fixtures.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use candle_core::{Device, Tensor};
use common::{encoder_fixture as fixture, load_tensors as load, max_diff};



fn extract(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_emollama")).arg("extract").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run emollama");
    assert!(out.status.success(), "emollama extract {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}


/// The three hidden states of `got` within 1e-4 of the reference's (`prefix.N`: `hidden_state` for HuBERT's
/// fixtures, `hidden_states` for the others).
fn assert_hidden_states(got: &HashMap<String, Tensor>, reference: &HashMap<String, Tensor>, prefix: &str) {
    for i in 0..3 {
        let d = max_diff(&got[&format!("hidden_states.{i}")], &reference[&format!("{prefix}.{i}")]);
        assert!(d <= 1e-4, "hidden state {i}: {d}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[test]
fn hubert_hf_directory_matches_transformers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = load(&fixture("hubert-layer/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["input_values"].save_safetensors("input_values", &input).expect("save");
    let out = dir.path().join("out.safetensors");
    extract(&["--encoder", s(&fixture("hubert-layer")), "--input", s(&input), "--out", s(&out), "--pooling", "none"]);
    let got = load(&out);
    assert_hidden_states(&got, &reference, "hidden_state");
    // The pooled feature: the last layer averaged over time.
    let pooled = dir.path().join("pooled.safetensors");
    extract(&["--encoder", s(&fixture("hubert-layer")), "--input", s(&input), "--out", s(&pooled), "--pooling", "mean", "--layers=-1"]);
    let want = reference["hidden_state.2"].mean(1).expect("mean");
    let d = max_diff(&load(&pooled)["features"], &want);
    assert!(d <= 1e-4, "pooled: {d}");
}

#[test]
fn vit_mae_checkpoint_of_a_wrapper_model_is_rerooted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ViTMAEForPreTraining saves the encoder under `vit.` next to its decoder.
    let mut tensors: HashMap<String, Tensor> = load(&fixture("vit_mae/model.safetensors")).into_iter().map(|(k, v)| (format!("vit.{k}"), v)).collect();
    tensors.insert("decoder.decoder_pred.weight".into(), Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).expect("zeros"));
    let model = dir.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    candle_core::safetensors::save(&tensors, model.join("model.safetensors")).expect("save");
    std::fs::copy(fixture("vit_mae/config.json"), model.join("config.json")).expect("config");
    let reference = load(&fixture("vit_mae/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["pixel_values"].save_safetensors("pixel_values", &input).expect("save");
    let out = dir.path().join("out.safetensors");
    extract(&["--encoder", s(&model), "--input", s(&input), "--out", s(&out), "--pooling", "none"]);
    let got = load(&out);
    assert_hidden_states(&got, &reference, "hidden_states");
    // CLS pooling of the final output (after the final layernorm).
    let cls = dir.path().join("cls.safetensors");
    extract(&["--encoder", s(&model), "--input", s(&input), "--out", s(&cls), "--pooling", "cls"]);
    let want = reference["last_hidden_state"].narrow(1, 0, 1).and_then(|t| t.squeeze(1)).expect("cls");
    assert!(max_diff(&load(&cls)["features"], &want) <= 1e-4);
}

fn eva_manifest(dir: &Path, name: &str, weights: &Path) -> PathBuf {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("eva_vit/config.json")).expect("config")).expect("json");
    let mut config = String::new();
    for k in ["img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_hidden", "checkpoint_grid"] {
        config.push_str(&format!("{k} = {}\n", cfg[k]));
    }
    let manifest = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\narchitecture = \"eva_vit\"\nmodality = \"video\"\n\n[config]\n{config}layer_norm_eps = 1e-6\n\n[weights]\nsource = \"path\"\npath = {:?}\n\n[features]\npooling = \"merge4\"\n",
        s(weights)
    );
    std::fs::write(&manifest, text).expect("manifest");
    manifest
}

/// A bare LAVIS ViT `.pth` (no `ln_vision`, which is then the identity): every hidden state, and the merge
/// of the last one.
#[test]
fn eva_lavis_pth_matches_the_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = eva_manifest(dir.path(), "eva-pth", &fixture("eva_vit/model.pth"));
    let reference = load(&fixture("eva_vit/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["pixel_values"].save_safetensors("pixel_values", &input).expect("save");
    let all = dir.path().join("all.safetensors");
    extract(&["--encoder", s(&manifest), "--input", s(&input), "--out", s(&all), "--pooling", "none"]);
    let got = load(&all);
    assert_hidden_states(&got, &reference, "hidden_states");
    let out = dir.path().join("merged.safetensors");
    extract(&["--encoder", s(&manifest), "--input", s(&input), "--out", s(&out)]);
    let last = &reference["hidden_states.2"];
    let (b, t, d) = last.dims3().expect("dims");
    let want = last.narrow(1, 1, t - 1).and_then(|x| x.reshape((b, (t - 1) / 4, 4 * d))).expect("merge");
    assert!(max_diff(&load(&out)["patch_tokens"], &want) <= 1e-4);
}

/// A MiniGPT-v2-style checkpoint: the ViT under `visual_encoder.`, `ln_vision` beside it, other modules
/// dropped; the merged tokens and CLS token go through `ln_vision` as the reference's.
#[test]
fn eva_minigpt_checkpoint_applies_ln_vision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in load(&fixture("eva_vit/model.safetensors")) {
        let k = if k.starts_with("ln_vision.") { k } else { format!("visual_encoder.{k}") };
        tensors.insert(k, v);
    }
    tensors.insert("llama_proj.weight".into(), Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).expect("zeros"));
    let ckpt = dir.path().join("minigpt.safetensors");
    candle_core::safetensors::save(&tensors, &ckpt).expect("save");
    let manifest = eva_manifest(dir.path(), "eva-minigpt", &ckpt);
    let reference = load(&fixture("eva_vit/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["pixel_values"].save_safetensors("pixel_values", &input).expect("save");
    let out = dir.path().join("out.safetensors");
    extract(&["--encoder", s(&manifest), "--input", s(&input), "--out", s(&out)]);
    let got = load(&out);
    let dp = max_diff(&got["patch_tokens"], &reference["patch_tokens"]);
    let dc = max_diff(&got["cls"], &reference["cls"]);
    assert!(dp <= 1e-4 && dc <= 1e-4, "patch tokens {dp}, cls {dc}");
}

/// An HF-style directory whose weights are `pytorch_model.bin` (a PyTorch zip pickle, as
/// TencentGameMate/chinese-hubert-large ships): the manifest points at the directory, the directory's
/// config.json supplies the configuration.
#[test]
fn pytorch_model_bin_directory_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("eva-bin");
    std::fs::create_dir(&model).expect("mkdir");
    std::fs::copy(fixture("eva_vit/model.pth"), model.join("pytorch_model.bin")).expect("bin");
    std::fs::copy(fixture("eva_vit/config.json"), model.join("config.json")).expect("config");
    let manifest = dir.path().join("eva-bin.toml");
    std::fs::write(&manifest, format!("name = \"eva-bin\"\narchitecture = \"eva_vit\"\nmodality = \"video\"\n\n[config]\n\n[weights]\nsource = \"path\"\npath = {:?}\n\n[features]\npooling = \"none\"\n", s(&model))).expect("manifest");
    let reference = load(&fixture("eva_vit/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["pixel_values"].save_safetensors("pixel_values", &input).expect("save");
    let out = dir.path().join("out.safetensors");
    extract(&["--encoder", s(&manifest), "--input", s(&input), "--out", s(&out)]);
    let d = max_diff(&load(&out)["hidden_states.2"], &reference["hidden_states.2"]);
    assert!(d <= 1e-4, "{d}");
}

/// A VideoMAE saved by transformers 5.25 (`qv_bias` for 4.x's `qkv_bias`, `dtype` for `torch_dtype`;
/// tools/fixtures/make_tf5_fixtures.py, with non-zero q/v biases): every hidden state within 1e-4 through
/// `emollama extract --encoder DIR`.
#[test]
fn videomae_saved_by_transformers_5_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = load(&fixture("videomae-tf5/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["pixel_values"].save_safetensors("pixel_values", &input).expect("save");
    let out = dir.path().join("out.safetensors");
    extract(&["--encoder", s(&fixture("videomae-tf5")), "--input", s(&input), "--out", s(&out), "--pooling", "none"]);
    let got = load(&out);
    assert_hidden_states(&got, &reference, "hidden_states");
}

/// An encoder `config.json` with a setting the model does not implement is refused by name.
#[test]
fn unsupported_encoder_config_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("hubert");
    std::fs::create_dir(&model).expect("mkdir");
    std::fs::copy(fixture("hubert-layer/model.safetensors"), model.join("model.safetensors")).expect("copy");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("hubert-layer/config.json")).expect("config")).expect("json");
    cfg["conv_pos_batch_norm"] = serde_json::Value::Bool(true);
    std::fs::write(model.join("config.json"), cfg.to_string()).expect("write");
    let reference = load(&fixture("hubert-layer/reference.safetensors"));
    let input = dir.path().join("in.safetensors");
    reference["input_values"].save_safetensors("input_values", &input).expect("save");
    let out = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["extract", "--encoder", s(&model), "--input", s(&input), "--out", s(&dir.path().join("o.safetensors"))])
        .output()
        .expect("run emollama");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("conv_pos_batch_norm") && err.contains("config.json"), "{err}");
}

/// Every key of every committed `config.json` (transformers 4.46 and 5.25) is read, ignored with a reason
/// or checked: none is reported unknown, so the warning is kept for keys a newer transformers adds.
#[test]
fn fixture_configs_have_no_unknown_keys() {
    use emollama::model::encoders::{hubert, videomae, vit_mae};
    use emollama::model::hf_config::{struct_keys, warn_unknown};
    use emollama::model::llm_config::{HF_IGNORED, LlamaConfig};
    let read = |p: &Path| -> serde_json::Map<String, serde_json::Value> { serde_json::from_str(&std::fs::read_to_string(p).expect("config")).expect("json object") };
    for (dir, arch) in [("hubert-layer", "hubert"), ("hubert-group", "hubert"), ("vit_mae", "vit_mae"), ("videomae/mean_pooling", "videomae"), ("videomae/final_layernorm", "videomae"), ("videomae-tf5", "videomae")] {
        let p = fixture(dir).join("config.json");
        let mut obj = read(&p);
        let unknown = match arch {
            "hubert" => hubert::check_hf_keys(&p, &obj),
            "vit_mae" => vit_mae::check_hf_keys(&p, &obj),
            _ => videomae::check_hf_keys(&p, &mut obj),
        }
        .expect("accepted");
        assert!(unknown.is_empty(), "{dir}: unknown keys {unknown:?}");
    }
    let llm = common::repo().join("tests/fixtures/llm");
    for dir in ["tiny-llama-hf", "tiny-qwen2-hf", "tf5-llama", "tf5-llama-linear", "tf5-llama-dynamic", "tf5-llama-yarn", "tf5-llama3", "tf5-qwen2"] {
        let p = llm.join(dir).join("config.json");
        let unknown = warn_unknown(&p, &read(&p), &struct_keys(&LlamaConfig::default()), HF_IGNORED);
        assert!(unknown.is_empty(), "{dir}: unknown keys {unknown:?}");
    }
}
