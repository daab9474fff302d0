//! A run killed with SIGKILL at random steps and resumed ends with the same trainable parameters, bit
//! for bit, as a run that was never interrupted; a damaged or half-written checkpoint is never loaded.
//! The recipe is the quick start (its three stages, validation and checkpoints) shortened to a few
//! steps on a small synthetic dataset, with LoRA dropout on so the dropout stream is exercised too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

mod common;

use common::repo;

const TOTAL_STEPS: usize = 8 + 8 + 6;

fn write_recipe(dir: &Path, cache: &Path) -> PathBuf {
    let base = repo().join("recipes/quickstart.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "qs-kill"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}
threads = 2

[data.synth]
seed = 11
train = 96
val = 12
test = 12

[model.lora]
r = 4
lora_alpha = 8.0
lora_dropout = 0.1
target_modules = ["q_proj", "v_proj"]

[checkpoint]
every = 2
keep_last = 2

[validation]
enabled = true
every = 5
limit = 6

[[stage]]
name = "visual"
tasks = ["emotion"]
modalities = ["video"]
transcript = false
steps = 8
batch_size = 8
lr = 2e-3
warmup_steps = 2
log_every = 1

[[stage]]
name = "coarse"
tasks = ["emotion", "description"]
steps = 8
batch_size = 8
grad_accum = 2
lr = 2e-3
warmup_steps = 2
log_every = 1

[[stage]]
name = "fine"
tasks = ["reason"]
steps = 6
batch_size = 8
lr = 5e-4
warmup_steps = 1
log_every = 1
trainable = ["llm.*.lora_*", "projector.*"]

[eval]
max_new_tokens = 8
limit = 6
"#,
        base = base.display().to_string(),
        runs = dir.join("runs").display().to_string(),
        cache = cache.display().to_string(),
    );
    let p = dir.join("qs-kill.toml");
    std::fs::write(&p, body).expect("write recipe");
    p
}

