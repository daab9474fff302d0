//! End to end through the binary on a small synthetic dataset: generate → decode → two stages → evaluate,
//! and every artefact of the run directory. (The full quick start is measured in the README; this keeps
//! the suite fast while exercising the same code path.)

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::repo;

fn write_recipe(dir: &Path) -> PathBuf {
    let base = repo().join("recipes/base/tiny.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "mini"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}

[data.synth]
seed = 7
train = 96
val = 6
test = 24

[[stage]]
name = "coarse"
tasks = ["emotion", "description"]
steps = 30
batch_size = 8
lr = 2e-3
warmup_steps = 5
log_every = 5

[model.lora]
r = 4
lora_alpha = 8.0
target_modules = ["q_proj", "v_proj"]

[[stage]]
name = "fine"
tasks = ["reason"]
steps = 15
batch_size = 8
lr = 5e-4
warmup_steps = 2
trainable = ["llm.*.lora_*", "projector.*"]

[eval]
max_new_tokens = 30
"#,
        base = base.display().to_string(),
        runs = dir.join("runs").display().to_string(),
        cache = dir.join("cache").display().to_string(),
    );
    let p = dir.join("mini.toml");
    std::fs::write(&p, body).expect("write recipe");
    p
}

fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("runs")).expect("runs dir").filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    v
}

#[test]
fn two_stage_run_writes_every_artefact_and_the_ablation_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = write_recipe(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_emollama")).args(["run", recipe.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("weighted F1") && stdout.contains("confusion matrix"), "summary table:\n{stdout}");

    let runs = run_dirs(dir.path());
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert!(run.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("mini-")));
    for f in ["recipe.resolved.toml", "run_info.json", "tokenizer.json", "log.jsonl", "metrics.json", "predictions.jsonl", "report.html", "report/loss.png", "report/lr.png"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // The resolved recipe loads again and equals what ran.
    let resolved = std::fs::read_to_string(run.join("recipe.resolved.toml")).expect("read");
    assert!(resolved.contains("name = \"mini\"") && resolved.contains("llm = \"tiny-llama\""));

    // log.jsonl: step, stage, loss, lr, and the loss went down in stage 1.
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("log.jsonl")).expect("log").lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert!(log.iter().all(|l| l["stage"].is_string() && l["step"].is_u64() && l["loss"].is_f64() && l["lr"].is_f64()));
    let coarse: Vec<f64> = log.iter().filter(|l| l["stage"] == "coarse").filter_map(|l| l["loss"].as_f64()).collect();
    assert!(coarse.len() >= 6, "{coarse:?}");
    assert!(coarse[coarse.len() - 1] < coarse[0] * 0.5, "stage-1 loss did not fall: {coarse:?}");

    // metrics.json: scores in range, confusion matrix consistent with n, per-stage reports.
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).expect("metrics")).expect("json");
    let e = &m["eval"];
    let n = e["n"].as_u64().expect("n");
    assert_eq!(n, 24);
    for k in ["weighted_f1", "accuracy", "macro_f1"] {
        let v = e[k].as_f64().expect(k);
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    let cm_total: u64 = e["confusion_matrix"].as_array().expect("cm").iter().flat_map(|r| r.as_array().expect("row").iter().filter_map(|v| v.as_u64())).sum();
    assert_eq!(cm_total, n);
    assert_eq!(m["stages"].as_array().map(|s| s.len()), Some(2));

    // predictions.jsonl: one line per test sample with id, label, prediction, text.
    let preds: Vec<serde_json::Value> = std::fs::read_to_string(run.join("predictions.jsonl"))
        .expect("preds")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(preds.len() as u64, n);
    assert!(preds.iter().all(|p| p["id"].is_string() && p["label"].is_string() && p["prediction"].is_string() && p["text"].is_string()));
    let correct = preds.iter().filter(|p| p["label"] == p["prediction"]).count() as f64;
    assert!((correct / n as f64 - e["accuracy"].as_f64().expect("acc")).abs() < 1e-9);

    // Checkpoints hold exactly the parameters each stage trained.
    let dev = candle_core::Device::Cpu;
    let coarse_ckpt = candle_core::safetensors::load(run.join("checkpoints/01-coarse.safetensors"), &dev).expect("load coarse");
    assert!(coarse_ckpt.keys().any(|k| k.starts_with("encoder.video.")) && coarse_ckpt.keys().any(|k| k.starts_with("llm.")));
    let fine_ckpt = candle_core::safetensors::load(run.join("checkpoints/02-fine.safetensors"), &dev).expect("load fine");
    assert!(!fine_ckpt.is_empty());
    assert!(fine_ckpt.keys().all(|k| k.contains(".lora_") || k.starts_with("projector.")), "{:?}", fine_ckpt.keys().collect::<Vec<_>>());
    // The LoRA adapter is also written in PEFT layout.
    let adapter = candle_core::safetensors::load(run.join("adapter/adapter_model.safetensors"), &dev).expect("adapter");
    assert_eq!(adapter.len(), 2 * 2 * 2, "2 layers x q,v x A,B");
    assert!(adapter.keys().all(|k| k.starts_with("base_model.model.model.layers.")));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("adapter/adapter_config.json")).expect("cfg")).expect("json");
    assert_eq!(cfg["r"], 4);

    // The text-only ablation runs through the same path (reusing the cached dataset).
    let out = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["run", recipe.to_str().expect("utf8"), "--no-progress", "--set", "model.use_av=false", "--set", "name=\"mini-textonly\""])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "ablation failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let runs = run_dirs(dir.path());
    let ablation = runs.iter().find(|r| r.to_string_lossy().contains("mini-textonly")).expect("ablation run dir");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ablation.join("metrics.json")).expect("metrics")).expect("json");
    assert_eq!(m["use_av"], false);
}

