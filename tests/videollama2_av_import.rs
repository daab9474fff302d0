//! `emollama import videollama2-av` on a tiny snapshot in the published VideoLLaMA2.1-7B-AV layout
//! (`tools/fixtures/make_videollama2_av_fixtures.py`: the reference's STC connector, `mlp2x_gelu` audio
//! projector and BEATs, a Qwen2 and a SigLIP tower, bf16 safetensors shards plus the trainer's
//! `audio_tower.bin` / `mm_projector_a.bin`): the imported parameters reproduce the reference modules'
//! outputs, the `.bin` files stand in for what the shards lack, the config is checked against the recipe,
//! only the needed files are fetched from the Hub, the written recipe starts training from the import,
//! and the repository's LLM (`model_type = "videollama2_qwen2"`) loads and matches transformers.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use common::{load_tensors, max_diff, repo};
use emollama::model::encoders::beats::{Beats, BeatsConfig};
use emollama::model::projector::{Projector, ProjectorKind};
use emollama::model::stc::{StcConfig, StcConnectorV35};

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/videollama2_av")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn emollama(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emollama"));
    c.args(args).current_dir(cwd).env("XDG_CACHE_HOME", cwd.join("cache")).env("NO_COLOR", "1").env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn emollama")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The tiny VideoLLaMA2-AV recipe (SigLIP width 32, BEATs width 32, Qwen2 width 128: the fixture's sizes)
/// with a small synthetic dataset and one stage at a learning rate too small to move an f32 weight.
fn recipe(dir: &Path) -> PathBuf {
    let path = dir.join("av.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "av"

[runtime]
runs_dir = {runs:?}
threads = 2

[data.synth]
seed = 8
train = 8
val = 4
test = 4

[validation]
enabled = false

[[stage]]
name = "from-av"
tasks = ["emotion"]
steps = 1
batch_size = 2
lr = 1e-30
min_lr = 1e-30
warmup_steps = 0
weight_decay = 0.0
grad_clip = 0.0
trainable = ["llm.*", "projector.*", "encoder.audio.*"]
"#,
        base = s(&repo().join("recipes/quickstart_videollama2_av_tiny.toml")),
        runs = s(&dir.join("runs")),
    );
    std::fs::write(&path, body).expect("recipe");
    path
}

fn import(cwd: &Path, source: &str, recipe: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    emollama(cwd, &["import", "videollama2-av", source, "--recipe", s(recipe), "--out", s(out), "--no-progress"], env)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("json")
}

fn beats_config() -> BeatsConfig {
    let text = std::fs::read_to_string(repo().join("plugins/encoders/beats-tiny-2s.toml")).expect("manifest");
    let manifest: toml::Table = toml::from_str(&text).expect("toml");
    manifest["config"].clone().try_into().expect("BEATs config")
}

/// The imported parameters under `prefix`, re-rooted for a module's own `VarBuilder`.
fn part(params: &HashMap<String, Tensor>, prefix: &str) -> VarBuilder<'static> {
    let tensors: HashMap<String, Tensor> = params.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|r| (r.to_string(), v.clone()))).collect();
    VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
}

/// The imported parameters run through this model's modules give the reference modules' outputs.
fn assert_reproduces_the_reference(out: &Path) {
    let params = load_tensors(&out.join("params.safetensors"));
    assert!(params.values().all(|t| t.dtype() == DType::F32));
    let r = load_tensors(&fixture().join("reference.safetensors"));
    let stc = StcConnectorV35::new(&StcConfig::new(32, 128), part(&params, "projector.video.")).expect("connector from the import");
    let d = max_diff(&stc.forward(&r["stc.x"]).expect("stc"), &r["stc.y"]);
    assert!(d <= 1e-4, "STC connector differs from VideoLLaMA2's by {d}");
    let mlp = Projector::new(ProjectorKind::Mlp, 32, 128, part(&params, "projector.audio.")).expect("mlp from the import");
    let d = max_diff(&mlp.forward(&r["mlp.x"]).expect("mlp"), &r["mlp.y"]);
    assert!(d <= 1e-4, "audio projector differs from mlp2x_gelu by {d}");
    let beats = Beats::new(&beats_config(), part(&params, "encoder.audio.")).expect("BEATs from the import");
    let d = max_diff(&beats.forward(&r["beats.fbank"]).expect("beats"), &r["beats.y"]);
    assert!(d <= 1e-4, "BEATs differs from VideoLLaMA2's by {d}");
}

