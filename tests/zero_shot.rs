//! The zero-shot model (`recipes/zero_shot.toml`: the face and voice described in words, Whisper's
//! transcript, SmolLM2-135M-Instruct's likelihood of each class word) on the real clips of `just
//! fetch-media`, its evaluation as one command, and `emollama annotate` writing a dataset that a recipe
//! trains on. Needs `just fetch-models` and `just fetch-media` (part of `tools/setup.sh`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{emollama, media, repo};

const LABELS: [&str; 6] = ["neutral", "angry", "happy", "sad", "worried", "surprise"];

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// A folder with copies of the fetched clips, a missing and a corrupt one, listed in `clips.csv`.
fn clip_folder(dir: &Path) -> PathBuf {
    let clips = ["WolfgangLanger_Pexels.mp4", "carphone_pristine.mp4", "single_face.mp4", "no_face.mp4", "jfk.wav"];
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut csv = String::from("path,id\n");
    for c in clips {
        std::fs::copy(media(c), dir.join(c)).expect("copy clip");
        csv += &format!("{},{}\n", dir.join(c).display(), c.split('.').next().unwrap_or(c));
    }
    std::fs::write(dir.join("corrupt.mp4"), b"not a video, only text").expect("corrupt");
    csv += &format!("{},corrupt\n{},missing\n", dir.join("corrupt.mp4").display(), dir.join("missing.mp4").display());
    let list = dir.join("clips.csv");
    std::fs::write(&list, csv).expect("csv");
    list
}

#[test]
fn zero_shot_reads_the_face_and_voice_of_real_clips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let list = clip_folder(&tmp.path().join("clips"));
    let out = tmp.path().join("zero_shot.jsonl");
    let o = emollama(&["predict", "--model", "zero-shot", "--input", s(&list), "--out", s(&out), "--no-progress"], &[]);
    assert_eq!(o.status.code(), Some(3), "two clips fail, the others are predicted: {}", stderr(&o));
    let got: BTreeMap<String, serde_json::Value> = lines(&std::fs::read_to_string(&out).expect("lines")).into_iter().map(|l| (l["id"].as_str().unwrap_or("").to_string(), l)).collect();
    assert_eq!(got.len(), 7);
    for bad in ["corrupt", "missing"] {
        assert!(got[bad]["ok"] == false && got[bad]["error"].as_str().is_some_and(|e| !e.is_empty()), "{bad}: {}", got[bad]);
    }
    let mut table = Vec::new();
    for (id, l) in got.iter().filter(|(_, l)| l["ok"] == true) {
        let label = l["label"].as_str().expect("label");
        assert!(LABELS.contains(&label), "{id}: {label}");
        let total: f64 = l["scores"].as_object().expect("scores").values().filter_map(|v| v.as_f64()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{id}: scores sum to {total}");
        assert_eq!(l["label_from"], "scores", "{id}: the label is the likeliest class word");
        assert!(l["reasoning"].as_str().is_some_and(|r| !r.trim().is_empty()), "{id}: a reasoning");
        let cues = &l["cues"];
        let face = &cues["face"];
        if id == "jfk" {
            assert!(face.is_null(), "an audio file has no face cues");
            assert!(l["transcript"].as_str().is_some_and(|t| t.contains("ask not")), "{id}: Whisper's transcript: {}", l["transcript"]);
            assert_eq!(l["transcript_source"], "asr");
            assert_eq!(cues["voice"]["has_speech"], true, "{l}");
        } else {
            assert!(face["timeline"].as_str().is_some_and(|t| !t.is_empty()) && face["frames_total"].as_u64().is_some_and(|n| n > 0), "{id}: {face}");
            assert!(cues["voice"].is_object(), "{id}: every clip here has a soundtrack: {cues}");
        }
        table.push(format!("{id}: label {label} | dominant {} (ambiguous {}) | {}", face["dominant"], face["ambiguous"], face["timeline"]));
    }
    println!("{}", table.join("\n"));
    let wolfgang = &got["WolfgangLanger_Pexels"]["cues"]["face"]["segments"];
    let labels: Vec<&str> = wolfgang.as_array().expect("segments").iter().filter_map(|s| s["label"].as_str()).collect();
    assert_eq!((labels.first(), labels.last()), (Some(&"sad"), Some(&"happy")), "Wolfgang goes from sad to happy: {labels:?}");
    assert_eq!(got["no_face"]["cues"]["face"]["frames_scored"], 0);

    // Where the dominant expression is unambiguous, the label is its class of the card: happy for
    // WolfgangLanger (sad, fearful, then happy) and single_face (neutral, then happy); worried for
    // carphone_pristine (fearful, then surprised; the card names fear "worried").
    for (id, dominant, class) in [("WolfgangLanger_Pexels", "happy", "happy"), ("single_face", "happy", "happy"), ("carphone_pristine", "fear", "worried")] {
        let l = &got[id];
        assert_eq!((l["cues"]["face"]["dominant"].as_str(), l["cues"]["face"]["ambiguous"].as_bool()), (Some(dominant), Some(false)), "{id}");
        assert_eq!(l["label"], class, "{id}: the zero-shot label agrees with the dominant expression: {}", l["scores"]);
    }

    // Resumable: a rerun predicts nothing again.
    let o = emollama(&["predict", "--model", "zero-shot", "--input", s(&list), "--out", s(&out), "--no-progress"], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("finished before (skipped) ┆ 5"), "{}", stderr(&o));
}

