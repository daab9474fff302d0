//! The reasoning judge end to end: EMER clue and label overlap on a few description pairs, with the local
//! SmolLM2 GGUF (`just fetch-models`) and over HTTP against llama.cpp's OpenAI-compatible server serving the
//! same GGUF (`python -m llama_cpp.server`, from `tools/install_llama_cpp.sh`), started and stopped by PID
//! here. SmolLM2-135M is a weak judge: the tests check the flow, that every reply is scored or counted as
//! unparsed, and that the per-pair replies are written, not the quality of the scores.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::repo;

fn cache() -> PathBuf {
    std::env::var("EMOLLAMA_CACHE").map(PathBuf::from).unwrap_or_else(|_| {
        std::env::var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")).join("emollama")
    })
}

fn gguf() -> PathBuf {
    let p = cache().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} missing: run `just fetch-models` (tools/setup.sh does)", p.display());
    p
}

fn write_pairs(dir: &Path) -> (PathBuf, PathBuf) {
    let refs = dir.join("refs.csv");
    let preds = dir.join("preds.csv");
    std::fs::write(&refs, "names,reasons\ns1,\"Her brows are drawn together and her voice trembles as she says she lost her job, so she is sad.\"\ns2,\"He grins and laughs loudly about his holiday, so he is happy.\"\n").expect("write");
    std::fs::write(&preds, "name,reason\ns1,\"She looks down and speaks quietly; she is sad.\"\ns2,\"He speaks calmly; he is neutral.\"\ns9,\"No reference for this one.\"\n").expect("write");
    (refs, preds)
}

fn judge(args: &[&str]) -> (serde_json::Value, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (refs, preds) = write_pairs(dir.path());
    let out = dir.path().join("items.jsonl");
    let mut all = vec!["judge", "--references", refs.to_str().expect("utf8"), "--predictions", preds.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--json", "--max-tokens", "48"];
    all.extend_from_slice(args);
    let o = Command::new(env!("CARGO_BIN_EXE_emollama")).args(&all).current_dir(repo()).output().expect("spawn emollama");
    assert!(o.status.success(), "judge failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary json");
    let items = std::fs::read_to_string(&out).expect("items").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    (summary, items)
}

fn check(summary: &serde_json::Value, items: &[serde_json::Value]) {
    assert_eq!((summary["n"].as_u64(), summary["unmatched_predictions"].as_u64()), (Some(2), Some(1)), "{summary}");
    assert_eq!(items.len(), 2);
    for (kind, score, reply) in [("clue", "clue_score", "clue_reply"), ("label", "label_score", "label_reply")] {
        let parsed = items.iter().filter(|i| i[score].is_f64()).count() as u64;
        assert_eq!(parsed + summary[format!("{kind}_unparsed")].as_u64().expect("count"), 2, "{summary}");
        assert!(items.iter().all(|i| !i[reply].as_str().unwrap_or("").trim().is_empty()), "empty {kind} reply: {items:?}");
        assert!(items.iter().filter_map(|i| i[score].as_f64()).all(|s| (1.0..=10.0).contains(&s)));
        match summary[format!("{kind}_overlap")].as_f64() {
            Some(m) => assert!((1.0..=10.0).contains(&m) && parsed > 0),
            None => assert_eq!(parsed, 0),
        }
    }
    assert!(items.iter().all(|i| i["truth_emotions"].is_string() && i["predicted_emotions"].is_string()));
}

#[test]
fn local_gguf_judge_scores_description_pairs() {
    let (summary, items) = judge(&["--judge", &format!("local:{}", gguf().display())]);
    assert!(summary["judge"].as_str().is_some_and(|j| j.starts_with("local:")), "{summary}");
    check(&summary, &items);
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn http_judge_against_llama_cpp_server_on_the_same_gguf() {
    let python = std::env::var("EMOLLAMA_LLAMA_CPP_PYTHON").map(PathBuf::from).unwrap_or_else(|_| {
        std::env::var("EMOLLAMA_PY").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/emollama-py")).join("bin/python")
    });
    assert!(python.is_file(), "{} missing: run `bash tools/install_llama_cpp.sh` (tools/setup.sh does)", python.display());
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
    let model = gguf();
    let child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model", model.to_str().expect("utf8"), "--host", "127.0.0.1", "--port", &port.to_string(), "--n_ctx", "2048", "--n_threads", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama_cpp.server");
    let server = Server(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(120), "llama_cpp.server did not listen within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!("http://127.0.0.1:{port}/v1");
    let (summary, items) = judge(&["--judge", &url, "--model", "smollm2"]);
    assert!(summary["judge"].as_str().is_some_and(|j| j.contains(&url)), "{summary}");
    check(&summary, &items);

    // MER-OV with the judge grouping synonyms (the reference's GPT step): scored, and the judge named.
    let dir = tempfile::tempdir().expect("tempdir");
    let (gt, pred) = (dir.path().join("gt.csv"), dir.path().join("pred.csv"));
    std::fs::write(&gt, "name,openset\ns1,\"['happy', 'excited']\"\ns2,\"['sad']\"\n").expect("write");
    std::fs::write(&pred, "name,openset\ns1,\"['joyful']\"\ns2,\"['sad', 'tired']\"\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["score", "--labels", gt.to_str().expect("utf8"), "--predictions", pred.to_str().expect("utf8"), "--judge", &url, "--judge-model", "smollm2", "--json"])
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["ov_grouping_judge"].as_str().is_some_and(|j| j.contains(&url)) && v["ov_grouping_unparsed"].as_u64().is_some_and(|n| n <= 2), "{v}");
    // s2's exact `sad` always matches, whatever the grouping: at least half of s2's prediction is right.
    assert!(v["ov_accuracy"].as_f64().is_some_and(|a| (0.25..=1.0).contains(&a)), "{v}");
    drop(server);
    // The server gone: a clear error naming the endpoint, not a hang or a panic.
    let dir = tempfile::tempdir().expect("tempdir");
    let (refs, preds) = write_pairs(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["judge", "--references", refs.to_str().expect("utf8"), "--predictions", preds.to_str().expect("utf8"), "--judge", &url])
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("{url}/chat/completions")), "{err}");
}
