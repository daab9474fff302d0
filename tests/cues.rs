//! The annotation cues on the real media of `just fetch-media`: the expression timeline and dominant
//! expression of every face clip (the face front end + FER network), and the voice descriptors of the
//! clips with sound and of jfk.wav. The measured values are printed (run with `--no-capture`) and
//! written to `<target>/cues.json`.

mod common;

use common::media;
use emollama::media::face::{FaceFrontEnd, FaceOptions, Timeline};
use emollama::media::voice::{VoiceDescriptors, VoiceError};
use emollama::media::{AUDIO_SAMPLE_RATE, FrameSampling, decode_audio};

/// Two frames a second: enough for a timeline in half-second steps.
const SAMPLING: FrameSampling = FrameSampling::Fps { fps: 2.0, max_frames: Some(120) };
const FACE_CLIPS: [&str; 4] = ["WolfgangLanger_Pexels.mp4", "carphone_pristine.mp4", "single_face.mp4", "no_face.mp4"];

fn timeline(file: &str) -> (Timeline, emollama::media::DecodedClip) {
    let fe = FaceFrontEnd::new(&FaceOptions::default()).expect("front end");
    let (clip, faces) = fe.process_file(&media(file), &SAMPLING, 112, 112).unwrap_or_else(|e| panic!("{file}: {e}"));
    for f in &faces.frames {
        let p = f.expression.map(|p| emollama::media::face::FER_LABELS.iter().zip(p).filter(|(_, v)| *v >= 0.1).map(|(l, v)| format!("{l} {v:.2}")).collect::<Vec<_>>().join(", "));
        println!("{file} t={:5.2}s {}", f.timestamp_s, p.unwrap_or_else(|| "no face".into()));
    }
    let t = Timeline::of(&faces, Some(clip.duration_s)).unwrap_or_else(|e| panic!("{file}: {e}"));
    (t, clip)
}

#[test]
fn cues_wolfgang_timeline_goes_from_sad_to_happy() {
    let (t, _) = timeline("WolfgangLanger_Pexels.mp4");
    for s in &t.segments {
        println!("segment {:>8} {:5.2}–{:5.2} s, {} frames, mean p {:.2}", s.label, s.start_s, s.end_s, s.frames, s.mean_prob);
    }
    println!("{}", t.describe());
    assert_eq!(t.frames_scored, t.frames_total, "a face in every frame");
    let labels: Vec<&str> = t.segments.iter().map(|s| s.label).collect();
    assert_eq!(labels.first(), Some(&"sad"), "the clip opens sad: {}", t.describe());
    assert_eq!(labels.last(), Some(&"happy"), "the clip ends happy: {}", t.describe());
    // Nothing happy before the sad part ends, nothing sad after the happy part begins.
    let last_sad = labels.iter().rposition(|l| *l == "sad").expect("sad");
    let first_happy = labels.iter().position(|l| *l == "happy").expect("happy");
    assert!(last_sad < first_happy, "{}", t.describe());
    assert!(t.describe().starts_with("sad for the first"), "{}", t.describe());
}

#[test]
fn cues_dominant_expression_of_every_face_clip() {
    let mut record = serde_json::Map::new();
    for file in FACE_CLIPS {
        let (t, _) = timeline(file);
        println!("{file}: {} | dominant: {} | runner-up {:?}", t.describe(), t.describe_dominant().unwrap_or_else(|| "none".into()), t.runner_up);
        match file {
            "no_face.mp4" => assert_eq!((t.frames_scored, t.dominant), (0, None), "{file}: {t:?}"),
            _ => {
                assert!(t.frames_scored > 0 && t.dominant.is_some(), "{file}: a face and a dominant expression: {t:?}");
                let share: f32 = t.dominant_share;
                let runner = t.runner_up.map_or(0.0, |r| r.1);
                assert_eq!(t.ambiguous, share - runner <= 0.10, "{file}");
            }
        }
        record.insert(file.into(), serde_json::json!({"timeline": t.describe(), "dominant": t.dominant, "dominant_share": t.dominant_share, "runner_up": t.runner_up, "ambiguous": t.ambiguous, "segments": t.segments, "mean_probs": t.mean_probs}));
    }
    write_record("faces", serde_json::Value::Object(record));
}

#[test]
fn cues_voice_of_jfk_is_raised_male_speech_at_a_speaking_pace() {
    let audio = decode_audio(&media("jfk.wav")).expect("jfk.wav");
    assert_eq!(audio.sample_rate, AUDIO_SAMPLE_RATE);
    let v = VoiceDescriptors::of(&audio.samples, audio.sample_rate).expect("descriptors");
    println!("jfk.wav: {v:#?}\n{}", v.describe());
    // Raised oratory pitch: Praat's autocorrelation tracker (parselmouth `to_pitch_ac(0.01, 60, 500)`)
    // puts this recording's median at 237.3 Hz (p10 186.1, p90 282.9), above the 80–200 Hz of
    // conversational male speech; the median must agree with Praat's within 10%.
    let pitch = v.pitch_median_hz.expect("voiced");
    assert!((pitch / 237.3 - 1.0).abs() < 0.10, "median pitch {pitch} Hz against Praat's 237.3 Hz");
    let rate = v.speaking_rate_sps.expect("rate");
    assert!((2.0..=7.0).contains(&rate), "speaking rate {rate} syllables/s");
    // "And so my fellow Americans | ask not | what your country can do for you | ask what you can do
    // for your country": pauses between the phrases.
    assert!((2..=6).contains(&v.pauses), "{v:?}");
    assert!(v.voiced_fraction > 0.2 && v.voiced_fraction < 0.95, "{v:?}");
    assert!(v.has_speech(), "{v:?}");
    write_record("jfk", serde_json::json!({"descriptors": v, "description": v.describe()}));
}

#[test]
fn cues_voice_of_the_clips_with_sound() {
    let mut record = serde_json::Map::new();
    for file in FACE_CLIPS {
        let audio = decode_audio(&media(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        if audio.missing {
            println!("{file}: no audio stream");
            record.insert(file.into(), serde_json::json!("no audio stream"));
            continue;
        }
        match VoiceDescriptors::of(&audio.samples, audio.sample_rate) {
            Ok(v) => {
                println!("{file}: {}\n{v:#?}", v.describe());
                assert!(v.energy_mean_dbfs.is_finite() && v.speech_span_s > 0.0 && v.speech_span_s <= v.duration_s + 1e-9, "{file}: {v:?}");
                record.insert(file.into(), serde_json::json!({"descriptors": v, "description": v.describe()}));
            }
            // A silent soundtrack is a clear error, not made-up descriptors.
            Err(e @ VoiceError::Silent { .. }) => {
                println!("{file}: {e}");
                record.insert(file.into(), serde_json::json!(e.to_string()));
            }
            Err(e) => panic!("{file}: {e}"),
        }
    }
    write_record("voices", serde_json::Value::Object(record));
}

/// Adds `value` under `key` to `<target>/cues-<key>.json` (one file per test: tests run in parallel).
fn write_record(key: &str, value: serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(dir);
    if std::fs::create_dir_all(&dir).is_ok() {
        let path = dir.join(format!("cues-{key}.json"));
        if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap_or_default()) {
            println!("could not write {}: {e}", path.display());
        }
    }
}
