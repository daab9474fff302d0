//! The committed dataset cards read synthetic files written in their publishers' exact layouts (no EULA
//! data: ids and texts are invented), through `emollama data ls|stat|export`; a run on the `mer2023` card
//! follows `data.on_error` for a missing clip and lists it in the run directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::repo;

fn emollama(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(repo()).env("XDG_CACHE_HOME", cache).output().expect("spawn emollama")
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// `data ls NAME --root ROOT --json` as (id, split, label) plus the parsed lines.
fn ls(cache: &Path, name: &str, root: &Path) -> Vec<serde_json::Value> {
    let o = emollama(cache, &["data", "ls", name, "--root", root.to_str().expect("utf8"), "--json", "--no-progress"]);
    assert!(o.status.success(), "data ls {name}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

fn summary(v: &[serde_json::Value]) -> Vec<(String, String, String)> {
    v.iter().map(|s| (s["id"].as_str().unwrap_or("").into(), s["split"].as_str().unwrap_or("").into(), s["label"].as_str().unwrap_or("-").into())).collect()
}

#[test]
fn every_card_reads_its_published_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");

    // MERR fine (Emotion-LLaMA stage 2) and coarse (stage 1).
    let merr = tmp.path().join("MER2023");
    write(&merr, "MERR_fine_grained.txt", "sample_00000047 43 surprise\nsamplenew_00000001 98 doubt\n");
    let fine = |label: &str| {
        format!(r#"{{"AU_list": ["AU05"], "visual_prior_list": ["Eyes widened"], "audio_prior_list": "an excited voice.", "peak_index": "0", "peak_AU_list": ["AU05"], "pseu_emotion": "{label}", "text": "Invented.", "smp_reason_caption": "A {label} face and voice."}}"#)
    };
    write(&merr, "MERR_fine_grained.json", &format!("{{\"sample_00000047\": {}, \"samplenew_00000001\": {}}}", fine("surprise"), fine("doubt")));
    write(&merr, "MERR_coarse_grained.txt", "sample_00000047 43 surprise\n");
    write(&merr, "MERR_coarse_grained.json", r#"{"sample_00000047": {"caption": "Eyes widened; the voice rises."}}"#);
    write(&merr, "transcription_en_all.csv", "name,sentence\nsample_00000047,\"Oh, my.\"\n");
    write(&merr, "video/sample_00000047.avi", "x");
    let f = ls(&cache, "merr-fine", &merr);
    assert_eq!(summary(&f), vec![("sample_00000047".into(), "train".into(), "surprise".into()), ("samplenew_00000001".into(), "train".into(), "doubt".into())]);
    assert_eq!((f[0]["reasoning"].as_str(), f[0]["transcript"].as_str()), (Some("A surprise face and voice."), Some("Oh, my.")));
    assert!(f[0]["media"].as_str().is_some_and(|m| m.ends_with("video/sample_00000047.avi")), "{}", f[0]["media"]);
    let c = ls(&cache, "merr-coarse", &merr);
    assert_eq!(c[0]["description"].as_str(), Some("Eyes widened; the voice rises."));

    // MER2023 as released.
    let mer23 = tmp.path().join("mer2023");
    write(&mer23, "train-label.csv", "name,discrete,valence\nsample_00000001,happy,1.25\nsample_00000002,worried,-2.0\n");
    write(&mer23, "test1-label.csv", "name,discrete,valence\nsample_00000003,sad,-4.75\n");
    write(&mer23, "test2-label.csv", "name,discrete,valence\nsample_00000004,angry,0.0\n");
    write(&mer23, "test3-label.csv", "name,discrete\nsamplenew_00000005,surprise\n");
    write(&mer23, "transcription-engchi-polish.csv", "name,chinese,english\nsample_00000001,你好,Hello.\n");
    let m = ls(&cache, "mer2023", &mer23);
    assert_eq!(m.len(), 5);
    assert_eq!(m.iter().map(|s| s["split"].as_str().unwrap_or("")).collect::<Vec<_>>(), vec!["train", "train", "test1", "test2", "test3"]);
    assert_eq!((m[0]["valence"].as_f64(), m[0]["transcript"].as_str()), (Some(1.25), Some("Hello.")));
    let o = emollama(&cache, &["data", "export", "--dataset", "mer2023", "--split", "test1", "--root", mer23.to_str().expect("utf8")]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "name,discrete,valence\nsample_00000003,sad,-4.75\n");

    // MER2024 with Emotion-LLaMA's NCE / NCEV lists and the NOISE list.
    let mer24 = tmp.path().join("mer2024");
    write(&mer24, "label-transcription.csv", "name,english\nsample_00000001,Fine.\n");
    write(&mer24, "train_NCE.txt", "sample_00000001 30 neutral\n");
    write(&mer24, "test1_NCE.txt", "sample_00000002 30 happy\n");
    write(&mer24, "test2_NCE.txt", "sample_00000003 30 sad\n");
    write(&mer24, "relative_test3_NCEV.txt", "samplenew_00006611 125 sad -10\n");
    write(&mer24, "test_noise_NCE.txt", "sample_00000009 70 angry\n");
    let m = ls(&cache, "mer2024", &mer24);
    assert_eq!(m.len(), 5);
    assert!(m.iter().any(|s| s["split"] == "noise" && s["label"] == "angry"));
    assert!(m.iter().any(|s| s["split"] == "test3" && s["valence"].is_null()));

    // MER-Caption+ (descriptions and open-set labels).
    let mc = tmp.path().join("mer2025");
    write(&mc, "track3_train_mercaptionplus.csv", "name,reason\nsample_00000001,\"She smiles, relieved.\"\n");
    write(&mc, "track2_train_mercaptionplus.csv", "name,openset\nsample_00000001,\"['relieved', 'happy']\"\n");
    write(&mc, "subtitle_chieng.csv", "name,chinese,english\nsample_00000001,好,Good.\n");
    let m = ls(&cache, "mer-caption-plus", &mc);
    assert_eq!((m[0]["description"].as_str(), m[0]["openset"].clone()), (Some("She smiles, relieved."), serde_json::json!(["relieved", "happy"])));

    // DFEW's five folds.
    let dfew = tmp.path().join("DFEW");
    for k in 1..=5 {
        write(&dfew, &format!("EmoLabel_DataSplit/train(single-labeled)/set_{k}.csv"), &format!("video_name,label\n{k},6\n"));
        write(&dfew, &format!("EmoLabel_DataSplit/test(single-labeled)/set_{k}.csv"), &format!("video_name,label\n{},2\n", 1000 + k));
    }
    let m = ls(&cache, "dfew", &dfew);
    assert_eq!(m.len(), 10);
    assert_eq!(summary(&m)[..2], [("00001".to_string(), "train1".to_string(), "disgust".to_string()), ("01001".to_string(), "test1".to_string(), "sad".to_string())]);

    // A malformed row through the CLI: the file and line, exit non-zero.
    write(&mer23, "test2-label.csv", "name,discrete,valence\nsample_00000004,angry,0.0\nsample_00000005,calm,1\n");
    let o = emollama(&cache, &["data", "stat", "mer2023", "--root", mer23.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("test2-label.csv line 3") && err.contains("label `calm`"), "{err}");
}

/// A recipe training on the `mer2023` card, its clips taken from a small generated synthetic set.
fn mer2023_recipe(dir: &Path, root: &Path, on_error: &str) -> PathBuf {
    let body = format!(
        r#"extends = [{base:?}]
name = "mer23"

[runtime]
runs_dir = {runs:?}
threads = 2

[data]
dataset = "mer2023"
on_error = "{on_error}"
frames = {{ mode = "uniform", n = 4 }}

[data.roots]
mer2023 = {root:?}

[validation]
enabled = false

[[stage]]
name = "s"
tasks = ["emotion"]
steps = 3
batch_size = 4
lr = 1e-3

[eval]
split = "test1"
task = "emotion"
max_new_tokens = 4
"#,
        base = repo().join("recipes/base/tiny.toml").display().to_string(),
        runs = dir.join("runs").display().to_string(),
        root = root.display().to_string(),
    );
    let p = dir.join(format!("mer23-{on_error}.toml"));
    std::fs::write(&p, body).expect("recipe");
    p
}

#[test]
fn a_missing_clip_follows_on_error_and_is_listed_in_the_run_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    // Clips: a small synthetic set generated into the test's cache.
    let synth = tmp.path().join("synth.toml");
    std::fs::write(&synth, format!("extends = [{:?}]\n[data.synth]\nseed = 3\ntrain = 8\nval = 0\ntest = 4\n", repo().join("recipes/quickstart.toml").display().to_string())).expect("recipe");
    let o = emollama(&cache, &["data", "ls", "synth", "--recipe", synth.to_str().expect("utf8"), "--json", "--no-progress"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let clips: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let root = tmp.path().join("mer2023");
    let mut train = String::from("name,discrete,valence\n");
    let mut test1 = String::from("name,discrete,valence\n");
    for (i, c) in clips.iter().enumerate() {
        let id = format!("sample_{i:08}");
        let label = c["label"].as_str().expect("label");
        // sample_00000001 has no clip: the missing file.
        if i != 1 {
            std::fs::create_dir_all(root.join(if i < 8 { "train" } else { "test1" })).expect("dir");
            std::fs::copy(c["media"].as_str().expect("media"), root.join(format!("{}/{id}.mp4", if i < 8 { "train" } else { "test1" }))).expect("copy clip");
        }
        let row = format!("{id},{label},0.5\n");
        if i < 8 { train.push_str(&row) } else { test1.push_str(&row) }
    }
    write(&root, "train-label.csv", &train);
    write(&root, "test1-label.csv", &test1);
    write(&root, "test2-label.csv", "name,discrete,valence\n");
    write(&root, "test3-label.csv", "name,discrete\n");

    let skip = mer2023_recipe(tmp.path(), &root, "skip");
    let o = emollama(&cache, &["run", skip.to_str().expect("utf8"), "--no-progress"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = std::fs::read_dir(tmp.path().join("runs")).expect("runs").flatten().map(|e| e.path()).next().expect("a run");
    let skipped = std::fs::read_to_string(run.join("skipped.jsonl")).expect("skipped.jsonl");
    let v: serde_json::Value = serde_json::from_str(skipped.lines().next().expect("a line")).expect("json");
    assert_eq!(v["id"], "sample_00000001");
    assert!(v["media"].as_str().is_some_and(|m| m.ends_with("train/sample_00000001.mp4")) && v["reason"].as_str().is_some_and(|r| r.contains("not found")), "{v}");
    assert_eq!(skipped.lines().count(), 1);

    let fail = mer2023_recipe(tmp.path(), &root, "fail");
    let o = emollama(&cache, &["run", fail.to_str().expect("utf8"), "--no-progress"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("sample_00000001") && err.contains("train/sample_00000001.mp4"), "{err}");
}
