//! Recipes shared between teams: `extends` naming bases on a real S3 server (moto) and a plain HTTP
//! server on 127.0.0.1, pinned by sha256; the cached copy used when the server is gone; relative paths
//! leaving a remote base's root and remote-to-local references refused; `recipe lock`, `run` with a
//! stale lock and `--relock`, the lock in `run_info.json`; `recipe diff` of recipes and of run
//! directories; `hf://` bases from a pre-filled hf-hub cache (the hub itself is not reachable here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::http::serve;
use common::moto::{self, Moto};
use common::repo;
use sha2::{Digest, Sha256};

/// A self-contained base (remote bases cannot extend local files): the tiny model on a very small
/// synthetic dataset, one short stage, so a run takes seconds. Its stage comes from `parts/stage.toml`,
/// a base of its own named relatively.
const BASE: &str = r#"extends = ["parts/stage.toml"]
name = "remote-base"
seed = 0

[runtime]
device = "cpu"
threads = 2

[data]
dataset = "synth"
frames = { mode = "uniform", n = 2 }
width = 32
height = 32
audio_seconds = 0.5

[data.synth]
seed = 3
train = 8
val = 0
test = 4

[model]
llm = "tiny-llama"
video_encoder = "tiny-cnn-frames"
audio_encoder = "tiny-wave-audio"
projector = "linear"

[validation]
enabled = false

[eval]
max_new_tokens = 4
"#;

const STAGE: &str = r#"[[stage]]
name = "only"
tasks = ["emotion"]
steps = 2
batch_size = 4
lr = 1e-3
warmup_steps = 1
log_every = 1
"#;

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `emollama ARGS` from the repository root, with the test's own cache and moto credentials.
fn emollama(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emollama"));
    c.args(args)
        .current_dir(repo())
        .env("XDG_CACHE_HOME", cache)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap_or_else(|e| panic!("spawn emollama {args:?}: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what} failed:\nstdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    o
}

fn fails(o: Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} should have failed:\n{}", stdout(&o));
    stderr(&o)
}

/// Uploads `text` to `s3://bucket/key` (a signed request, with moto's test credentials given to the
/// client directly: the test process's environment is left alone).
fn put_s3(endpoint: &str, bucket: &str, key: &str, text: &str) {
    use object_store::ObjectStoreExt;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("S3 client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(store.put(&object_store::path::Path::from(key), bytes::Bytes::from(text.to_string()).into())).unwrap_or_else(|e| panic!("PUT {key}: {e}"));
}

/// A local recipe extending `extends` (a TOML array), writing runs below `dir/runs`, reading remote
/// bases with no retries (the tests stop servers on purpose).
fn local_recipe(dir: &Path, name: &str, extends: &str, endpoint: Option<&str>) -> PathBuf {
    let storage_endpoint = endpoint.map(|e| format!("endpoint = {e:?}\nallow_http = true\n")).unwrap_or_default();
    let body = format!(
        "extends = {extends}\nname = {name:?}\n\n[runtime]\nruns_dir = {:?}\n\n[storage]\n{storage_endpoint}retries = 0\ntimeout_s = 5.0\n",
        dir.join("runs").display().to_string()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).expect("write recipe");
    p
}

fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("runs")).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

fn run_info(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("run_info.json")).expect("run_info.json")).expect("json")
}

