//! `emollama run --dry-run`: the plan of the full-size Emotion-LLaMA recipe on a machine with none of its
//! weights or data (exact parameter counts against the reference, steps, warnings instead of the
//! missing source formats, nothing written), and of the tiny CPU recipe.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::repo;

/// Runs the binary in `cwd` (so a stray run directory would land there).
fn emollama(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(cwd).output().expect("spawn emollama")
}

fn plan_json(cwd: &Path, recipe: &str) -> Value {
    let path = repo().join(recipe);
    let o = emollama(cwd, &["run", "--dry-run", "--json", path.to_str().expect("utf8 path")]);
    assert!(o.status.success(), "dry run of {recipe} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("the plan is JSON")
}

fn component<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["components"].as_array().expect("components").iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no component `{name}` in {}", plan["components"]))
}

fn params(plan: &Value, name: &str) -> u64 {
    component(plan, name)["params"].as_u64().expect("params")
}

fn trainable(plan: &Value, name: &str) -> Vec<u64> {
    component(plan, name)["trainable"].as_array().expect("trainable").iter().map(|v| v.as_u64().expect("count")).collect()
}

fn shape(plan: &Value, name: &str, tensor: &str) -> Vec<u64> {
    let shapes = component(plan, name)["shapes"].as_array().expect("shapes");
    let s = shapes.iter().find(|s| s["name"] == tensor).unwrap_or_else(|| panic!("{name} has no `{tensor}`"));
    s["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim")).collect()
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read dir").next().is_none()
}

