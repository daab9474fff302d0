//! `emollama predict`: a trained run applied to files reproduces the run's own test predictions; its class
//! scores agree with the generated label; reruns skip finished clips; bad inputs get error lines and exit
//! status 3 without stopping the batch; real clips get faces, the peak frame and the modalities they have.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::repo;

fn emollama(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(repo()).env("XDG_CACHE_HOME", cache).output().expect("spawn emollama")
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).expect("output").lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

fn argmax(scores: &serde_json::Value) -> String {
    let m = scores.as_object().expect("scores object");
    m.iter().max_by(|a, b| a.1.as_f64().unwrap_or(0.0).total_cmp(&b.1.as_f64().unwrap_or(0.0))).map(|(k, _)| k.clone()).expect("non-empty")
}

/// Trains the tiny quick-start model for a few steps on a small synthetic set; returns its run directory.
fn train(tmp: &Path, cache: &Path) -> PathBuf {
    let recipe = tmp.join("r.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "predictme"

[runtime]
runs_dir = {runs:?}
threads = 2

[data.synth]
seed = 11
train = 36
val = 6
test = 18

[validation]
enabled = false

[[stage]]
name = "s"
tasks = ["emotion", "reason"]
steps = 60
batch_size = 6
lr = 3e-3

[eval]
task = "reason"
max_new_tokens = 40
"#,
        base = repo().join("recipes/base/tiny.toml").display().to_string(),
        runs = tmp.join("runs").display().to_string(),
    );
    std::fs::write(&recipe, body).expect("recipe");
    let o = emollama(cache, &["run", recipe.to_str().expect("utf8"), "--no-progress"]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::read_dir(tmp.join("runs")).expect("runs").flatten().map(|e| e.path()).find(|p| p.is_dir()).expect("run dir")
}

/// The synthetic test clips of the run, as a folder of links with sidecar transcripts.
fn test_folder(cache: &Path, dir: &Path) -> Vec<String> {
    let synth = std::fs::read_dir(cache.join("emollama")).expect("cache").flatten().map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("synth-"))).expect("synthetic dataset");
    std::fs::create_dir_all(dir).expect("folder");
    let mut ids = Vec::new();
    for line in std::fs::read_to_string(synth.join("manifest.jsonl")).expect("manifest").lines() {
        let s: serde_json::Value = serde_json::from_str(line).expect("json");
        if s["split"] != "test" {
            continue;
        }
        let id = s["id"].as_str().expect("id").to_string();
        std::os::unix::fs::symlink(synth.join(s["file"].as_str().expect("file")), dir.join(format!("{id}.mp4"))).expect("link");
        std::fs::write(dir.join(format!("{id}.txt")), s["transcript"].as_str().expect("transcript")).expect("sidecar");
        ids.push(id);
    }
    ids
}