#[test]
fn s3_base_pinned_runs_then_changed_then_offline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, cache) = (tmp.path(), tmp.path().join("cache"));
    let mut server = Moto::start();
    let endpoint = server.endpoint();
    let bucket = moto::bucket_name("recipes");
    moto::create_bucket(&endpoint, &bucket);
    put_s3(&endpoint, &bucket, "team/base.toml", BASE);
    put_s3(&endpoint, &bucket, "team/parts/stage.toml", STAGE);
    let uri = format!("s3://{bucket}/team/base.toml");
    let pin = sha256(BASE);
    let r = local_recipe(dir, "pinned", &format!("[{{ uri = {uri:?}, sha256 = {pin:?} }}]"), Some(&endpoint));
    let rs = r.to_str().expect("utf8");

    // A recipe extending the pinned remote base (which extends `parts/stage.toml` relatively) runs.
    let out = ok(emollama(&cache, &["run", rs, "--no-progress"], &[]), "run with a pinned S3 base");
    let runs = run_dirs(dir);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let resolved = std::fs::read_to_string(runs[0].join("recipe.resolved.toml")).expect("resolved");
    assert!(resolved.contains("name = \"pinned\"") && resolved.contains("name = \"only\""), "{resolved}");
    assert!(runs[0].join("metrics.json").is_file(), "{}", stdout(&out));
    // run_info.json records the bases the run used, with their hashes (no lock file here).
    let info = run_info(&runs[0]);
    let bases = info["recipe_lock"]["lock"]["base"].as_array().expect("bases");
    assert_eq!(bases.len(), 2, "{info}");
    assert_eq!(bases[0]["name"], format!("s3://{bucket}/team/parts/stage.toml"));
    assert_eq!(bases[0]["sha256"], sha256(STAGE));
    assert_eq!(bases[1]["name"], uri.as_str());
    assert_eq!(bases[1]["sha256"], pin.as_str());
    assert!(info["recipe_lock"]["file"].is_null(), "{info}");

    // Unpinned, the same base loads; `recipe check` warns and prints the pin to add.
    let u = local_recipe(dir, "unpinned", &format!("[{uri:?}]"), Some(&endpoint));
    let check = ok(emollama(&cache, &["recipe", "check", u.to_str().expect("utf8")], &[]), "check unpinned");
    let warn = stderr(&check);
    assert!(warn.contains(&format!("remote base {uri} is not pinned")), "{warn}");
    assert!(warn.contains(&format!("{{ uri = \"{uri}\", sha256 = \"{pin}\" }}")), "{warn}");

    // The base changes on the server: the pinned recipe fails, naming both hashes and the URI.
    let changed = BASE.replace("max_new_tokens = 4", "max_new_tokens = 5");
    put_s3(&endpoint, &bucket, "team/base.toml", &changed);
    let err = fails(emollama(&cache, &["recipe", "check", rs], &[]), "check after the base changed");
    assert!(err.contains(&uri) && err.contains(&pin) && err.contains(&sha256(&changed)), "{err}");
    assert!(err.contains("pinned to sha256") && err.contains(&format!("{}:1", r.display())), "{err}");

    // Offline: the server is stopped; the cached copy (the pinned content: a mismatching download is
    // not cached) is used, with a warning.
    server.stop();
    let offline = ok(emollama(&cache, &["recipe", "show", rs], &[]), "show offline");
    assert!(stdout(&offline).contains("max_new_tokens = 4"), "{}", stdout(&offline));
    let check = ok(emollama(&cache, &["recipe", "check", rs], &[]), "check offline");
    assert!(stderr(&check).contains(&format!("remote base {uri} was read from the local cache")), "{}", stderr(&check));
    // A base never read before has no cached copy: the error names the URI and says so.
    let other = local_recipe(dir, "never", &format!("[\"s3://{bucket}/team/other.toml\"]"), Some(&endpoint));
    let err = fails(emollama(&cache, &["recipe", "check", other.to_str().expect("utf8")], &[]), "uncached base offline");
    assert!(err.contains(&format!("s3://{bucket}/team/other.toml")) && err.contains("no cached copy"), "{err}");
    // Another cache (another machine) offline has nothing to fall back on.
    let err = fails(emollama(&dir.join("cache2"), &["recipe", "check", rs], &[]), "empty cache offline");
    assert!(err.contains(&uri) && err.contains("no cached copy"), "{err}");
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn http_bases_escapes_lock_and_diff() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, cache) = (tmp.path(), tmp.path().join("cache"));
    let site = dir.join("site");
    write(&site, "team/base.toml", BASE);
    write(&site, "team/parts/stage.toml", STAGE);
    let (_server, port) = serve(&site);
    let url = format!("http://127.0.0.1:{port}/team/base.toml");

    // Relative extends inside a remote base resolve against the base's folder.
    let r = local_recipe(dir, "web", &format!("[{url:?}]"), None);
    let rs = r.to_str().expect("utf8");
    let show = ok(emollama(&cache, &["recipe", "show", rs], &[]), "show http base");
    assert!(stdout(&show).contains("name = \"only\""), "{}", stdout(&show));

    // An error inside a remote base names its URI and line.
    write(&site, "team/typo.toml", "[model]\nllm = \"tiny-llama\"\nprojecter = \"linear\"\n");
    let t = local_recipe(dir, "typo", &format!("[\"http://127.0.0.1:{port}/team/typo.toml\"]"), None);
    let err = fails(emollama(&cache, &["recipe", "check", t.to_str().expect("utf8")], &[]), "typo in a remote base");
    assert!(err.contains(&format!("http://127.0.0.1:{port}/team/typo.toml:3: model.projecter: unknown key")), "{err}");

    // `..` above the base's root, local paths and file:// from a remote base are refused.
    let local_file = r.display().to_string();
    for (name, entry, why) in [
        ("escape", "../outside.toml".to_string(), "leaves the base's root"),
        ("deep", "parts/../../outside.toml".to_string(), "leaves the base's root"),
        ("abs", local_file.clone(), "is a local path"),
        ("file", format!("file://{local_file}"), "is a local path"),
    ] {
        write(&site, "outside.toml", "seed = 9\n");
        write(&site, &format!("team/{name}.toml"), &format!("extends = [{entry:?}]\n"));
        let e = local_recipe(dir, name, &format!("[\"http://127.0.0.1:{port}/team/{name}.toml\"]"), None);
        let err = fails(emollama(&cache, &["recipe", "check", e.to_str().expect("utf8")], &[]), name);
        assert!(err.contains(why) && err.contains(&format!("http://127.0.0.1:{port}/team/{name}.toml:1")), "{name}: {err}");
    }

    // A remote recipe is at most 1 MiB.
    write(&site, "team/huge.toml", &format!("# {}\n", "x".repeat(1 << 20)));
    let h = local_recipe(dir, "huge", &format!("[\"http://127.0.0.1:{port}/team/huge.toml\"]"), None);
    let err = fails(emollama(&cache, &["recipe", "check", h.to_str().expect("utf8")], &[]), "huge base");
    assert!(err.contains("huge.toml") && err.contains("larger than 1 MiB"), "{err}");

    // `recipe lock` writes RECIPE.lock: both bases with their URIs and hashes, the manifests and card.
    let out = ok(emollama(&cache, &["recipe", "lock", rs], &[]), "recipe lock");
    assert!(stdout(&out).contains("2 base(s), 3 manifest(s), 1 dataset card(s)"), "{}", stdout(&out));
    let lock_file = dir.join("web.toml.lock");
    let lock: toml::Table = std::fs::read_to_string(&lock_file).expect("lock").parse().expect("lock toml");
    let bases = lock["base"].as_array().expect("bases");
    assert_eq!(bases[1]["name"].as_str(), Some(url.as_str()));
    assert_eq!(bases[1]["sha256"].as_str(), Some(sha256(BASE).as_str()));
    let card = &lock["dataset_card"].as_array().expect("cards")[0];
    assert_eq!(card["name"].as_str(), Some("synth"));
    let card_text = std::fs::read_to_string(repo().join(card["path"].as_str().expect("path"))).expect("card");
    assert_eq!(card["sha256"].as_str(), Some(sha256(&card_text).as_str()));

    // The base changes: `run` refuses the stale lock, naming the base and both hashes, and makes no run.
    let changed = BASE.replace("max_new_tokens = 4", "max_new_tokens = 3");
    write(&site, "team/base.toml", &changed);
    let err = fails(emollama(&cache, &["run", rs, "--no-progress"], &[]), "run with a stale lock");
    assert!(err.contains("no longer matches its lock") && err.contains(&url), "{err}");
    assert!(err.contains(&sha256(BASE)) && err.contains(&sha256(&changed)) && err.contains("--relock"), "{err}");
    assert!(run_dirs(dir).is_empty());

    // `--relock` rewrites the lock and runs; run_info.json records the lock file and the new hash.
    ok(emollama(&cache, &["run", rs, "--relock", "--no-progress"], &[]), "run --relock");
    let lock: toml::Table = std::fs::read_to_string(&lock_file).expect("lock").parse().expect("lock toml");
    assert_eq!(lock["base"].as_array().expect("bases")[1]["sha256"].as_str(), Some(sha256(&changed).as_str()));
    let runs = run_dirs(dir);
    assert_eq!(runs.len(), 1);
    let info = run_info(&runs[0]);
    assert_eq!(info["recipe_lock"]["file"].as_str(), Some(lock_file.to_str().expect("utf8")), "{info}");
    assert_eq!(info["recipe_lock"]["lock"]["base"][1]["sha256"], sha256(&changed).as_str());

    // `recipe diff`: only what differs, each value with where it came from (a remote base's URI:line,
    // a file:line); the same environment on both sides is no difference.
    let b = write(dir, "web_b.toml", "extends = [\"web.toml\"]\nname = \"web-b\"\n[eval]\nmax_new_tokens = 7\n");
    let d = ok(emollama(&cache, &["recipe", "diff", rs, b.to_str().expect("utf8")], &[("EMOLLAMA_SEED", "5")]), "diff");
    let text = stdout(&d);
    let block = |text: &str, key: &str| text.split("\n\n").find(|b| b.starts_with(&format!("{key}\n"))).unwrap_or_else(|| panic!("no {key} in:\n{text}")).to_string();
    assert!(text.contains("2 key(s) differ"), "{text}");
    let e = block(&text, "eval.max_new_tokens");
    assert!(e.contains(&format!("A  3  {url}:")) && e.contains(&format!("B  7  {}:4", b.display())), "{e}");
    let n = block(&text, "name");
    assert!(n.contains(&format!("\"web\"    {}:2", r.display())) && n.contains(&format!("\"web-b\"  {}:2", b.display())), "{n}");

    // Two run directories: their recipe.resolved.toml is the provenance.
    ok(emollama(&cache, &["run", rs, "--no-progress", "--fresh", "--set", "eval.max_new_tokens=2"], &[]), "second run");
    let runs = run_dirs(dir);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (r0, r1) = (runs[0].to_str().expect("utf8"), runs[1].to_str().expect("utf8"));
    let text = stdout(&ok(emollama(&cache, &["recipe", "diff", r0, r1], &[("EMOLLAMA_SEED", "5")]), "diff runs"));
    assert!(text.contains("1 key(s) differ"), "run directories ignore the environment:\n{text}");
    let e = block(&text, "eval.max_new_tokens");
    assert!(e.contains(&format!("A  3  {r0}/recipe.resolved.toml:")) && e.contains(&format!("B  2  {r1}/recipe.resolved.toml:")), "{e}");
    // A recipe against a run directory: an environment variable is named as the origin.
    let text = stdout(&ok(emollama(&cache, &["recipe", "diff", rs, r0], &[("EMOLLAMA_SEED", "5")]), "diff recipe vs run"));
    let s = block(&text, "seed");
    assert!(s.contains("A  5  environment variable EMOLLAMA_SEED") && s.contains(&format!("B  0  {r0}/recipe.resolved.toml:")), "{text}");
    // Not a run directory: the error says what to name.
    let err = fails(emollama(&cache, &["recipe", "diff", rs, dir.join("site").to_str().expect("utf8")], &[]), "diff a plain folder");
    assert!(err.contains("without recipe.resolved.toml"), "{err}");
}