#[test]
fn import_reproduces_the_reference_modules_and_the_written_recipe_starts_from_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path());
    let out = tmp.path().join("vl2av");
    let o = import(tmp.path(), s(&fixture()), &recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_reproduces_the_reference(&out);

    let report = json(&out.join("import.json"));
    assert_eq!(report["format"], "videollama2-av");
    // 113 connector + 4 audio projector + 47 BEATs tensors; 64 SigLIP, 2 AudioSet head, 1 repeated bias skipped.
    assert_eq!(report["tensors"]["imported"], 164, "{report}");
    assert_eq!(report["tensors"]["skipped"], 67, "{report}");
    assert_eq!(report["tensors"]["llm_in_shards"], 12 + 3, "{report}");
    let parts = report["parts"].as_array().expect("parts");
    assert!(parts.iter().all(|p| p["from"].as_str().is_some_and(|f| f.ends_with("model-00002-of-00002.safetensors"))), "the shards hold every part: {report}");
    let files: Vec<&str> = report["files"].as_array().expect("files").iter().filter_map(|f| f["file"].as_str()).collect();
    assert!(files.iter().all(|f| !f.ends_with("00001-of-00002.safetensors") && !f.ends_with(".bin")), "only what is imported is read: {files:?}");
    assert!(report["mapping"].as_array().expect("mapping").iter().all(|m| m["source_dtype"] == "BF16"));

    let written = emollama::recipe::load_recipe(&out.join("recipe.toml"), &[]).expect("written recipe loads");
    assert_eq!(Path::new(&written.recipe.stages[0].init), std::fs::canonicalize(&out).expect("canonical"));
    assert_eq!(written.recipe.name, "av-from-videollama2-av");

    // The written recipe's stage starts from the imported connector, audio projector and BEATs.
    let o = emollama(tmp.path(), &["run", s(&out.join("recipe.toml")), "--no-progress", "--set", "eval.enabled=false"], &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("init from checkpoint") && err.contains("params=164"), "{err}");
    let runs: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("runs")).expect("runs").flatten().map(|e| e.path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let exported = load_tensors(&runs[0].join("checkpoints/01-from-av.safetensors"));
    for (name, t) in load_tensors(&out.join("params.safetensors")) {
        assert_eq!(max_diff(&exported[&name], &t), 0.0, "{name}: the stage did not start from the import");
    }
}

/// A copy of the fixture snapshot in `dir` whose index lists only the names `keep` accepts (the shards'
/// other tensors are then not in the repository, as far as a reader of the index knows).
fn snapshot_without(dir: &Path, keep: impl Fn(&str) -> bool, bins: bool) -> PathBuf {
    let snap = dir.join("snapshot");
    std::fs::create_dir_all(&snap).expect("mkdir");
    for e in std::fs::read_dir(fixture()).expect("fixture").flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".bin") && !bins {
            continue;
        }
        std::fs::copy(e.path(), snap.join(&name)).expect("copy");
    }
    let index = snap.join("model.safetensors.index.json");
    let mut v = json(&index);
    v["weight_map"].as_object_mut().expect("weight_map").retain(|k, _| keep(k));
    std::fs::write(&index, serde_json::to_vec(&v).expect("json")).expect("write index");
    snap
}

#[test]
fn the_bin_files_stand_in_for_audio_parts_the_shards_lack_and_nothing_missing_goes_unnoticed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path());
    let audio = |k: &str| k.starts_with("model.audio_tower.") || k.starts_with("model.mm_projector_a.");
    let snap = snapshot_without(tmp.path(), |k| !audio(k), true);
    let out = tmp.path().join("from-bins");
    let o = import(tmp.path(), s(&snap), &recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_reproduces_the_reference(&out);
    let report = json(&out.join("import.json"));
    let from = |prefix: &str| report["parts"].as_array().expect("parts").iter().find(|p| p["prefix"] == prefix).and_then(|p| p["from"].as_str()).unwrap_or("").to_string();
    assert!(from("projector.audio.").ends_with("mm_projector_a.bin"), "{report}");
    assert!(from("encoder.audio.").ends_with("audio_tower.bin"), "{report}");
    assert!(from("projector.video.").ends_with(".safetensors"), "{report}");

    // Neither the shards nor a .bin hold the audio tower: every missing parameter is named, nothing is written.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let snap = snapshot_without(tmp2.path(), |k| !audio(k), false);
    let out = tmp2.path().join("none");
    let o = import(tmp2.path(), s(&snap), &recipe, &out, &[]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("missing") && err.contains("51 parameter(s)") && err.contains("encoder.audio.patch_embedding.weight") && err.contains("audio_tower.bin"), "{err}");
    assert!(!out.exists(), "nothing written on an error");
}

