//! Read-only HTTP roots: a synthetic dataset served by a plain static HTTP server on 127.0.0.1
//! (`python3 -m http.server`), read by `data ls`, fetched by `data pull`, probed by URL; a path leaving
//! the root is rejected.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::http::serve;
use common::repo;

fn emollama(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(repo()).env("XDG_CACHE_HOME", cache).output().expect("spawn emollama")
}

#[test]
fn http_root_is_read_fetched_and_probed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A small synthetic dataset, generated into the test's own cache, served over HTTP.
    let cache = tmp.path().join("cache");
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, format!("extends = [{:?}]\n[data.synth]\nseed = 5\ntrain = 6\nval = 0\ntest = 6\n", repo().join("recipes/quickstart.toml"))).expect("recipe");
    let r = recipe.to_str().expect("utf8");
    let local = emollama(&cache, &["data", "ls", "synth", "--recipe", r, "--json", "--no-progress"]);
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let first: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&local.stdout).lines().next().expect("a sample")).expect("json");
    let clip = PathBuf::from(first["media"].as_str().expect("media"));
    let dataset_dir = clip.parent().and_then(Path::parent).expect("dataset dir").to_path_buf();
    let (_server, port) = serve(&dataset_dir);
    let root = format!("http://127.0.0.1:{port}");

    let ls = emollama(&cache, &["data", "ls", "synth", "--recipe", r, "--root", &root, "--no-progress"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    assert_eq!(text.lines().count(), 12);
    assert!(text.lines().all(|l| l.contains(&format!("{root}/clips/synth_"))), "{text}");

    let pull = emollama(&cache, &["data", "pull", "synth", "--recipe", r, "--root", &root, "--no-progress"]);
    let out = String::from_utf8_lossy(&pull.stdout);
    assert!(pull.status.success() && out.contains("12 remote files in the cache"), "{out}\n{}", String::from_utf8_lossy(&pull.stderr));
    let name = clip.file_name().and_then(|n| n.to_str()).expect("name");
    let probe = emollama(&cache, &["probe", &format!("{root}/clips/{name}"), "--json"]);
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let v: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("probe json");
    assert!(v["probe"]["duration_s"].as_f64().is_some_and(|d| d > 1.0), "{v}");

    // Features of a remote clip (the id is its file stem).
    let feats = tmp.path().join("feats.safetensors");
    let ex = emollama(&cache, &["extract", "--encoder", "hubert-tiny", "--input", &format!("{root}/clips/{name}"), "--out", feats.to_str().expect("utf8"), "--no-progress"]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    assert!(String::from_utf8_lossy(&ex.stdout).starts_with("1 samples extracted"), "{}", String::from_utf8_lossy(&ex.stdout));
    // Listing a plain static server is not possible: a clear error, not an empty dataset.
    let ex = emollama(&cache, &["extract", "--encoder", "hubert-tiny", "--input", &format!("{root}/clips/"), "--out", feats.to_str().expect("utf8"), "--no-progress"]);
    let err = String::from_utf8_lossy(&ex.stderr);
    assert!(!ex.status.success() && err.contains("listing needs a server that supports it"), "{err}");

    // A missing file is a clear not-found, without retries.
    let missing = emollama(&cache, &["probe", &format!("{root}/clips/nope.mp4")]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && err.contains(&format!("{root}/clips/nope.mp4: not found")) && !err.contains("retrying"), "{err}");

    // A manifest line pointing outside the root is rejected with its file and line.
    let evil = tmp.path().join("evil");
    std::fs::create_dir_all(&evil).expect("dir");
    let manifest = std::fs::read_to_string(dataset_dir.join("manifest.jsonl")).expect("manifest");
    let mut lines: Vec<String> = manifest.lines().map(str::to_string).collect();
    lines[2] = lines[2].replace("\"file\":\"clips/", "\"file\":\"../../clips/");
    std::fs::write(evil.join("manifest.jsonl"), lines.join("\n") + "\n").expect("write");
    let (_evil_server, evil_port) = serve(&evil);
    let bad = emollama(&cache, &["data", "ls", "synth", "--recipe", r, "--root", &format!("http://127.0.0.1:{evil_port}"), "--no-progress"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("manifest.jsonl line 3") && err.contains("leaves the dataset root"), "{err}");
}
