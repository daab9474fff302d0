//! Stage options through the binary: a weighted dataset mixture with per-dataset tasks and
//! instructions, `epochs`, `init` from an earlier run's checkpoint (and a clear error for one of another
//! configuration), early stopping, and the run directory's records.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

mod common;

use common::repo;

fn write(dir: &Path, name: &str, stages: &str) -> PathBuf {
    let base = repo().join("recipes/base/tiny.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "{name}"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}

[data]
frames = {{ mode = "uniform", n = 2 }}

[data.synth]
seed = 3
train = 32
val = 6
test = 6

[eval]
max_new_tokens = 6
limit = 6

{stages}
"#,
        base = base.display().to_string(),
        runs = dir.join("runs").display().to_string(),
        cache = dir.join("cache").display().to_string(),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).expect("write recipe");
    p
}

fn run(recipe: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(["run", recipe.to_str().expect("utf8"), "--no-progress", "--fresh"]).output().expect("spawn")
}

fn newest_run(dir: &Path, name: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .expect("runs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-"))))
        .collect();
    v.sort();
    v.pop().expect("a run")
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).expect("metrics")).expect("json")
}

#[test]
fn mixture_epochs_init_and_early_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");

    // A mixture of two entries over the synthetic dataset (label words and reasoning, the latter with
    // its own instruction), sized by epochs: 32 samples x 2 tasks x 1 epoch / (batch 8 x accum 2) = 4.
    let mix = write(
        dir.path(),
        "mix",
        r#"[[stage]]
name = "mixed"
epochs = 1.0
batch_size = 8
grad_accum = 2
lr = 2e-3
warmup_steps = 1
log_every = 1

[[stage.data]]
dataset = "synth"
weight = 3.0
tasks = ["emotion"]

[[stage.data]]
dataset = "synth"
weight = 1.0
tasks = ["reason"]
instructions = { reason = ["Explain the emotion in the clip."] }
"#,
    );
    let out = run(&mix);
    assert!(out.status.success(), "mixture run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let first = newest_run(dir.path(), "mix");
    let m = metrics(&first);
    assert_eq!(m["stages"][0]["steps"], 4, "{m}");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(first.join("run_info.json")).expect("run_info")).expect("json");
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["dtype"], "f32");
    assert!(info["emollama_version"].is_string() && info["candle_version"].is_string());
    let tokenizer = std::fs::read_to_string(first.join("tokenizer.json")).expect("tokenizer");
    assert!(tokenizer.to_lowercase().contains("\"explain\""), "the mixture's own instruction is in the corpus");

    // init from that run's stage export: with a vanishing learning rate, one step leaves the weights as
    // loaded. (The same mixture, so the corpus-built tiny vocabulary is the same.)
    let export = first.join("checkpoints/01-mixed.safetensors");
    let init = write(
        dir.path(),
        "init",
        &format!(
            r#"[[stage]]
name = "again"
init = {export:?}
steps = 1
batch_size = 4
lr = 1e-20
min_lr = 1e-20
warmup_steps = 0
lr_schedule = "constant"
weight_decay = 0.0

[[stage.data]]
tasks = ["emotion"]

[[stage.data]]
tasks = ["reason"]
instructions = {{ reason = ["Explain the emotion in the clip."] }}
"#,
            export = export.display().to_string()
        ),
    );
    let out = run(&init);
    assert!(out.status.success(), "init run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let loaded = candle_core::safetensors::load(&export, &Device::Cpu).expect("export");
    let after = candle_core::safetensors::load(newest_run(dir.path(), "init").join("checkpoints/01-again.safetensors"), &Device::Cpu).expect("after");
    let mut compared = 0;
    for (k, v) in &loaded {
        let w: &Tensor = after.get(k).expect("same parameters");
        let d = (v - w).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("diff");
        assert!(d < 1e-6, "`{k}` was not loaded from the checkpoint (differs by {d})");
        compared += 1;
    }
    assert!(compared > 10);

    // init = "none": the second stage starts again from the initial values (compared with a run whose
    // only stage does not move them).
    let frozen = r#"steps = 1
batch_size = 4
lr = 1e-20
min_lr = 1e-20
warmup_steps = 0
lr_schedule = "constant"
weight_decay = 0.0
"#;
    let reset = write(dir.path(), "reset", &format!("[[stage]]\nname = \"learn\"\nsteps = 3\nbatch_size = 4\nlr = 1e-2\n\n[[stage]]\nname = \"again\"\ninit = \"none\"\n{frozen}"));
    let out = run(&reset);
    assert!(out.status.success(), "reset run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let untouched = write(dir.path(), "untouched", &format!("[[stage]]\nname = \"again\"\n{frozen}"));
    let out = run(&untouched);
    assert!(out.status.success(), "untouched run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let a = candle_core::safetensors::load(newest_run(dir.path(), "reset").join("checkpoints/02-again.safetensors"), &Device::Cpu).expect("reset export");
    let learned = candle_core::safetensors::load(newest_run(dir.path(), "reset").join("checkpoints/01-learn.safetensors"), &Device::Cpu).expect("learn export");
    let b = candle_core::safetensors::load(newest_run(dir.path(), "untouched").join("checkpoints/01-again.safetensors"), &Device::Cpu).expect("untouched export");
    let max_diff = |x: &Tensor, y: &Tensor| (x - y).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("diff");
    let mut moved = 0;
    for (k, v) in &a {
        assert!(max_diff(v, &b[k]) < 1e-6, "`{k}` was not reset to its initial value");
        moved += (max_diff(v, &learned[k]) > 1e-4) as usize;
    }
    assert!(moved > 0, "the first stage should have moved some parameters");

    // A checkpoint of another configuration is refused with the parameter named.
    let other = dir.path().join("other.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("llm.model.embed_tokens.weight".to_string(), Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).expect("t"))]), &other).expect("save");
    let bad = write(
        dir.path(),
        "bad",
        &format!("[[stage]]\nname = \"s\"\ninit = {:?}\nsteps = 1\nbatch_size = 4\n", other.display().to_string()),
    );
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("llm.model.embed_tokens.weight") && err.contains("shape"), "{err}");

    // Early stopping: validation every step; with no learning nothing improves after the first.
    let stop = write(
        dir.path(),
        "stop",
        r#"[validation]
enabled = true
every = 1
limit = 3
patience = 2

[[stage]]
name = "flat"
steps = 20
batch_size = 4
lr = 1e-20
min_lr = 1e-20
warmup_steps = 0
lr_schedule = "constant"
"#,
    );
    let out = run(&stop);
    assert!(out.status.success(), "early-stopping run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let m = metrics(&newest_run(dir.path(), "stop"));
    assert_eq!(m["stages"][0]["stopped_early"], true, "{m}");
    assert_eq!(m["stages"][0]["steps"], 3, "stopped after the best (step 1) and two evaluations without improvement: {m}");
    assert_eq!(m["best"]["step"], 1, "{m}");
}

/// A clip that cannot be decoded is found when first used: skipped and reported under
/// `on_error = "skip"` (training and evaluation go on), named in the error under `"fail"`.
#[test]
fn unreadable_clips_are_skipped_or_stop_the_run_by_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = "[[stage]]\nname = \"s\"\nepochs = 1.0\nbatch_size = 8\nlr = 1e-3\nwarmup_steps = 1\n";
    let recipe = write(dir.path(), "broken", stage);
    let out = run(&recipe);
    assert!(out.status.success(), "first run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // Damage one training clip and one test clip of the generated dataset (its manifest names them).
    let synth = std::fs::read_dir(dir.path().join("cache"))
        .expect("cache")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("synth-")))
        .expect("the generated dataset");
    let manifest: Vec<serde_json::Value> =
        std::fs::read_to_string(synth.join("manifest.jsonl")).expect("manifest").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let clip = |split: &str| synth.join(manifest.iter().find(|v| v["split"] == split).and_then(|v| v["file"].as_str()).expect("a clip"));
    let (train, test) = (clip("train"), clip("test"));
    for p in [&train, &test] {
        std::fs::write(p, b"not an mp4").expect("damage");
    }
    let out = run(&recipe);
    assert!(out.status.success(), "a skipped clip must not stop the run:\n{}", String::from_utf8_lossy(&out.stderr));
    let m = metrics(&newest_run(dir.path(), "broken"));
    let skipped: Vec<String> = m["skipped"].as_array().expect("skipped").iter().filter_map(|s| s["media"].as_str().map(String::from)).collect();
    for p in [&train, &test] {
        assert!(skipped.iter().any(|s| s == &p.display().to_string()), "{} not reported as skipped: {skipped:?}", p.display());
    }
    assert_eq!(m["eval"]["n"], 5, "the damaged test clip is not scored: {m}");

    let out = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["run", recipe.to_str().expect("utf8"), "--no-progress", "--fresh", "--set", "data.on_error=\"fail\""])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&train.display().to_string()) || err.contains(&test.display().to_string()), "{err}");
}