#[test]
fn diff_origins_name_file_line_env_set_and_default() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = write(tmp.path(), "base.toml", "seed = 1\n[eval]\nmax_new_tokens = 4\n");
    let top = write(tmp.path(), "top.toml", "extends = [\"base.toml\"]\nname = \"t\"\n");
    let env = vec![("EMOLLAMA_SEED".to_string(), "3".to_string())];
    let a = emollama::recipe::load::load_recipe_with_env(&top, &[], &[]).expect("a");
    let b = emollama::recipe::load::load_recipe_with_env(&top, &["eval.max_new_tokens=9".to_string()], &env).expect("b");
    assert_eq!(a.origin_of("seed"), format!("{}:1", base.display()));
    assert_eq!(a.origin_of("name"), format!("{}:2", top.display()));
    assert_eq!(a.origin_of("runtime.threads"), "default");
    let d = emollama::recipe::diff::diff(&a, &b).expect("diff");
    let keys: Vec<(&str, &str, &str)> = d.iter().map(|x| (x.key.as_str(), x.a_from.as_str(), x.b_from.as_str())).collect();
    let base_line = |l: usize| format!("{}:{l}", base.display());
    assert_eq!(
        keys,
        vec![("eval.max_new_tokens", base_line(3).as_str(), "--set eval.max_new_tokens=9"), ("seed", base_line(1).as_str(), "environment variable EMOLLAMA_SEED")]
    );
    // A local base can be pinned too; a wrong pin names both hashes.
    let want = sha256(&std::fs::read_to_string(&base).expect("base"));
    let pinned = write(tmp.path(), "pinned.toml", &format!("extends = [{{ uri = \"base.toml\", sha256 = \"{want}\" }}]\n"));
    let loaded = emollama::recipe::load::load_recipe_with_env(&pinned, &[], &[]).expect("pinned local base");
    assert_eq!(loaded.file_records[0].pin.as_deref(), Some(want.as_str()));
    let wrong = write(tmp.path(), "wrong.toml", &format!("extends = [{{ uri = \"base.toml\", sha256 = \"{}\" }}]\n", "0".repeat(64)));
    let err = emollama::recipe::load::load_recipe_with_env(&wrong, &[], &[]).expect_err("wrong pin").to_string();
    assert!(err.contains(&want) && err.contains(&"0".repeat(64)) && err.contains("wrong.toml:1"), "{err}");
    let bad = write(tmp.path(), "bad.toml", "extends = [{ uri = \"base.toml\", sha = \"x\" }]\n");
    let err = emollama::recipe::load::load_recipe_with_env(&bad, &[], &[]).expect_err("bad key").to_string();
    assert!(err.contains("bad.toml:1: extends: unknown key `sha`"), "{err}");
}