/// Emotion-LLaMA's configuration (reference §1.4, §1.5, §2.3): LoRA 33,554,432; llama_proj 5632x4096 +
/// bias; three 1024x4096 + bias; 1408x4096 + bias; all of LLaMA-2-7B and the encoders frozen.
#[test]
fn mer2024_finetune_plan_matches_the_reference() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let plan = plan_json(cwd.path(), "recipes/mer2024_finetune.toml");

    assert_eq!(params(&plan, "llm.lora"), 33_554_432);
    let proj = |i: u64| i * 4096 + 4096;
    assert_eq!(params(&plan, "projector.llama_proj"), proj(5632));
    assert_eq!(shape(&plan, "projector.llama_proj", "weight"), vec![4096, 5632]);
    assert_eq!(shape(&plan, "projector.llama_proj", "bias"), vec![4096]);
    for k in 1..=3 {
        let name = format!("projector.feats_llama_proj{k}");
        assert_eq!(params(&plan, &name), proj(1024), "{name}");
        assert_eq!(shape(&plan, &name, "weight"), vec![4096, 1024]);
    }
    assert_eq!(params(&plan, "projector.cls_tk_llama_proj"), proj(1408));
    assert_eq!(shape(&plan, "projector.cls_tk_llama_proj", "weight"), vec![4096, 1408]);
    let want_trainable = 33_554_432 + proj(5632) + 3 * proj(1024) + proj(1408);
    assert_eq!(want_trainable, 74_993_664);
    for name in ["llm.lora", "projector.llama_proj", "projector.feats_llama_proj1", "projector.feats_llama_proj2", "projector.feats_llama_proj3", "projector.cls_tk_llama_proj"] {
        assert_eq!(trainable(&plan, name), vec![params(&plan, name); 2], "{name} trains in both stages");
    }

    // Frozen: LLaMA-2-7B (Meta's count), EVA ViT-g (as the shape test counts it), ln_vision, the others.
    assert_eq!(params(&plan, "llm"), 6_738_415_616);
    let d = 1408u64;
    let block = 4 * d + 3 * d * d + 2 * d + d * d + d + d * 6144 + 6144 + 6144 * d + d;
    assert_eq!(params(&plan, "encoder.global"), 39 * block + d * 3 * 14 * 14 + d + d + 257 * d);
    assert_eq!(params(&plan, "encoder.global.ln_vision"), 2 * d);
    for name in ["llm", "encoder.global", "encoder.global.ln_vision", "encoder.local", "encoder.temporal", "encoder.audio"] {
        assert_eq!(trainable(&plan, name), vec![0, 0], "{name} is frozen");
        assert!(component(&plan, name)["frozen_because"].is_string(), "{name} says why it is frozen");
    }

    let stages = plan["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 2);
    for st in stages {
        assert_eq!(st["steps"], 30_000, "{}", st["name"]);
        assert_eq!(st["samples_seen"], 120_000);
        assert_eq!(st["trainable_params"], want_trainable);
        assert_eq!(st["validations"], 30);
        assert_eq!(st["checkpoints"], 30);
    }
    assert_eq!(stages[0]["data"][0]["samples"], 28_618);
    assert_eq!(stages[1]["data"][0]["samples"], 4_487);
    // Emotion-LLaMA's 260 multimodal tokens: 256 at <VideoHere>, [MAE, VideoMAE, HuBERT, CLS] at <FeatureHere>.
    let t = &stages[0]["tokens"][0];
    assert_eq!((t["video_here"].as_u64(), t["feature_here"].as_u64(), t["bos"].as_u64()), (Some(256), Some(4), Some(1)));
    assert_eq!(plan["validation"]["samples"], 834);

    // Memory: bf16 frozen weights are 2 bytes per frozen parameter but the encoders' norms, biases,
    // convolutions and position embeddings (f32, a few million); trainable state 16 bytes per parameter.
    let m = plan["memory"].as_array().expect("memory").iter().find(|m| m["stage"] == "coarse" && m["dtype"] == "bf16").expect("coarse bf16");
    let total = plan["total_params"].as_u64().expect("total");
    let f32_params = m["frozen_f32_params"].as_u64().expect("f32 params");
    assert!(f32_params > 1_000_000 && f32_params < 30_000_000, "{f32_params}");
    assert_eq!(m["frozen_weights"].as_u64(), Some(2 * (total - want_trainable - f32_params) + 4 * f32_params));
    assert_eq!(m["trainable_state"].as_u64(), Some(16 * want_trainable));

    let warnings = plan["warnings"].to_string();
    assert!(warnings.contains("no root yet") && warnings.contains("data.roots.merr-coarse") && warnings.contains("stops here"), "{warnings}");
    assert!(empty(cwd.path()), "a dry run writes nothing");

    // The human-readable plan, and a real run stopping at the missing dataset roots.
    let path = repo().join("recipes/mer2024_finetune.toml");
    let o = emollama(cwd.path(), &["run", "--dry-run", path.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for want in ["33,554,432", "6,738,415,616", "weight [4096, 5632]", "74,993,664", "30,000", "Memory per stage", "Warnings"] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    let o = emollama(cwd.path(), &["run", path.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("dataset `merr-coarse` has no root") && err.contains("data.roots.merr-coarse"), "{err}");
    assert!(empty(cwd.path()), "a run that fails validation writes nothing");
}

/// Stage 2 alone names stage 1's checkpoint, which does not exist here: a warning in the plan.
#[test]
fn stage2_plans_before_its_init_checkpoint_exists() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let plan = plan_json(cwd.path(), "recipes/emotion_llama/stage2.toml");
    assert_eq!(plan["stages"][0]["steps"], 30_000);
    let schedule = plan["stages"][0]["schedule"]["summary"].as_str().expect("summary");
    assert!(schedule.starts_with("constant 1e-6"), "{schedule}");
    assert!(plan["warnings"].to_string().contains("init checkpoint `runs/emotion-llama-stage1-best` does not exist"), "{}", plan["warnings"]);
    let plan = plan_json(cwd.path(), "recipes/emotion_llama/stage1.toml");
    let lr: Vec<f64> = plan["stages"][0]["schedule"]["points"].as_array().expect("points").iter().map(|p| p[1].as_f64().expect("lr")).collect();
    assert_eq!(lr[0], 1e-6, "warm-up starts at 1e-6 (§2.2)");
    assert!((lr[2] - 5.5e-6).abs() < 1e-12, "half-way down the cosine: {lr:?}");
}

/// The tiny CPU recipe: same layout at tiny widths, the tiny LLM trains (random weights, `llm.*`),
/// the encoders do not; an audio-less stage feeds 3 feature tokens.
#[test]
fn tiny_emotion_llama_plan() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let plan = plan_json(cwd.path(), "recipes/quickstart_emotion_llama_tiny.toml");
    assert_eq!(plan["layout"], "emotion_llama");
    assert_eq!(shape(&plan, "projector.llama_proj", "weight"), vec![128, 128], "4 merged EVA tokens of 32 -> LLM width 128");
    assert_eq!(trainable(&plan, "llm"), vec![params(&plan, "llm"); 3]);
    for enc in ["encoder.global", "encoder.local", "encoder.temporal", "encoder.audio"] {
        assert_eq!(trainable(&plan, enc), vec![0; 3], "{enc}");
    }
    let steps: Vec<u64> = plan["stages"].as_array().expect("stages").iter().map(|s| s["steps"].as_u64().expect("steps")).collect();
    assert_eq!(steps, vec![150, 200, 100]);
    let visual = &plan["stages"][0]["tokens"][0];
    assert_eq!((visual["video_here"].as_u64(), visual["feature_here"].as_u64(), visual["transcript"].as_u64()), (Some(256), Some(3), Some(0)));
    assert_eq!(plan["stages"][1]["tokens"][0]["feature_here"], 4);
    assert_eq!(plan["stages"][0]["data"][0]["samples"], 2400, "synth sizes come from data.synth");
    assert_eq!(plan["llm"]["tokenizer"], "word_level");
    assert!(plan["warnings"].to_string().contains("vocab_size 0"), "{}", plan["warnings"]);
    assert!(empty(cwd.path()));
    let o = emollama(cwd.path(), &["run", "--json", "recipes/quickstart_emotion_llama_tiny.toml"]);
    assert!(!o.status.success(), "--json needs --dry-run");
}