#[test]
fn a_config_that_does_not_describe_the_recipe_is_refused_by_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path());
    let snap = snapshot_without(tmp.path(), |_| true, true);
    let config = snap.join("config.json");
    let mut v = json(&config);
    v["num_frames"] = 8.into();
    v["mm_hidden_size_a"] = 768.into();
    std::fs::write(&config, serde_json::to_vec(&v).expect("json")).expect("write");
    let o = import(tmp.path(), s(&snap), &recipe, &tmp.path().join("x"), &[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("`num_frames` = 8, the recipe's frames per clip ([data] frames) is 16"), "{err}");
    assert!(err.contains("`mm_hidden_size_a` = 768, the recipe's audio encoder width is 32"), "{err}");

    v["model_type"] = "qwen2".into();
    std::fs::write(&config, serde_json::to_vec(&v).expect("json")).expect("write");
    let o = import(tmp.path(), s(&snap), &recipe, &tmp.path().join("y"), &[]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("expected `videollama2_qwen2`"), "{err}");

    // A recipe of the other family is not a target.
    let o = import(tmp.path(), s(&fixture()), &repo().join("recipes/quickstart_emotion_llama_tiny.toml"), &tmp.path().join("z"), &[]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("not of the VideoLLaMA2-AV family"), "{err}");
    let o = import(tmp.path(), "no/such/dir", &recipe, &tmp.path().join("w"), &[]);
    assert!(!o.status.success() && stderr(&o).contains("is not a directory"), "{}", stderr(&o));
}

#[test]
fn from_the_hub_only_the_files_needed_are_fetched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let endpoint = common::hub::serve(fixture(), log.clone()).expect("server");
    let cache = tmp.path().join("hf");
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HUB_CACHE", s(&cache))];
    let out = tmp.path().join("hub");
    let o = import(tmp.path(), "hf:org/tiny", &recipe, &out, &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_reproduces_the_reference(&out);
    let requests = log.lock().expect("log").clone();
    for f in ["config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors"] {
        assert!(requests.iter().any(|r| r.contains(f)), "{f} not fetched: {requests:?}");
    }
    for f in ["model-00001-of-00002.safetensors", "audio_tower.bin", "mm_projector_a.bin"] {
        assert!(!requests.iter().any(|r| r.contains(f)), "{f} is not needed but was fetched: {requests:?}");
    }
    let o = import(tmp.path(), "hf:org", &recipe, &tmp.path().join("bad"), &env);
    assert!(!o.status.success() && stderr(&o).contains("hf:ORG/NAME"), "{}", stderr(&o));
}

/// The AV repository's own LLM: config `model_type = "videollama2_qwen2"` with VideoLLaMA2's keys, shards
/// that also hold the other modules; the LLM's tensors alone are read, and its logits are transformers'.
#[test]
fn the_repository_llm_loads_as_qwen2_and_matches_transformers() -> anyhow::Result<()> {
    use std::sync::Arc;
    let (cfg, store) = emollama::model::weights::open_hf_model(&fixture())?;
    assert_eq!(cfg.model_type, "qwen2");
    assert!(cfg.qkv_bias());
    let vm = candle_nn::VarMap::new();
    let vb = emollama::model::weights::PretrainedBackend::builder(Arc::new(store), "", &vm, 0, DType::F32, &Device::Cpu);
    let model = emollama::model::llama::Llama::load(&cfg, None, None, vb)?;
    let r = load_tensors(&fixture().join("reference.safetensors"));
    let ids = r["llm.input_ids"].to_dtype(DType::U32)?;
    let logits = model.forward_embeds(&model.embed(&ids)?, &Tensor::ones(ids.dims(), DType::U8, &Device::Cpu)?)?;
    let d = max_diff(&logits, &r["llm.logits"]);
    assert!(d < 1e-4, "logits differ from transformers by {d}");
    Ok(())
}