/// The Hugging Face Hub is not reachable from the test machines: these use a pre-filled hf-hub cache
/// (the layout hf-hub itself writes: refs/<revision> holding the commit, snapshots/<commit>/<file>) and
/// an endpoint that refuses connections. Downloading from the real hub is not tested.
#[test]
fn hf_bases_from_the_hub_cache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, cache) = (tmp.path(), tmp.path().join("cache"));
    let hub = dir.join("hf");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = hub.join("models--team--recipes");
    write(&repo_dir, "refs/main", commit);
    write(&repo_dir, &format!("refs/{commit}"), commit);
    write(&repo_dir, &format!("snapshots/{commit}/recipes/base.toml"), BASE);
    write(&repo_dir, &format!("snapshots/{commit}/recipes/parts/stage.toml"), STAGE);
    let closed = common::moto::free_port();
    let hub_s = hub.to_str().expect("utf8");
    let endpoint = format!("http://127.0.0.1:{closed}");

    // Offline (HF_HUB_OFFLINE): the cached file of the branch, its relative base too.
    let main = local_recipe(dir, "hfmain", "[\"hf://team/recipes@main/recipes/base.toml\"]", None);
    let out = ok(emollama(&cache, &["recipe", "show", main.to_str().expect("utf8")], &[("HF_HUB_CACHE", hub_s), ("HF_HUB_OFFLINE", "1")]), "hf offline");
    assert!(stdout(&out).contains("name = \"only\""), "{}", stdout(&out));

    // A branch is asked of the hub first (it may have moved); unreachable, the cached copy is used.
    let out = ok(emollama(&cache, &["recipe", "check", main.to_str().expect("utf8")], &[("HF_HUB_CACHE", hub_s), ("HF_ENDPOINT", &endpoint)]), "hf unreachable");
    assert!(stderr(&out).contains("hf://team/recipes@main/recipes/base.toml was read from the local cache"), "{}", stderr(&out));

    // A commit revision never moves: the cached copy is final, pinned here as well.
    let pinned = local_recipe(dir, "hfcommit", &format!("[{{ uri = \"hf://team/recipes@{commit}/recipes/base.toml\", sha256 = \"{}\" }}]", sha256(BASE)), None);
    let out = ok(emollama(&cache, &["recipe", "check", pinned.to_str().expect("utf8")], &[("HF_HUB_CACHE", hub_s), ("HF_ENDPOINT", &endpoint)]), "hf commit");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // Not cached and the hub unreachable: the error names the URI and what to check.
    let missing = local_recipe(dir, "hfmissing", "[\"hf://team/recipes@main/recipes/missing.toml\"]", None);
    let err = fails(emollama(&cache, &["recipe", "check", missing.to_str().expect("utf8")], &[("HF_HUB_CACHE", hub_s), ("HF_ENDPOINT", &endpoint)]), "hf missing");
    assert!(err.contains("hf://team/recipes@main/recipes/missing.toml") && err.contains("HF_ENDPOINT"), "{err}");
    let err = fails(emollama(&cache, &["recipe", "check", missing.to_str().expect("utf8")], &[("HF_HUB_CACHE", hub_s), ("HF_HUB_OFFLINE", "1")]), "hf missing offline");
    assert!(err.contains("HF_HUB_OFFLINE is set"), "{err}");
    // Without a revision the URI is refused, saying how to write it.
    let norev = local_recipe(dir, "hfnorev", "[\"hf://team/recipes/base.toml\"]", None);
    let err = fails(emollama(&cache, &["recipe", "check", norev.to_str().expect("utf8")], &[]), "hf without revision");
    assert!(err.contains("hf://owner/repo@REVISION/path.toml"), "{err}");
}

#[test]
fn a_base_reached_twice_is_checked_against_each_pin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let common_base = write(tmp.path(), "common.toml", "seed = 4\n");
    let sha = sha256(&std::fs::read_to_string(&common_base).expect("read"));
    write(tmp.path(), "a.toml", "extends = [\"common.toml\"]\n");
    let top = write(tmp.path(), "top.toml", &format!("extends = [\"a.toml\", {{ uri = \"./common.toml\", sha256 = \"{}\" }}]\n", "f".repeat(64)));
    let err = emollama::recipe::load::load_recipe_with_env(&top, &[], &[]).expect_err("second pin").to_string();
    assert!(err.contains(&sha) && err.contains(&"f".repeat(64)) && err.contains("top.toml:1"), "{err}");
    let ok_top = write(tmp.path(), "ok.toml", &format!("extends = [\"a.toml\", {{ uri = \"common.toml\", sha256 = \"{sha}\" }}]\n"));
    let loaded = emollama::recipe::load::load_recipe_with_env(&ok_top, &[], &[]).expect("matching pin");
    assert_eq!(loaded.recipe.seed, 4);
}