fn emollama(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emollama"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("runs")).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

fn run_to_end(cmd: &mut Command) {
    let out = cmd.output().expect("spawn emollama");
    assert!(out.status.success(), "run failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The last stage's exported parameters and the stage exports of every stage.
fn final_params(run: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for f in ["01-visual", "02-coarse", "03-fine"] {
        let t: HashMap<String, Tensor> = candle_core::safetensors::load(run.join(format!("checkpoints/{f}.safetensors")), &Device::Cpu).expect("stage export");
        for (k, v) in t {
            let bytes: Vec<u8> = v.flatten_all().and_then(|v| v.to_vec1::<f32>()).expect("f32").iter().flat_map(|x| x.to_le_bytes()).collect();
            out.insert(format!("{f}/{k}"), bytes);
        }
    }
    out
}

/// The highest `global_step` logged so far.
fn logged_step(run_root: &Path) -> usize {
    run_dirs(run_root)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("log.jsonl")).ok())
        .flat_map(|t| t.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect::<Vec<_>>())
        .filter_map(|v| v["global_step"].as_u64())
        .max()
        .unwrap_or(0) as usize
}

/// Starts the run and SIGKILLs it once the log shows `at` steps done.
fn kill_at(recipe: &Path, root: &Path, at: usize) {
    let mut child = emollama(&["run", recipe.to_str().expect("utf8"), "--no-progress"]).stderr(Stdio::null()).spawn().expect("spawn");
    let start = Instant::now();
    loop {
        if logged_step(root) >= at {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before step {at}");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "step {at} not reached in 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix.
    child.wait().expect("reap");
}

fn assert_same(reference: &HashMap<String, Vec<u8>>, got: &HashMap<String, Vec<u8>>, what: &str) {
    assert_eq!(reference.len(), got.len(), "{what}: different parameter sets");
    for (k, v) in reference {
        assert!(got.get(k) == Some(v), "{what}: `{k}` differs from the uninterrupted run");
    }
}

#[test]
fn killed_and_resumed_runs_end_bitwise_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");

    // The uninterrupted reference.
    let ref_dir = tmp.path().join("reference");
    std::fs::create_dir_all(&ref_dir).expect("mkdir");
    let recipe = write_recipe(&ref_dir, &cache);
    run_to_end(&mut emollama(&["run", recipe.to_str().expect("utf8"), "--no-progress"]));
    let reference_run = run_dirs(&ref_dir).pop().expect("reference run");
    let reference = final_params(&reference_run);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(reference_run.join("metrics.json")).expect("metrics")).expect("json");
    assert!(metrics["best"]["checkpoint"].as_str().is_some_and(|c| c.starts_with("checkpoints/best-")), "{metrics}");

    // Kill points drawn at random (printed for a re-run), one in each stage.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let pick = |lo: usize, hi: usize, salt: u64| lo + ((seed ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize % (hi - lo);
    let points = [pick(1, 8, 1), pick(9, 16, 2), pick(17, TOTAL_STEPS, 3)];
    eprintln!("kill points (global steps): {points:?}");
    for (case, &at) in points.iter().enumerate() {
        let dir = tmp.path().join(format!("kill-{case}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let recipe = write_recipe(&dir, &cache);
        kill_at(&recipe, &dir, at);
        let runs = run_dirs(&dir);
        assert_eq!(runs.len(), 1);
        let run = &runs[0];
        assert!(!run.join("metrics.json").exists(), "the killed run finished before the kill");
        if case == 1 {
            // Simulate what a crash mid-write could leave: a half-written temp checkpoint and a damaged
            // newest checkpoint. Neither may be loaded.
            let ckpts = run.join("checkpoints");
            let tmpdir = ckpts.join(".step-999999.tmp");
            std::fs::create_dir_all(&tmpdir).expect("mkdir");
            std::fs::write(tmpdir.join("state.json"), b"{\"format\": 1, \"stage_ind").expect("write");
            let mut steps: Vec<PathBuf> = std::fs::read_dir(&ckpts).expect("ls").filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-"))).collect();
            steps.sort();
            if let Some(newest) = steps.last() {
                let p = newest.join("params.safetensors");
                let bytes = std::fs::read(&p).expect("read");
                std::fs::write(&p, &bytes[..bytes.len() / 3]).expect("truncate");
            }
        }
        // Resume: automatically (the same command) in two cases, with --resume in the other.
        let mut cmd = if case == 2 {
            emollama(&["run", "--resume", run.to_str().expect("utf8"), "--no-progress"])
        } else {
            emollama(&["run", recipe.to_str().expect("utf8"), "--no-progress"])
        };
        run_to_end(&mut cmd);
        let runs = run_dirs(&dir);
        assert_eq!(runs.len(), 1, "the resume must continue the interrupted run directory, not start another");
        assert!(runs[0].join("metrics.json").exists());
        assert_same(&reference, &final_params(&runs[0]), &format!("killed at step {at}"));
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs[0].join("metrics.json")).expect("metrics")).expect("json");
        assert_eq!(m["best"], metrics["best"], "killed at step {at}: a different best checkpoint");
        assert!(!runs[0].join("checkpoints/.step-999999.tmp").exists(), "the leftover temp checkpoint was not cleaned");
    }
}

#[test]
fn resume_errors_name_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = write_recipe(tmp.path(), &tmp.path().join("cache"));
    let out = emollama(&["run", recipe.to_str().expect("utf8"), "--resume", "--no-progress"]).output().expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no interrupted run of recipe `qs-kill`") && err.contains("without --resume"), "{err}");

    let out = emollama(&["run", "--resume", tmp.path().to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recipe.resolved.toml"), "{err}");

    // A run directory of another recipe is refused, not silently continued with different settings.
    let run = tmp.path().join("runs/qs-kill-20260101-000000");
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(run.join("recipe.resolved.toml"), "name = \"qs-kill\"\nseed = 99\n").expect("write");
    let out = emollama(&["run", recipe.to_str().expect("utf8"), "--resume", run.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different recipe"), "{err}");
}

/// A run still in progress is not an interrupted run: another process neither resumes it nor writes into it.
#[test]
fn a_running_run_is_not_resumed_by_another_process() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = write_recipe(tmp.path(), &tmp.path().join("cache"));
    let mut first = emollama(&["run", recipe.to_str().expect("utf8"), "--no-progress"]).stderr(Stdio::null()).spawn().expect("spawn");
    let start = Instant::now();
    while logged_step(tmp.path()) < 1 {
        assert!(start.elapsed() < Duration::from_secs(600), "no step in 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = run_dirs(tmp.path()).pop().expect("the running run");
    let out = emollama(&["run", "--resume", running.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    let _ = first.kill();
    let _ = first.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another emollama process"), "{err}");
}
