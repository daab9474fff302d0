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

/// stdout and stderr, without the log's colour escapes.
fn text(o: &Output) -> String {
    let all = format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let mut out = String::with_capacity(all.len());
    let mut chars = all.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
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

#[test]
fn real_clips_get_faces_the_peak_frame_and_an_asr_transcript_and_a_killed_batch_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = common::train_with_faces(tmp.path(), &cache, 8);
    let folder = tmp.path().join("real");
    std::fs::create_dir_all(&folder).expect("folder");
    for f in ["WolfgangLanger_Pexels.mp4", "carphone_pristine.mp4", "jfk.wav", "no_face.mp4", "single_face.mp4"] {
        std::os::unix::fs::symlink(common::media(f), folder.join(f)).expect("link");
    }
    // Whisper comes from the models cache (`just fetch-models`), which the test's XDG_CACHE_HOME hides.
    let asr = emollama::model::asr::default_model_dir();
    assert!(asr.join("model.bin").is_file(), "{} is missing: run `just fetch-models`", asr.display());
    let out = tmp.path().join("real.jsonl");
    let args = [
        "predict", "--model", run.to_str().expect("utf8"), "--input", folder.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"),
        "--transcript", "asr", "--asr-model", asr.to_str().expect("utf8"), "--batch", "1", "--no-progress",
    ];
    // Killed once the first clip is written; the rerun predicts only the others.
    let mut child = Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(repo()).env("XDG_CACHE_HOME", &cache).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&out).map(|t| t.lines().count()).unwrap_or(0) < 1 && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let first = std::fs::read_to_string(&out).expect("output").lines().filter(|l| l.ends_with('}')).count();
    assert!((1..5).contains(&first), "killed after {first} clips");
    let o = emollama(&cache, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("finished before (skipped) ┆ {first} ")), "{}", text(&o));
    let got = lines(&out);
    assert_eq!(got.len(), 5, "{got:?}");
    let line = |id: &str| got.iter().find(|l| l["id"] == id).unwrap_or_else(|| panic!("no line for {id}")).clone();
    for l in &got {
        assert_eq!(l["ok"], true, "{l}");
        assert_eq!(l["scores"].as_object().map(|s| s.len()), Some(6), "{l}");
        assert!(l["reasoning"].is_string() && l["timings"]["total_s"].as_f64().is_some(), "{l}");
    }
    // A face in every sampled frame; the peak in the laughing half of the clip (crying 0-8 s, laughing 9-19 s).
    let w = line("WolfgangLanger_Pexels");
    assert_eq!(w["faces"]["frames_with_face"], 16, "{w}");
    let peak = w["peak_frame_s"].as_f64().expect("peak frame time");
    assert!(peak > 0.0 && peak < 19.7, "{w}");
    assert_eq!(w["modalities"], serde_json::json!(["video", "audio"]));
    assert!(w["faces"]["mean_box"].is_array() && w["faces"]["peak_expression"].is_string(), "{w}");
    // Silent audio: no words.
    assert_eq!(w["transcript_source"], "none", "{w}");
    let n = line("no_face");
    assert_eq!(n["faces"]["frames_with_face"], 0, "{n}");
    assert!(n["peak_frame_s"].is_null(), "{n}");
    let c = line("carphone_pristine");
    assert_eq!(c["modalities"], serde_json::json!(["video"]), "no audio stream: video only: {c}");
    assert!(c["faces"]["frames_with_face"].as_u64().unwrap_or(0) >= 12, "{c}");
    let j = line("jfk");
    assert_eq!(j["modalities"], serde_json::json!(["audio"]), "an audio file: audio only: {j}");
    assert_eq!(j["transcript_source"], "asr");
    let wer = emollama::model::asr::word_error_rate(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
        j["transcript"].as_str().expect("transcript"),
    );
    assert!(wer <= 0.10, "WER {wer}: {j}");
    assert!(j["faces"].is_null(), "{j}");
}

#[test]
fn prompt_transcript_asr_transcribes_a_runs_samples_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let asr = emollama::model::asr::default_model_dir();
    assert!(asr.join("model.bin").is_file(), "{} is missing: run `just fetch-models`", asr.display());
    let recipe = tmp.path().join("asr.toml");
    let body = format!(
        r#"extends = [{base:?}]
name = "asr"

[runtime]
runs_dir = {runs:?}
threads = 2

[data.synth]
seed = 5
train = 6
val = 0
test = 2

[prompt]
transcript = "asr"

[validation]
enabled = false

[[stage]]
name = "s"
tasks = ["emotion"]
steps = 1
batch_size = 2
"#,
        base = repo().join("recipes/base/tiny.toml").display().to_string(),
        runs = tmp.path().join("runs").display().to_string(),
    );
    std::fs::write(&recipe, body).expect("recipe");
    // EMOLLAMA_CACHE points the models cache (Whisper) at the real one while XDG_CACHE_HOME isolates the rest.
    let models = asr.parent().and_then(Path::parent).expect("cache root");
    let run = |fresh: &str| {
        Command::new(env!("CARGO_BIN_EXE_emollama"))
            .args(["run", recipe.to_str().expect("utf8"), "--no-progress", fresh])
            .current_dir(repo())
            .env("XDG_CACHE_HOME", &cache)
            .env("EMOLLAMA_CACHE", models)
            .output()
            .expect("spawn")
    };
    let o = run("--fresh");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("transcribed=8") && text(&o).contains("cached=0"), "{}", text(&o));
    let o = run("--fresh");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("transcribed=0") && text(&o).contains("cached=8"), "transcribed once: {}", text(&o));
}