/// Emotion-LLaMA's four encoders (tiny random-weight EVA / MAE / VideoMAE / HuBERT) and token layout
/// train end to end from the raw video: the projectors and LLM learn, the encoders stay frozen.
#[test]
fn emotion_llama_tiny_layout_trains_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = repo().join("recipes/quickstart_emotion_llama_tiny.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "el-mini"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}

[data.synth]
seed = 7
train = 64
val = 4
test = 8

[[stage]]
name = "coarse"
tasks = ["emotion"]
steps = 25
batch_size = 8
lr = 2e-3
warmup_steps = 3
log_every = 5
trainable = ["llm.*", "projector.*"]

[eval]
max_new_tokens = 8
"#,
        base = base.display().to_string(),
        runs = dir.path().join("runs").display().to_string(),
        cache = dir.path().join("cache").display().to_string(),
    );
    let recipe = dir.path().join("el.toml");
    std::fs::write(&recipe, body).expect("write recipe");
    let out = Command::new(env!("CARGO_BIN_EXE_emollama")).args(["run", recipe.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    assert!(out.status.success(), "run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = run_dirs(dir.path()).pop().expect("a run");
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("log.jsonl")).expect("log").lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let losses: Vec<f64> = log.iter().filter_map(|l| l["loss"].as_f64()).collect();
    assert!(losses.len() >= 4 && losses[losses.len() - 1] < losses[0], "loss did not fall: {losses:?}");
    let ckpt = candle_core::safetensors::load(run.join("checkpoints/01-coarse.safetensors"), &candle_core::Device::Cpu).expect("checkpoint");
    for p in ["llama_proj", "cls_tk_llama_proj", "feats_llama_proj1", "feats_llama_proj2", "feats_llama_proj3"] {
        assert!(ckpt.keys().any(|k| k.starts_with(&format!("projector.{p}."))), "projector.{p} not trained: {:?}", ckpt.keys().collect::<Vec<_>>());
    }
    // EVA patch tokens merged by four: 4 * 32 -> the LLM width.
    let w = ckpt.iter().find(|(k, _)| k.starts_with("projector.llama_proj.") && k.ends_with("weight")).map(|(_, t)| t.dims().to_vec());
    assert_eq!(w, Some(vec![128, 128]));
    assert!(!ckpt.keys().any(|k| k.starts_with("encoder.")), "frozen encoders must not be in the trained set");
}
