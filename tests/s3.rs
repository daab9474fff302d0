//! S3 for real: a moto server on 127.0.0.1 (started by `.ci/run`, or by the test), a synthetic dataset
//! uploaded with `emollama data push`, and runs reading `s3://...` that give the same samples and metrics
//! as the local copy; a server stopped mid-run gives retries, then a clear error, and the run continues
//! once it is back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::moto::{self, Moto};

use common::repo;

/// `emollama ARGS` with AWS credentials for moto and the endpoint in the standard environment variable.
fn emollama(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emollama"));
    c.args(args)
        .current_dir(repo())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The quick start shortened (two stages, a few steps, 48 clips), reading the synth dataset wherever
/// `data.roots.synth` points, checkpointing every 2 steps.
fn write_recipe(dir: &Path, retries: usize, backoff: f64) -> PathBuf {
    let base = repo().join("recipes/quickstart.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "qs-s3"

[runtime]
runs_dir = {runs:?}
threads = 2
prefetch = 0

[storage]
retries = {retries}
retry_backoff_s = {backoff}
retry_max_backoff_s = 2.0
timeout_s = 2.0
prefetch = 4

[data.synth]
seed = 21
train = 48
val = 6
test = 12

[checkpoint]
every = 2
keep_last = 2

[validation]
enabled = false

[[stage]]
name = "visual"
tasks = ["emotion"]
modalities = ["video"]
transcript = false
steps = 6
batch_size = 4
lr = 2e-3
warmup_steps = 1
log_every = 1

[[stage]]
name = "fine"
tasks = ["reason"]
steps = 4
batch_size = 4
lr = 5e-4
warmup_steps = 1
log_every = 1

[eval]
max_new_tokens = 8
"#,
        runs = dir.join("runs").display().to_string(),
    );
    let p = dir.join("qs-s3.toml");
    std::fs::write(&p, body).expect("write recipe");
    p
}

fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("runs")).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

fn logged_steps(run_root: &Path) -> usize {
    run_dirs(run_root).iter().filter_map(|d| std::fs::read_to_string(d.join("log.jsonl")).ok()).map(|t| t.lines().filter(|l| l.contains("\"global_step\"")).count()).max().unwrap_or(0)
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("metrics.json")).expect("metrics.json")).expect("json")
}

/// Pushes the recipe's synth dataset to `s3://bucket/synth`.
fn push(endpoint: &str, recipe: &Path, bucket: &str) {
    moto::create_bucket(endpoint, bucket);
    let out = ok(emollama(endpoint, &["data", "push", "synth", "--recipe", recipe.to_str().expect("utf8"), &format!("s3://{bucket}/synth"), "--no-progress"]).output().expect("spawn"), "data push");
    assert!(out.contains("files ->"), "{out}");
}

