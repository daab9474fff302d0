//! `emollama eval RECIPE --checkpoint RUN_DIR` evaluates a trained run's parameters without training and
//! reproduces the run's own final evaluation exactly (same parameters, same corpus-built tokenizer).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::repo;

fn emollama(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(repo()).env("XDG_CACHE_HOME", cache).output().expect("spawn emollama")
}

fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

#[test]
fn eval_of_a_run_directory_reproduces_its_final_evaluation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let recipe = tmp.path().join("r.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "evalme"

[runtime]
runs_dir = {runs:?}
threads = 2

[data.synth]
seed = 8
train = 24
val = 6
test = 12

[validation]
enabled = false

[[stage]]
name = "s"
tasks = ["emotion", "reason"]
steps = 4
batch_size = 4
lr = 2e-3

[eval]
task = "reason"
max_new_tokens = 12
"#,
        base = repo().join("recipes/base/tiny.toml").display().to_string(),
        runs = tmp.path().join("runs").display().to_string(),
    );
    std::fs::write(&recipe, body).expect("recipe");
    let r = recipe.to_str().expect("utf8");
    let o = emollama(&cache, &["run", r, "--no-progress"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trained = runs(&tmp.path().join("runs")).pop().expect("run dir");

    let o = emollama(&cache, &["eval", r, "--checkpoint", trained.to_str().expect("utf8"), "--no-progress"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("evaluating checkpoint"), "{stderr}");
    let all = runs(&tmp.path().join("runs"));
    let evaluated = all.iter().find(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("evalme-eval-"))).expect("eval run dir");
    let preds = |d: &Path| std::fs::read_to_string(d.join("predictions.jsonl")).expect("predictions");
    assert_eq!(preds(&trained), preds(evaluated), "same parameters, same answers");
    let m = |d: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(d.join("metrics.json")).expect("metrics")).expect("json")["eval"].clone();
    assert_eq!(m(&trained), m(evaluated));
    assert!(evaluated.join("report.html").is_file());
    let log = std::fs::read_to_string(evaluated.join("log.jsonl")).unwrap_or_default();
    assert!(!log.contains("\"kind\":\"step\"") && !log.contains("\"global_step\""), "no training: {log}");

    // Zero-shot (no checkpoint): the model as built, said so; then a checkpoint of another model is an error.
    let o = emollama(&cache, &["eval", r, "--no-progress", "--limit", "3"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no --checkpoint"), "{}", String::from_utf8_lossy(&o.stderr));
    let bogus = tmp.path().join("bogus.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("not.a.param".to_string(), candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).expect("t"))]), &bogus).expect("save");
    let o = emollama(&cache, &["eval", r, "--checkpoint", bogus.to_str().expect("utf8"), "--no-progress"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("holds parameters this model does not have"), "{}", String::from_utf8_lossy(&o.stderr));
}