#[test]
fn predict_reproduces_the_runs_test_predictions_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = train(tmp.path(), &cache);
    let folder = tmp.path().join("clips");
    let ids = test_folder(&cache, &folder);
    assert_eq!(ids.len(), 18);
    let out = tmp.path().join("preds.jsonl");
    let args = ["predict", "--model", run.to_str().expect("utf8"), "--input", folder.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--no-progress"];
    let o = emollama(&cache, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("predicted now"), "a summary table: {}", text(&o));

    let got = lines(&out);
    assert_eq!(got.len(), 18);
    let run_preds: Vec<serde_json::Value> = lines(&run.join("predictions.jsonl"));
    let (mut agree, mut from_reasoning) = (0, 0);
    for p in &run_preds {
        let line = got.iter().find(|l| l["id"] == p["id"]).unwrap_or_else(|| panic!("no line for {}", p["id"]));
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["reasoning"], p["text"], "the run's generated text, exactly");
        let label = if p["unparsed"] == true { None } else { p["prediction"].as_str() };
        if let Some(l) = label {
            assert_eq!(line["label"], l, "the run's label, exactly: {line}");
            assert_eq!(line["label_from"], "reasoning");
        }
        assert_eq!(line["transcript_source"], "given");
        assert_eq!(line["modalities"], serde_json::json!(["video", "audio"]));
        let scores = line["scores"].as_object().expect("scores");
        assert_eq!(scores.len(), 6, "one probability per class: {line}");
        let total: f64 = scores.values().filter_map(|v| v.as_f64()).sum();
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to 1: {total}");
        if line["scores_from"] == "reasoning" {
            assert!(line["emotion_prompt_scores"].is_object(), "--task both also asks the direct question: {line}");
            from_reasoning += 1;
        }
        agree += (argmax(&line["scores"]) == line["label"].as_str().unwrap_or_default()) as usize;
    }
    assert!(agree * 100 >= 95 * run_preds.len(), "scores' argmax agrees with the label on {agree} of {}", run_preds.len());
    assert!(from_reasoning * 2 >= run_preds.len(), "most reasonings name a class: {from_reasoning} of {}", run_preds.len());

    // Killed mid-batch: the output holds 7 finished lines and a cut one; the rerun predicts only the rest.
    let body = std::fs::read_to_string(&out).expect("output");
    let kept: Vec<&str> = body.lines().take(7).collect();
    std::fs::write(&out, format!("{}\n{}", kept.join("\n"), &body.lines().nth(7).expect("line 8")[..40])).expect("truncate");
    let o = emollama(&cache, &args);
    assert!(o.status.success(), "{}", text(&o));
    let summary = text(&o);
    assert!(summary.contains("predicted now             ┆ 11") && summary.contains("finished before (skipped) ┆ 7"), "{summary}");
    let again = lines(&out);
    assert_eq!(again.len(), 18, "no duplicate and no cut line");
    for l in &got {
        assert_eq!(again.iter().find(|a| a["id"] == l["id"]).map(|a| (&a["label"], &a["reasoning"], &a["key"])), Some((&l["label"], &l["reasoning"], &l["key"])));
    }
    // Another task is another key: nothing is skipped.
    let o = emollama(&cache, &["predict", "--model", run.to_str().expect("utf8"), "--input", folder.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--task", "emotion", "--no-progress"]);
    assert!(o.status.success() && text(&o).contains("predicted now             ┆ 18"), "{}", text(&o));
    let emotion_only = lines(&out).into_iter().filter(|l| l["reasoning"].is_null()).collect::<Vec<_>>();
    assert_eq!(emotion_only.len(), 18);
    assert!(emotion_only.iter().all(|l| l["label_from"] == "scores" && l["scores_from"] == "emotion_prompt"));

    // Bad inputs: one error line each, the batch goes on, exit status 3.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).expect("bad");
    let good = folder.join(format!("{}.mp4", ids[0]));
    let bytes = std::fs::read(&good).expect("clip");
    std::fs::write(bad.join("truncated.mp4"), &bytes[..bytes.len() / 3]).expect("truncated");
    std::fs::write(bad.join("corrupt.mp4"), b"this is not a video at all, just text bytes").expect("corrupt");
    std::fs::write(bad.join("empty.wav"), wav_header(0)).expect("empty wav");
    std::fs::write(bad.join("notes.xyz"), b"x").expect("xyz");
    let manifest = bad.join("m.csv");
    let rows = [good.display().to_string(), "truncated.mp4".into(), "corrupt.mp4".into(), "empty.wav".into(), "notes.xyz".into(), "missing.mp4".into(), good.display().to_string()];
    let mut csv = String::from("id,path\n");
    for (k, r) in rows.iter().enumerate() {
        csv.push_str(&format!("c{k},{r}\n"));
    }
    std::fs::write(&manifest, csv).expect("manifest");
    let bad_out = tmp.path().join("bad.jsonl");
    let o = emollama(&cache, &["predict", "--model", run.to_str().expect("utf8"), "--input", manifest.to_str().expect("utf8"), "--out", bad_out.to_str().expect("utf8"), "--max-seconds", "10", "--no-progress"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let got = lines(&bad_out);
    assert_eq!(got.len(), 7, "one line per clip");
    let err = |id: &str| got.iter().find(|l| l["id"] == id).and_then(|l| l["error"].as_str()).map(str::to_string);
    assert!(err("c0").is_none() && err("c6").is_none(), "good clips still predicted");
    for (id, what) in [("c1", "truncated"), ("c2", "not a readable media file"), ("c4", "unknown extension"), ("c5", "does not exist")] {
        let e = err(id).unwrap_or_else(|| panic!("{id} should fail: {got:?}"));
        assert!(e.contains(what), "{id}: {e}");
    }
    let e = err("c3").expect("zero-length audio fails");
    assert!(e.contains("audio") || e.contains("not a readable media file"), "{e}");
    assert!(text(&o).contains("failed: c5"), "failures listed in the summary: {}", text(&o));
    // Over --max-seconds.
    let o = emollama(&cache, &["predict", "--model", run.to_str().expect("utf8"), "--input", good.to_str().expect("utf8"), "--max-seconds", "1", "--no-progress"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("over --max-seconds 1"), "{}", text(&o));
    // Nothing could run: exit status 1.
    let o = emollama(&cache, &["predict", "--model", tmp.path().join("nope").to_str().expect("utf8"), "--input", good.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}

/// A 16 kHz mono 16-bit WAV header for `samples` samples.
fn wav_header(samples: u32) -> Vec<u8> {
    let data = samples * 2;
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&16000u32.to_le_bytes());
    h.extend_from_slice(&32000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data.to_le_bytes());
    h
}
