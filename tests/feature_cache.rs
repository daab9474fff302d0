//! The frozen-encoder feature cache: a second run of the same recipe reads every clip's features from
//! the cache (no decode, no encode), and changing a preprocessing option or the encoder's view makes new
//! keys, so nothing stale is read.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::repo;

fn write_recipe(dir: &Path) -> PathBuf {
    let base = repo().join("recipes/quickstart_emotion_llama_tiny.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "fc"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}

[data.synth]
seed = 5
train = 16
val = 4
test = 4

[[stage]]
name = "one"
tasks = ["emotion"]
steps = 2
batch_size = 8
lr = 1e-3
warmup_steps = 1
trainable = ["llm.*", "projector.*"]

[eval]
max_new_tokens = 4
"#,
        base = base.display().to_string(),
        runs = dir.join("runs").display().to_string(),
        cache = dir.join("cache").display().to_string(),
    );
    let p = dir.join("fc.toml");
    std::fs::write(&p, body).expect("write recipe");
    p
}

/// Runs the recipe and returns (hits, misses) from its metrics.json.
fn run(recipe: &Path, sets: &[&str]) -> (u64, u64) {
    let mut args = vec!["run", recipe.to_str().expect("utf8"), "--no-progress", "--fresh"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_emollama")).args(&args).output().expect("spawn");
    assert!(out.status.success(), "run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let runs = recipe.parent().expect("dir").join("runs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&runs).expect("runs").filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort_by_key(|d| std::fs::metadata(d.join("metrics.json")).and_then(|m| m.modified()).ok());
    let newest = dirs.pop().expect("a run");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(newest.join("metrics.json")).expect("metrics")).expect("json");
    let c = &m["feature_cache"];
    (c["hits"].as_u64().expect("hits"), c["misses"].as_u64().expect("misses"))
}

fn cached_files(dir: &Path) -> usize {
    walk(&dir.join("cache/features"))
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| if e.path().is_dir() { walk(&e.path()) } else { e.path().extension().is_some_and(|x| x == "safetensors") as usize }).sum())
        .unwrap_or(0)
}

#[test]
fn second_run_hits_and_a_changed_preprocessing_option_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = write_recipe(dir.path());
    let (hits, misses) = run(&recipe, &[]);
    assert!(misses > 0, "a cold cache must miss");
    let files = cached_files(dir.path());
    assert_eq!(files as u64, misses, "one file per distinct clip encoded");
    let _ = hits;

    let (hits2, misses2) = run(&recipe, &[]);
    assert_eq!(misses2, 0, "the same recipe again must not decode or encode anything");
    assert!(hits2 > 0);
    assert_eq!(cached_files(dir.path()), files);

    // Preprocessing: a different audio length gives other features.
    // (Hits within a run are re-reads of clips it encoded itself; every clip must be encoded again.)
    let (_, misses3) = run(&recipe, &["data.audio_seconds=1.5"]);
    assert_eq!(misses3, misses, "features of another audio length must not be reused");
    // The global view's frame is part of the key too.
    let (_, misses4) = run(&recipe, &["model.global_frame=\"middle\""]);
    assert_eq!(misses4, misses, "features of another global frame must not be reused");
    assert_eq!(cached_files(dir.path()) as u64, misses + misses3 + misses4);
}
