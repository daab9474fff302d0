//! Data-parallel training with `mpirun -n 2` on loopback (Open MPI): two ranks with batch b end where one
//! process with batch 2b does, the ranks agree bit for bit, only rank 0 writes the run directory, validation
//! and evaluation are sharded and gathered into the single process's predictions; a rank that hangs or dies
//! stops the group with an error naming it, and the run started again resumes to the uninterrupted result.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::repo;

fn mpirun() -> Command {
    let ok = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "mpirun is missing: install Open MPI (`apt install openmpi-bin libopenmpi-dev`, part of `bash tools/setup.sh`)");
    let mut c = Command::new("mpirun");
    // Containers and CI often run as root, which Open MPI refuses unless told.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env("OMP_WAIT_POLICY", "passive");
    c.args(["-n", "2", "--oversubscribe", env!("CARGO_BIN_EXE_emollama")]);
    c
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A short quick-start recipe: `batch` per rank, `steps` steps.
fn recipe(dir: &Path, name: &str, batch: usize, steps: usize, extra: &str) -> PathBuf {
    recipe_with(dir, name, batch, steps, extra, "[validation]\nenabled = false\n\n[eval]\nenabled = false")
}

/// As [`recipe`], with `checks` as the recipe's validation and evaluation tables.
fn recipe_with(dir: &Path, name: &str, batch: usize, steps: usize, extra: &str, checks: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let body = format!(
        r#"extends = [{base:?}]
name = "{name}"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}
threads = 1
progress = false
{extra}

[data.synth]
seed = 4
train = 32
val = 6
test = 7

{checks}

[[stage]]
name = "s"
tasks = ["emotion", "reason"]
steps = {steps}
batch_size = {batch}
lr = 1e-3
"#,
        base = repo().join("recipes/base/tiny.toml").display().to_string(),
        runs = dir.join(format!("runs-{name}")).display().to_string(),
        cache = dir.join("cache").display().to_string(),
    );
    std::fs::write(&path, body).expect("recipe");
    path
}

fn run_dir(dir: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(dir.join(format!("runs-{name}"))).expect("runs").flatten().map(|e| e.path()).find(|p| p.is_dir()).expect("run dir")
}

/// The `stage_end` lines' parameter hashes of a log.
fn param_hashes(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "stage_end")
        .map(|v| v["params_sha256"].as_str().expect("hash").to_string())
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

#[test]
fn two_ranks_train_like_one_process_with_the_doubled_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Validation every 3 steps and the test evaluation, sharded over the ranks (odd counts: the shards differ in size).
    let checks = "[validation]\nenabled = true\nsplit = \"val\"\nevery = 3\n\n[eval]\nsplit = \"test\"\ntask = \"emotion\"\nmax_new_tokens = 6";
    let one = recipe_with(tmp.path(), "one", 8, 6, "", checks);
    let two = recipe_with(tmp.path(), "two", 4, 6, "", checks);
    let o = Command::new(env!("CARGO_BIN_EXE_emollama")).args(["run", one.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    assert!(o.status.success(), "{}", text(&o));
    let o = mpirun().args(["run", two.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn mpirun");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("audio/visual tokens").count(), 1, "only rank 0 prints the summary: {}", text(&o));

    let (a, b) = (run_dir(tmp.path(), "one"), run_dir(tmp.path(), "two"));
    let pa = common::load_tensors(&a.join("checkpoints/01-s.safetensors"));
    let pb = common::load_tensors(&b.join("checkpoints/01-s.safetensors"));
    assert_eq!(pa.len(), pb.len());
    let worst = pa.iter().map(|(k, t)| common::max_diff(t, &pb[k])).fold(0f32, f32::max);
    assert!(worst <= 1e-5, "2 ranks x 4 vs 1 x 8: parameters differ by {worst}");
    assert!(worst > 0.0 || pa.is_empty(), "the runs really are separate computations");

    // The ranks agree bit for bit; rank 1 wrote only its log.
    let (h0, h1) = (param_hashes(&b.join("log.jsonl")), param_hashes(&b.join("rank-1.log")));
    assert_eq!(h0.len(), 1);
    assert_eq!(h0, h1, "rank 0 and rank 1 hold the same parameters");
    let mut expected = files(&a);
    expected.push("rank-1.log".into());
    expected.sort();
    assert_eq!(files(&b), expected, "rank 1 writes nothing but rank-1.log");
    let train_lines = |p: &Path| std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| l.contains("\"kind\":\"train\"")).count();
    assert_eq!(train_lines(&b.join("log.jsonl")), 6);

    // Sharded validation and evaluation, gathered by rank 0: every sample once, in the split's order, with
    // the single process's answers (the parameters agree to 1e-5 and decoding is greedy).
    for file in ["validation_predictions.jsonl", "predictions.jsonl"] {
        let (pa, pb) = (predictions(&a.join(file)), predictions(&b.join(file)));
        assert_eq!(pa.len(), if file.starts_with("val") { 6 } else { 7 }, "{file}");
        assert_eq!(pa, pb, "{file}: 2 ranks vs 1 process");
        assert!(pa.iter().any(|(_, _, text)| !text.is_empty()), "{file}: the model generated text");
    }
    let validations = |p: &Path| std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| l.contains("\"kind\":\"validation\"")).count();
    assert_eq!(validations(&b.join("log.jsonl")), 2, "validation at steps 3 and 6");
    let metrics = |d: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(d.join("metrics.json")).expect("metrics.json")).expect("json") };
    assert_eq!(metrics(&a)["eval"]["n"], metrics(&b)["eval"]["n"]);
    assert_eq!(metrics(&a)["eval"]["weighted_f1"], metrics(&b)["eval"]["weighted_f1"]);
}

