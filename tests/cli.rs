//! The `emollama` binary: recipe check / show, registry list, probe. Malformed recipes must exit non-zero
//! with an actionable message and never panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_emollama"))
}

mod common;

use common::repo;

fn run(args: &[&str]) -> Output {
    bin().args(args).current_dir(repo()).output().expect("spawn emollama")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Writes a recipe that extends the repository's tiny base with extra TOML.
fn recipe(dir: &Path, name: &str, body: &str) -> PathBuf {
    let base = repo().join("recipes/base/tiny.toml");
    let p = dir.join(name);
    std::fs::write(&p, format!("extends = [{:?}]\nname = \"t\"\n{body}", base.display().to_string())).expect("write recipe");
    p
}

fn check_fails(path: &Path, expect: &[&str]) {
    let o = run(&["recipe", "check", path.to_str().expect("utf8 path")]);
    let err = stderr(&o);
    assert!(!o.status.success(), "check should fail for {}: {err}", path.display());
    assert!(!err.contains("panicked"), "panic: {err}");
    for e in expect {
        assert!(err.contains(e), "expected `{e}` in:\n{err}");
    }
}

#[test]
fn quickstart_recipe_checks_and_shows() {
    let o = run(&["recipe", "check", "recipes/quickstart.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["recipe", "show", "recipes/quickstart.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("[[stage]]") && shown.contains("name = \"coarse\"") && shown.contains("name = \"fine\""), "{shown}");
    assert!(shown.contains("llm = \"tiny-llama\""), "resolved recipe includes the base: {shown}");
    let o = run(&["recipe", "show", "recipes/quickstart.toml", "--set", "model.use_av=false"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("use_av = false"));
}

#[test]
fn unknown_key_names_file_line_and_suggestion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = recipe(dir.path(), "typo.toml", "\n[[stage]]\nname = \"a\"\nlr_shedule = \"cosine\"\n");
    check_fails(&p, &["typo.toml:6", "lr_shedule", "did you mean `lr_schedule`"]);
}

#[test]
fn wrong_type_names_key_and_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = recipe(dir.path(), "type.toml", "\n[[stage]]\nname = \"a\"\nlr = \"fast\"\n");
    check_fails(&p, &["type.toml:6", "lr", "float"]);
}

#[test]
fn missing_extends_file_and_cycle_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("child.toml");
    std::fs::write(&p, "extends = [\"../nowhere/base.toml\"]\n").expect("write");
    check_fails(&p, &["child.toml", "nowhere/base.toml"]);
    std::fs::write(dir.path().join("a.toml"), "extends = [\"b.toml\"]\n").expect("write");
    std::fs::write(dir.path().join("b.toml"), "extends = [\"a.toml\"]\n").expect("write");
    check_fails(&dir.path().join("a.toml"), &["a.toml", "b.toml", "cycle"]);
}

#[test]
fn unknown_registry_names_list_the_known_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = recipe(dir.path(), "names.toml", "[model]\nllm = \"tiny-lama\"\n");
    check_fails(&p, &["names.toml:4", "unknown LLM plugin `tiny-lama`, did you mean `tiny-llama`?"]);
    // Tasks are a closed set of the schema: refused while the recipe is read, with its index.
    let tasks = recipe(dir.path(), "tasks.toml", "[[stage]]\nname = \"s\"\ntasks = [\"emotoin\"]\n");
    check_fails(&tasks, &["tasks.toml:5", "stage[0].tasks[0]: unknown value `emotoin`, did you mean `emotion`?", "emotion, description, reason, reason_v2"]);
    // A closed set of the schema (an enum) is refused while the recipe is read, before any registry lookup.
    let proj = recipe(dir.path(), "proj.toml", "[model]\nprojector = \"mlpp\"\n");
    check_fails(&proj, &["proj.toml:4", "model.projector: unknown value `mlpp`, did you mean `mlp`?", "linear, mlp"]);
    let o = run(&["recipe", "check", p.to_str().expect("utf8"), "--set", "data.dataset=synthh"]);
    assert!(stderr(&o).contains("unknown dataset `synthh`, did you mean `synth`?"), "{}", stderr(&o));
}