#[test]
fn zero_shot_evaluation_is_one_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let runs = format!("runtime.runs_dir=\"{}\"", tmp.path().display());
    // A synthetic test split of 6 clips; only the 4 evaluated get cues.
    let o = emollama(&["eval", "recipes/zero_shot.toml", "--limit", "4", "--no-progress", "--set", &runs, "--set", "data.synth.test=6"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = std::fs::read_dir(tmp.path()).expect("runs").flatten().map(|e| e.path()).find(|p| p.join("metrics.json").is_file()).expect("a run directory with metrics.json");
    let preds = lines(&std::fs::read_to_string(dir.join("predictions.jsonl")).expect("predictions"));
    assert_eq!(preds.len(), 4);
    for p in &preds {
        assert!(LABELS.contains(&p["prediction"].as_str().unwrap_or("")), "every clip gets a class from the scores: {p}");
        assert_eq!(p["unparsed"], false);
        // The text lists each class's probability.
        assert_eq!(p["text"].as_str().unwrap_or("").split(", ").count(), 6, "{p}");
    }
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).expect("metrics")).expect("json");
    assert!(m.to_string().contains("weighted_f1"), "{m}");
    assert!(!dir.join("adapter").exists(), "nothing was trained, so no LoRA adapter is exported");
}

/// A scratch project: this repository's plugins/ and recipes/, a copy of its datasets/, and a `jsonl`
/// dataset `clips` over copies of the fetched clips plus a corrupt and a missing one, with labels.
fn project(dir: &Path) -> PathBuf {
    let p = dir.join("project");
    std::fs::create_dir_all(p.join("datasets")).expect("mkdir");
    std::os::unix::fs::symlink(repo().join("plugins"), p.join("plugins")).expect("plugins");
    std::os::unix::fs::symlink(repo().join("recipes"), p.join("recipes")).expect("recipes");
    for e in std::fs::read_dir(repo().join("datasets")).expect("datasets").flatten() {
        std::fs::copy(e.path(), p.join("datasets").join(e.file_name())).expect("copy card");
    }
    let root = dir.join("clips");
    std::fs::create_dir_all(&root).expect("mkdir");
    let mut manifest = String::new();
    for (id, file, label) in [("w", "WolfgangLanger_Pexels.mp4", "happy"), ("s", "single_face.mp4", "happy"), ("j", "jfk.wav", "neutral")] {
        std::fs::copy(media(file), root.join(file)).expect("copy");
        manifest += &format!("{}\n", serde_json::json!({ "id": id, "media": file, "split": "test", "label": label }));
    }
    std::fs::write(root.join("corrupt.mp4"), b"not a video").expect("corrupt");
    manifest += &format!("{}\n{}\n", serde_json::json!({ "id": "c", "media": "corrupt.mp4", "split": "test" }), serde_json::json!({ "id": "m", "media": "missing.mp4", "split": "test" }));
    std::fs::write(root.join("manifest.jsonl"), manifest).expect("manifest");
    let card = format!("name = \"clips\"\nsource = \"jsonl\"\nroot = {:?}\nlabels = {LABELS:?}\nsplits = [\"test\"]\n", s(&root));
    std::fs::write(p.join("datasets/clips.toml"), card).expect("card");
    p
}

