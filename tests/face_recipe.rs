//! `[front_end.face]` in a recipe: validation, and a run of the tiny Emotion-LLaMA quick start with face
//! crops for the local / temporal views and the peak frame for the global view.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::repo;

fn emollama(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(repo()).env("RUST_LOG", "info").output().expect("spawn emollama")
}

/// The shared face recipe with its cache under `dir` and two-token reasoning.
fn write_recipe(dir: &Path, front_end: &str) -> PathBuf {
    common::face_recipe(dir, Some(&dir.join("cache")), 2, front_end)
}

#[test]
fn peak_needs_the_face_front_end_and_bad_options_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = write_recipe(dir.path(), "");
    let out = emollama(&["recipe", "check", r.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("model.global_frame") && err.contains("[front_end.face]"), "{err}");
    let r = write_recipe(dir.path(), "[front_end.face]\ndetector = \"retinaface\"\nscorer = \"none\"\n");
    let out = emollama(&["recipe", "check", r.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("front_end.face.detector") && err.contains("blazeface"), "{err}");
    assert!(err.contains("front_end.face.peak") && err.contains("motion"), "{err}");
    let r = write_recipe(dir.path(), "[front_end.face]\nmisssing = \"drop\"\n");
    let out = emollama(&["recipe", "check", r.to_str().expect("utf8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("misssing"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_run_with_face_crops_and_the_peak_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = write_recipe(dir.path(), "[front_end.face]\nmissing = \"full_frame\"\n");
    let out = emollama(&["run", r.to_str().expect("utf8"), "--no-progress", "--fresh"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed:\n{log}");
    assert!(log.contains("face front end"), "{log}");
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("runs")).expect("runs").filter_map(|e| e.ok().map(|e| e.path())).collect();
    let run = runs.first().expect("a run dir");
    let resolved = std::fs::read_to_string(run.join("recipe.resolved.toml")).expect("resolved recipe");
    assert!(resolved.contains("[front_end.face]") && resolved.contains("missing = \"full_frame\""), "{resolved}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).expect("metrics")).expect("json");
    assert!(metrics.is_object(), "{metrics}");
}

#[test]
fn probe_faces_writes_a_contact_sheet_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = common::media("single_face.mp4");
    let png = dir.path().join("sheet.png");
    let out = emollama(&["probe", clip.to_str().expect("utf8"), "--frames", "uniform:3", "--faces", png.to_str().expect("utf8"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let frames = v["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 3);
    for f in frames {
        assert!(f["timestamp_s"].as_f64().is_some());
        let d = &f["detections"][0];
        assert_eq!(d["box"].as_array().expect("box").len(), 4);
        assert_eq!(d["keypoints"].as_array().expect("keypoints").len(), 6);
        assert!(d["score"].as_f64().expect("score") > 0.5);
        assert_eq!(f["crop"]["kind"], "face");
    }
    let bytes = std::fs::read(&png).expect("contact sheet written");
    assert_eq!(&bytes[..4], b"\x89PNG");
    // A file without video is an error naming it.
    let wav = common::media("jfk.wav");
    let out = emollama(&["probe", wav.to_str().expect("utf8"), "--faces", png.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no video stream"), "{}", String::from_utf8_lossy(&out.stderr));
}