#[test]
fn registry_list_shows_every_kind() {
    let o = run(&["registry", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["tiny_cnn", "tiny-cnn-frames", "tiny-wave-audio", "tiny-llama", "synth", "weighted_f1", "reason", "llama2"] {
        assert!(out.contains(needle), "`{needle}` missing from:\n{out}");
    }
}

#[test]
fn probe_prints_streams_and_sampled_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("c.mp4");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "2"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&clip)
        .status()
        .expect("the ffmpeg CLI is needed to make test media: apt-get install ffmpeg");
    assert!(st.success());
    let o = run(&["probe", clip.to_str().expect("utf8"), "--frames", "uniform:4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let picked: Vec<f64> = v["picked_s"].as_array().expect("picked").iter().filter_map(|x| x.as_f64()).collect();
    assert_eq!(picked, vec![0.2, 0.7, 1.2, 1.7]);
    let o = run(&["probe", dir.path().join("missing.mp4").to_str().expect("utf8")]);
    assert!(!o.status.success() && stderr(&o).contains("missing.mp4") && !stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn generate_reports_an_unknown_llm() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["generate", "--llm", "smollm3-135m", "--prompt", "hi", "--greedy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run emollama");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown LLM plugin `smollm3-135m`") && err.contains("smollm2-135m-instruct"), "{err}");
}

#[test]
fn generate_answers_with_smollm2_and_writes_logits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logits = dir.path().join("logits.safetensors");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["generate", "--llm", "smollm2-135m-instruct", "--prompt", "What is the capital of France?", "--greedy", "--dequantize", "--max-new-tokens", "8", "--logits-out"])
        .arg(&logits)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run emollama");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Paris"), "{text}");
    let t = candle_core::safetensors::load(&logits, &candle_core::Device::Cpu).expect("logits file");
    assert_eq!(t["logits"].dims(), &[1, 49152]);
}

#[test]
fn dataset_roots_and_storage_options_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = recipe(dir.path(), "roots.toml", "\n[data.roots]\nsynth = \"gs://bucket/x\"\nnope = \"/data\"\n");
    check_fails(&p, &["roots.toml:5", "data.roots.synth", "unsupported scheme `gs`", "roots.toml:6", "no dataset card `nope`"]);
    let p = recipe(dir.path(), "storage.toml", "\n[storage]\nretrys = 3\n");
    check_fails(&p, &["storage.toml:5", "retrys", "did you mean `retries`"]);
    let p = recipe(dir.path(), "ok.toml", "\n[data.roots]\nsynth = \"s3://team/synth\"\n[storage]\nendpoint = \"http://127.0.0.1:9000\"\nretries = 2\n");
    let o = run(&["recipe", "check", p.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn data_commands_name_what_is_wrong() {
    let o = run(&["data", "ls", "no-such-dataset"]);
    assert!(!o.status.success() && stderr(&o).contains("no-such-dataset") && stderr(&o).contains("synth"), "{}", stderr(&o));
    // A card without a root says where to set one.
    let o = run(&["data", "stat", "merr-fine"]);
    assert!(!o.status.success() && stderr(&o).contains("no root") && stderr(&o).contains("data.roots.merr-fine"), "{}", stderr(&o));
    let o = run(&["data", "ls", "synth", "--root", "ftp://x/y"]);
    assert!(!o.status.success() && stderr(&o).contains("unsupported scheme `ftp`"), "{}", stderr(&o));
    let o = run(&["data", "export", "--format", "csv", "--dataset", "synth"]);
    assert!(!o.status.success() && stderr(&o).contains("expected mer-submission"), "{}", stderr(&o));
    let o = run(&["probe", "s3:///key.mp4"]);
    assert!(!o.status.success() && stderr(&o).contains("needs a bucket"), "{}", stderr(&o));
}