#[test]
fn synth_dataset_from_s3_gives_the_same_samples_and_metrics_as_local() {
    let (_guard, endpoint) = moto::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = write_recipe(dir.path(), 3, 0.2);
    let r = recipe.to_str().expect("utf8");
    let bucket = moto::bucket_name("same");
    push(&endpoint, &recipe, &bucket);
    let s3_root = format!("s3://{bucket}/synth");

    // Same samples: every field but the media root.
    let ls = |root: Option<&str>| -> Vec<serde_json::Value> {
        let mut args = vec!["data", "ls", "synth", "--recipe", r, "--json", "--no-progress"];
        if let Some(root) = root {
            args.extend(["--root", root]);
        }
        ok(emollama(&endpoint, &args).output().expect("spawn"), "data ls").lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
    };
    let (local, remote) = (ls(None), ls(Some(&s3_root)));
    assert_eq!(local.len(), 66);
    assert_eq!(local.len(), remote.len());
    for (a, b) in local.iter().zip(&remote) {
        let (ma, mb) = (a["media"].as_str().expect("media"), b["media"].as_str().expect("media"));
        assert!(mb.starts_with(&format!("{s3_root}/clips/")) && ma.ends_with(&mb[s3_root.len()..]), "{ma} vs {mb}");
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            v["media"] = serde_json::Value::Null;
            v
        };
        assert_eq!(strip(a), strip(b));
    }

    // Features of every clip of an S3 folder (listed, fetched in parallel, ids from the file names).
    let feats = dir.path().join("feats.safetensors");
    let out = ok(
        emollama(&endpoint, &["extract", "--encoder", "hubert-tiny", "--input", &format!("{s3_root}/clips"), "--out", feats.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn"),
        "extract from S3",
    );
    assert!(out.starts_with("66 samples extracted"), "{out}");

    // Same run: the local copy, then S3 (media through a fresh read-through cache).
    ok(emollama(&endpoint, &["run", r, "--no-progress", "--fresh"]).output().expect("spawn"), "local run");
    let cache = dir.path().join("cache-s3");
    let roots = format!("data.roots.synth={s3_root}");
    let cache_set = format!("runtime.cache_dir={}", cache.display());
    ok(emollama(&endpoint, &["run", r, "--no-progress", "--fresh", "--set", &roots, "--set", &cache_set]).output().expect("spawn"), "S3 run");
    let runs = run_dirs(dir.path());
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (m_local, m_s3) = (metrics(&runs[0]), metrics(&runs[1]));
    for key in ["weighted_f1", "accuracy", "macro_f1", "confusion_matrix"] {
        assert!(!m_local["eval"][key].is_null(), "metrics.json eval.{key} missing: {}", m_local["eval"]);
        assert_eq!(m_local["eval"][key], m_s3["eval"][key], "eval.{key}");
    }
    let preds = |run: &Path| std::fs::read_to_string(run.join("predictions.jsonl")).expect("predictions");
    assert_eq!(preds(&runs[0]), preds(&runs[1]));
    // Every clip the S3 run used came through the cache.
    let cached = walk(&cache.join("objects")).iter().filter(|p| p.extension().is_some_and(|e| e == "mp4")).count();
    assert!(cached > 12 && cached <= 60, "{cached} clips cached: expected the 12 test clips and the train clips drawn (no validation split used)");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Waits until the run has logged `n` steps, or the child exits.
fn wait_for_steps(child: &mut std::process::Child, root: &Path, n: usize) {
    let t0 = Instant::now();
    while logged_steps(root) < n {
        assert!(child.try_wait().expect("try_wait").is_none(), "the run ended before step {n}");
        assert!(t0.elapsed() < Duration::from_secs(300), "no step {n} within 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An own moto server with the shortened recipe's dataset pushed, for the outage tests.
struct Outage {
    server: Moto,
    dir: tempfile::TempDir,
    recipe: PathBuf,
    bucket: String,
}

impl Outage {
    fn new(tag: &str, retries: usize, backoff: f64) -> Outage {
        let server = Moto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = write_recipe(dir.path(), retries, backoff);
        let bucket = moto::bucket_name(tag);
        push(&server.endpoint(), &recipe, &bucket);
        Outage { server, dir, recipe, bucket }
    }

    /// `emollama run` of the recipe reading the dataset from the bucket, with its own media cache.
    fn run(&self) -> Command {
        let roots = format!("data.roots.synth=s3://{}/synth", self.bucket);
        let cache_set = format!("runtime.cache_dir={}", self.dir.path().join("cache").display());
        emollama(&self.server.endpoint(), &["run", self.recipe.to_str().expect("utf8"), "--no-progress", "--set", &roots, "--set", &cache_set])
    }

    /// Kills the server once the run has logged its first step (most clips not fetched yet).
    fn stop_after_first_step(&mut self, child: &mut std::process::Child) {
        wait_for_steps(child, self.dir.path(), 1);
        self.server.stop();
    }

    /// Restarts the server on its port; moto keeps no state, so the dataset is uploaded again.
    fn restart(&mut self) {
        self.server = Moto::start_on(self.server.port);
        push(&self.server.endpoint(), &self.recipe, &self.bucket);
    }
}

#[test]
fn server_stopped_mid_run_gives_retries_then_a_clear_error_and_the_run_continues_after_a_restart() {
    // 3 retries from 0.2 s: the outage is reported after ~1.4 s.
    let mut o = Outage::new("outage", 3, 0.2);
    let mut child = o.run().spawn().expect("spawn");
    o.stop_after_first_step(&mut child);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run should fail while the server is down");
    assert!(stderr.contains("failed; retrying"), "no retry logged:\n{stderr}");
    assert!(stderr.contains(&format!("s3://{}/synth/clips/", o.bucket)) && stderr.contains("failed after 4 attempts"), "unclear error:\n{stderr}");
    assert!(stderr.contains("check that the server is reachable"), "{stderr}");
    let done_before = logged_steps(o.dir.path());
    assert!(done_before < 10, "the run should not have finished: {done_before} steps");

    // Restarted: the same command resumes the run and finishes it.
    o.restart();
    let out = o.run().output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resumed run failed:\n{stderr}");
    assert!(stderr.contains("resuming"), "the run was not resumed:\n{stderr}");
    let runs = run_dirs(o.dir.path());
    assert_eq!(runs.len(), 1, "resumed in place: {runs:?}");
    assert!(metrics(&runs[0])["eval"]["weighted_f1"].is_f64());
}

#[test]
fn server_back_within_the_retry_window_lets_the_same_run_continue() {
    // 8 retries, backoff 0.5 s doubling to 2 s, 2 s request timeout: ~25 s of patience.
    let o = Outage::new("blip", 8, 0.5);
    let mut child = o.run().spawn().expect("spawn");
    // The server process is stopped (SIGSTOP: requests hang and time out) for 4 s, then continued with
    // its objects intact, as a storage server that comes back.
    wait_for_steps(&mut child, o.dir.path(), 1);
    o.server.signal("-STOP");
    std::thread::sleep(Duration::from_secs(4));
    o.server.signal("-CONT");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the run did not survive the outage:\n{stderr}");
    assert!(stderr.contains("failed; retrying") && stderr.contains("succeeded after retrying"), "no retry seen:\n{stderr}");
    assert!(metrics(&run_dirs(o.dir.path())[0])["eval"]["weighted_f1"].is_f64());
}

#[test]
fn quickstart_runs_unchanged_with_its_dataset_root_on_s3() {
    let (_guard, endpoint) = moto::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let qs = repo().join("recipes/quickstart.toml");
    let q = qs.to_str().expect("utf8");
    let bucket = moto::bucket_name("quickstart");
    push(&endpoint, &qs, &bucket);
    let roots = format!("data.roots.synth=s3://{bucket}/synth");
    let runs = format!("runtime.runs_dir={}", dir.path().join("runs").display());
    let cache = format!("runtime.cache_dir={}", dir.path().join("cache").display());
    let out = ok(emollama(&endpoint, &["run", q, "--no-progress", "--set", &roots, "--set", &runs, "--set", &cache]).output().expect("spawn"), "quickstart from S3");
    assert!(out.contains("weighted F1"), "{out}");
    let run = &run_dirs(dir.path())[0];
    let m = metrics(run);
    let f1 = m["eval"]["weighted_f1"].as_f64().expect("weighted_f1");
    assert!(f1 >= 0.9, "quickstart from S3: weighted F1 {f1} below the quick start's 0.9 bar");
    assert_eq!(m["train_samples"].as_u64(), Some(2400));
    let resolved = std::fs::read_to_string(run.join("recipe.resolved.toml")).expect("resolved recipe");
    assert!(resolved.contains(&format!("synth = \"s3://{bucket}/synth\"")), "{resolved}");
}