/// (id, prediction, generated text) of each line of a predictions file, in order.
fn predictions(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .map(|v| (v["id"].as_str().expect("id").to_string(), v["prediction"].as_str().expect("prediction").to_string(), v["text"].as_str().expect("text").to_string()))
        .collect()
}

/// Starts a 2-rank run and returns (mpirun, run directory, rank 1's pid) once rank 0 logged `steps` steps.
// The child is returned to the caller, which waits for it.
#[allow(clippy::zombie_processes)]
fn start_and_wait(tmp: &Path, recipe: &Path, name: &str, steps: usize) -> (std::process::Child, PathBuf, u32) {
    let mut child = mpirun().args(["run", recipe.to_str().expect("utf8"), "--no-progress"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn mpirun");
    let t0 = Instant::now();
    loop {
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let out = child.wait_with_output().map(|o| text(&o)).unwrap_or_default();
            panic!("the run did not reach step {steps} within 300 s:\n{out}");
        }
        if let Some(d) = std::fs::read_dir(tmp.join(format!("runs-{name}"))).ok().and_then(|mut r| r.next()).and_then(|e| e.ok()).map(|e| e.path()) {
            let log = std::fs::read_to_string(d.join("log.jsonl")).unwrap_or_default();
            let rank1 = std::fs::read_to_string(d.join("rank-1.log")).unwrap_or_default();
            let pid = rank1.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v["kind"] == "rank").filter_map(|v| v["pid"].as_u64()).next_back();
            if let (Some(pid), true) = (pid, log.lines().filter(|l| l.contains("\"kind\":\"train\"")).count() >= steps) {
                return (child, d, pid as u32);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

#[test]
fn a_hung_or_dead_rank_stops_the_group_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Short enough for a test, long enough that a busy CI machine never trips it by accident.
    let timeout = "distributed_timeout_s = 30\n\n[checkpoint]\nevery = 5";

    // A hung rank (stopped): rank 0 names it after the timeout and stops the group.
    let hung = recipe(tmp.path(), "hung", 4, 200, timeout);
    let (child, dir, pid) = start_and_wait(tmp.path(), &hung, "hung", 12);
    let t0 = Instant::now();
    signal(pid, "-STOP");
    let o = child.wait_with_output().expect("mpirun");
    let waited = t0.elapsed();
    signal(pid, "-KILL");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rank 1 did not reach"), "the error names the rank: {}", text(&o));
    assert!(waited >= Duration::from_secs(25) && waited < Duration::from_secs(30 + 60), "stopped after the timeout, not long after: {waited:?}");
    assert!(dir.join("checkpoints").read_dir().is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("step-")))));

    // A dead rank (kill -9): the launcher stops the group at once and names it.
    let dead = recipe(tmp.path(), "dead", 4, 30, timeout);
    let (child, dead_dir, pid) = start_and_wait(tmp.path(), &dead, "dead", 12);
    let t0 = Instant::now();
    signal(pid, "-KILL");
    let o = child.wait_with_output().expect("mpirun");
    assert!(!o.status.success());
    assert!(text(&o).contains("rank 1"), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(30), "stopped at once: {:?}", t0.elapsed());
    assert!(!dead_dir.join("metrics.json").exists(), "the group stopped before the end");

    // Started again, the group resumes from the last checkpoint and ends where an uninterrupted run does.
    let o = mpirun().args(["run", dead.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn mpirun");
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dead_dir.join("run_info.json")).expect("run_info")).expect("json");
    assert!(info["resumed_from"].as_str().is_some_and(|c| c.contains("step-")), "resumed from a step checkpoint: {info}");
    let whole = recipe(tmp.path(), "whole", 4, 30, timeout);
    let o = mpirun().args(["run", whole.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn mpirun");
    assert!(o.status.success(), "{}", text(&o));
    let resumed = common::load_tensors(&dead_dir.join("checkpoints/01-s.safetensors"));
    let straight = common::load_tensors(&run_dir(tmp.path(), "whole").join("checkpoints/01-s.safetensors"));
    let worst = resumed.iter().map(|(k, t)| common::max_diff(t, &straight[k])).fold(0f32, f32::max);
    assert_eq!(worst, 0.0, "resumed vs uninterrupted 2-rank run");
    assert_eq!(param_hashes(&dead_dir.join("rank-1.log")).last(), param_hashes(&dead_dir.join("log.jsonl")).last(), "the resumed ranks agree bit for bit");
}