#[test]
fn annotate_writes_a_dataset_that_a_recipe_trains_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let proj = project(tmp.path());
    let recipe = proj.join("annotate_clips.toml");
    std::fs::write(
        &recipe,
        "extends = [\"recipes/zero_shot.toml\"]\nname = \"annotate-clips\"\n\n[data]\ndataset = \"clips\"\n\n[eval]\nmax_new_tokens = 24\n\n[annotate]\nsplits = [\"test\"]\nsplit_as = \"train\"\nname = \"clips-annotated\"\n",
    )
    .expect("recipe");
    let out = tmp.path().join("annotated");
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(&proj).output().expect("spawn");
    let o = run(&["annotate", s(&recipe), "--out", s(&out), "--no-progress"]);
    assert_eq!(o.status.code(), Some(3), "two clips fail, the batch goes on: {}", stderr(&o));
    let got = lines(&std::fs::read_to_string(out.join("manifest.jsonl")).expect("manifest"));
    assert_eq!(got.len(), 3, "{got:?}");
    for l in &got {
        for key in ["id", "media", "split", "label", "confidence", "description", "reasoning", "scores", "cues", "source_label", "source_media"] {
            assert!(!l[key].is_null(), "`{key}` in {l}");
        }
        assert_eq!(l["split"], "train");
        assert!(out.join(l["media"].as_str().expect("media")).is_file(), "{l}");
        assert!(l["description"].as_str().is_some_and(|d| !d.is_empty()) && l["reasoning"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
        assert!((0.0..=1.0).contains(&l["confidence"].as_f64().unwrap_or(-1.0)), "{l}");
    }
    let j = got.iter().find(|l| l["id"] == "j").expect("jfk");
    assert!(j["cues"]["voice"]["description"].as_str().is_some_and(|d| d.contains("voice")) && j["transcript"].as_str().is_some_and(|t| t.contains("ask not")), "{j}");
    let w = got.iter().find(|l| l["id"] == "w").expect("wolfgang");
    assert!(w["cues"]["face"]["timeline"].as_str().is_some_and(|t| t.starts_with("sad")), "{w}");
    let errors = lines(&std::fs::read_to_string(out.join("errors.jsonl")).expect("errors"));
    assert_eq!(errors.iter().map(|e| e["id"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["c", "m"]);

    // Resumable: the annotated clips are kept, the failed ones tried again.
    let o = run(&["annotate", s(&recipe), "--out", s(&out), "--no-progress"]);
    let err = stderr(&o);
    assert!(err.contains("annotated before (kept) ┆ 3") && err.contains("failed                  ┆ 2"), "{err}");
    assert_eq!(lines(&std::fs::read_to_string(out.join("manifest.jsonl")).expect("manifest")).len(), 3);

    // The card makes it a dataset: a recipe trains on the pseudo-labels (two steps here; the quick start
    // reads video, so the audio-only clip is skipped).
    std::fs::copy(out.join("clips-annotated.toml"), proj.join("datasets/clips-annotated.toml")).expect("card");
    let train = proj.join("train.toml");
    std::fs::write(
        &train,
        format!(
            "extends = [\"recipes/quickstart.toml\"]\nname = \"on-pseudo\"\n\n[runtime]\nruns_dir = {:?}\n\n[data]\ndataset = \"clips-annotated\"\n\n[validation]\nenabled = false\n\n[eval]\nenabled = false\n\n[[stage]]\nname = \"pseudo\"\ntasks = [\"emotion\", \"description\", \"reason\"]\nsteps = 2\nbatch_size = 2\nlr = 1e-3\ntrainable = [\"*\"]\n",
            s(&tmp.path().join("runs"))
        ),
    )
    .expect("train recipe");
    let o = run(&["run", s(&train), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
