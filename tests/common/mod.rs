//! Helpers shared by the integration tests (each test binary uses some of them).
#![allow(dead_code)]

pub mod http;
pub mod hub;
pub mod moto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/encoders/<rel>`.
pub fn encoder_fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/encoders").join(rel)
}

/// A real clip fetched by `just fetch-media` (part of `bash tools/setup.sh`) into the cache.
pub fn media(name: &str) -> PathBuf {
    let p = emollama::storage::cache_root("").join("media").join(name);
    assert!(p.is_file(), "{} is missing: run `just fetch-media` (part of `bash tools/setup.sh`)", p.display());
    p
}

/// A test-split sample whose media is the fetched clip `file`, with no labels.
pub fn media_sample(file: &str) -> emollama::data::Sample {
    emollama::data::Sample::media_only(file, "test", emollama::storage::Location::parse(media(file).to_str().expect("utf8")).expect("location"))
}

/// Runs the `emollama` binary from the repository root with extra environment variables.
pub fn emollama(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emollama"));
    cmd.args(args).current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("spawn emollama {args:?}: {e}"))
}

/// Every tensor of a safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>()).expect("difference")
}

/// `dir/faces.toml`: the tiny Emotion-LLaMA quick start on a small synthetic set, one training step of
/// the projectors, the peak frame for the global view, runs under `dir/runs`; `cache_dir` sets
/// `runtime.cache_dir`; `front_end` is appended as it is (`""`: no front end, which `peak` refuses).
pub fn face_recipe(dir: &Path, cache_dir: Option<&Path>, max_new_tokens: usize, front_end: &str) -> PathBuf {
    let cache = cache_dir.map(|c| format!("cache_dir = {:?}\n", c.display().to_string())).unwrap_or_default();
    let body = format!(
        r#"extends = [{base:?}]
name = "faces"

[runtime]
runs_dir = {runs:?}
{cache}
[data.synth]
seed = 3
train = 8
val = 4
test = 4

[model]
global_frame = "peak"

[[stage]]
name = "one"
tasks = ["emotion"]
steps = 1
batch_size = 4
lr = 1e-3
warmup_steps = 0
trainable = ["projector.*"]

[validation]
enabled = false

[eval]
max_new_tokens = {max_new_tokens}
{front_end}
"#,
        base = repo().join("recipes/quickstart_emotion_llama_tiny.toml").display().to_string(),
        runs = dir.join("runs").display().to_string(),
    );
    let p = dir.join("faces.toml");
    std::fs::write(&p, body).expect("write recipe");
    p
}

/// Trains the tiny Emotion-LLaMA layout with the face front end (the peak frame for the global view) one
/// step, with `XDG_CACHE_HOME = cache`; returns its run directory. Enough to check what `predict` and
/// `serve` report about real clips (faces, peak frame, scores, a short reasoning of `max_new_tokens`).
pub fn train_with_faces(tmp: &Path, cache: &Path, max_new_tokens: usize) -> PathBuf {
    let recipe = face_recipe(tmp, None, max_new_tokens, "[front_end.face]\n");
    let o = Command::new(env!("CARGO_BIN_EXE_emollama")).args(["run", recipe.to_str().expect("utf8"), "--no-progress"]).current_dir(repo()).env("XDG_CACHE_HOME", cache).output().expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_dir(tmp.join("runs")).expect("runs").flatten().map(|e| e.path()).find(|p| p.is_dir()).expect("run dir")
}