/// `runtime.activation_checkpointing` changes memory, not the run: the same losses and, after a few
/// optimiser steps with LoRA dropout on, the same parameters (the tiny LLM trains from scratch, so
/// every layer weight as well as the adapters gets its gradient through the recomputed layers).
#[test]
fn activation_checkpointing_trains_the_same_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = r#"[model.lora]
r = 4
lora_alpha = 8.0
lora_dropout = 0.1
target_modules = ["q_proj", "v_proj"]

[validation]
enabled = false

[[stage]]
name = "s"
steps = 4
batch_size = 4
grad_accum = 2
lr = 2e-3
warmup_steps = 1
log_every = 1
trainable = ["*"]
"#;
    let mut params = Vec::new();
    let mut losses = Vec::new();
    for (name, ck) in [("plain", false), ("ckpt", true)] {
        let recipe = write(dir.path(), name, stage);
        let out = Command::new(env!("CARGO_BIN_EXE_emollama"))
            .args(["run", recipe.to_str().expect("utf8"), "--no-progress", "--fresh", "--set", &format!("runtime.activation_checkpointing={ck}")])
            .output()
            .expect("spawn");
        assert!(out.status.success(), "{name} run failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let r = newest_run(dir.path(), name);
        let m = metrics(&r);
        losses.push((m["stages"][0]["first_loss"].as_f64().expect("loss"), m["stages"][0]["final_loss"].as_f64().expect("loss")));
        params.push(candle_core::safetensors::load(r.join("checkpoints/01-s.safetensors"), &Device::Cpu).expect("checkpoint"));
    }
    assert!((losses[0].0 - losses[1].0).abs() < 1e-6 && (losses[0].1 - losses[1].1).abs() < 1e-5, "losses {losses:?}");
    let (a, b) = (&params[0], &params[1]);
    assert_eq!(a.len(), b.len());
    assert!(a.keys().any(|k| k.contains("lora_A")) && a.keys().any(|k| k.contains("mlp.up_proj.weight")), "{:?}", a.keys());
    for (k, t) in a {
        let d = (t - &b[k]).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>()).expect("diff");
        assert!(d < 1e-5, "{k} differs by {d}");
    }
    let _: &Tensor = a.values().next().expect("a tensor");
}
