//! Whisper tiny.en speech to text (src/model/asr/) on the real model fetched by `just fetch-models` and the
//! real jfk.wav fetched by `just fetch-media`: the transcript's word error rate, silence, malformed model
//! files, and the mel filterbank and front end against the references of
//! `tools/fixtures/make_asr_fixtures.py` (openai-whisper's `mel_filters.npz`, HF transformers).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use emollama::model::asr::{self, AsrError, Transcriber, mel};

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

/// The fetched model folder; a clear failure (never a silent pass) when it is not there.
fn model_dir() -> PathBuf {
    let dir = asr::default_model_dir();
    for f in ["model.bin", "config.json", "tokenizer.json"] {
        assert!(dir.join(f).is_file(), "{} is missing: run `just fetch-models` (part of `bash tools/setup.sh`)", dir.join(f).display());
    }
    dir
}

/// One transcriber for the whole binary (loading converts 75 MB of fp16 weights).
fn transcriber() -> &'static Transcriber {
    static T: OnceLock<Transcriber> = OnceLock::new();
    T.get_or_init(|| Transcriber::load(&model_dir(), &Device::Cpu).unwrap_or_else(|e| panic!("load Whisper: {e}")))
}

fn jfk_samples() -> Vec<f32> {
    let audio = emollama::media::decode_audio(&common::media("jfk.wav")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audio.sample_rate as usize, asr::SAMPLE_RATE);
    assert!(!audio.missing && audio.samples.len() > 10 * asr::SAMPLE_RATE, "jfk.wav: {} samples", audio.samples.len());
    audio.samples
}

fn reference() -> std::collections::HashMap<String, candle_core::Tensor> {
    common::load_tensors(&common::repo().join("tests/fixtures/asr/reference.safetensors"))
}

#[test]
fn jfk_transcript_has_a_word_error_rate_of_at_most_10_percent() {
    let t = transcriber();
    let samples = jfk_samples();
    let started = std::time::Instant::now();
    let text = t.transcribe(&samples).expect("transcribe");
    let secs = started.elapsed().as_secs_f64();
    let wer = asr::word_error_rate(JFK, &text);
    println!("jfk.wav ({:.1} s of audio) in {secs:.2} s: {text:?}, WER {:.1}%", samples.len() as f64 / 16_000.0, wer * 100.0);
    assert!(wer <= 0.10, "WER {wer:.3} > 0.10: {text:?}");
    // Deterministic: the same audio gives the same text.
    assert_eq!(t.transcribe(&samples).expect("again"), text);
}

#[test]
fn jfk_greedy_tokens_match_transformers() {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::repo().join("tests/fixtures/asr/reference.json")).expect("reference.json")).expect("json");
    let want: Vec<u32> = r["jfk_tokens"].as_array().expect("jfk_tokens").iter().map(|v| v.as_u64().expect("id") as u32).collect();
    let t = transcriber();
    let got = t.decode_window(&jfk_samples()).expect("decode");
    assert_eq!(got.tokens, want, "ours {:?} vs transformers {:?}", t.text(&got.tokens), r["jfk_text"]);
    assert_eq!(t.text(&got.tokens).expect("text"), r["jfk_text"].as_str().expect("text"));
}

#[test]
fn jfk_log_mel_matches_transformers_feature_extractor() {
    let ours = transcriber().log_mel(&jfk_samples()).expect("mel");
    let want = reference()["jfk_log_mel"].to_vec2::<f32>().expect("2d");
    let frames = want[0].len();
    let mut max = 0f32;
    for (m, row) in want.iter().enumerate() {
        for (f, &v) in row.iter().enumerate() {
            max = max.max((ours[m * mel::N_FRAMES + f] - v).abs());
        }
    }
    println!("log-mel of jfk.wav, first {frames} frames: max |ours - transformers| = {max:e}");
    assert!(max < 1e-4, "log-mel differs by {max}");
}

#[test]
fn silence_and_empty_audio_give_an_empty_transcript() {
    let t = transcriber();
    assert_eq!(t.transcribe(&[]).expect("empty"), "");
    assert_eq!(t.transcribe(&vec![0.0; 5 * asr::SAMPLE_RATE]).expect("silence"), "");
    // Faint noise is not digital silence: the model runs, and finds no words (or at most a few).
    let mut state = 1u32;
    let hiss: Vec<f32> = (0..3 * asr::SAMPLE_RATE)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 2e-3 - 1e-3
        })
        .collect();
    let text = t.transcribe(&hiss).expect("hiss");
    let w = t.decode_window(&hiss).expect("decode");
    println!("faint noise: {text:?} (no-speech probability {:.3}, {} tokens)", w.no_speech_prob, w.tokens.len());
    assert!(asr::normalized_words(&text).len() <= 3, "faint noise transcribed as {text:?}");
}

#[test]
fn long_audio_is_transcribed_window_by_window() {
    // jfk.wav, 25 s of silence, jfk.wav again: two 30 s windows, each with the speech.
    let jfk = jfk_samples();
    let mut long = jfk.clone();
    long.resize(30 * asr::SAMPLE_RATE, 0.0);
    long.extend(&jfk);
    let text = transcriber().transcribe(&long).expect("transcribe");
    let wer = asr::word_error_rate(&format!("{JFK} {JFK}"), &text);
    assert!(wer <= 0.10, "WER {wer:.3}: {text:?}");
}

#[test]
fn a_transcriber_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Transcriber>();
    let samples = jfk_samples();
    let texts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| transcriber().transcribe(&samples).expect("transcribe"))).collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(texts[0], texts[1]);
    assert!(asr::word_error_rate(JFK, &texts[0]) <= 0.10, "{texts:?}");
}

#[test]
fn non_finite_samples_are_a_clear_error() {
    let err = transcriber().transcribe(&[0.0, f32::NAN, 0.1]).expect_err("NaN");
    assert!(matches!(err, AsrError::Input(_)) && err.to_string().contains("sample 1"), "{err}");
}

#[test]
fn fingerprint_is_the_sha256_of_model_bin() {
    let p = model_dir().join("model.bin");
    let want = emollama::storage::cache::sha256_file(&p).expect("sha256");
    assert_eq!(transcriber().fingerprint(), want);
    assert_eq!(want.len(), 64);
}

/// A copy of the model folder with `model.bin` replaced by `bytes`.
fn model_dir_with(bytes: &[u8]) -> tempfile::TempDir {
    let src = model_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(dir.path().join("model.bin"), bytes).expect("write");
    dir
}

fn load_err(dir: &Path) -> String {
    Transcriber::load(dir, &Device::Cpu).expect_err("a broken model.bin must not load").to_string()
}

#[test]
fn truncated_model_bin_is_a_clear_error_naming_the_file() {
    let bytes = std::fs::read(model_dir().join("model.bin")).expect("read");
    for cut in [0, 3, 20, 1000, bytes.len() / 2, bytes.len() - 1] {
        let dir = model_dir_with(&bytes[..cut]);
        let msg = load_err(dir.path());
        assert!(msg.contains(&dir.path().join("model.bin").display().to_string()) && msg.contains("truncated"), "cut at {cut}: {msg}");
    }
}

#[test]
fn foreign_model_bin_is_a_clear_error() {
    // A PyTorch-style file (a zip) and a CTranslate2 file of another spec.
    let dir = model_dir_with(b"PK\x03\x04 not a CTranslate2 model");
    let msg = load_err(dir.path());
    assert!(msg.contains("not a CTranslate2 model"), "{msg}");
    let mut other = 6u32.to_le_bytes().to_vec();
    other.extend(12u16.to_le_bytes());
    other.extend(b"LlamaSpec\0\0\0");
    other.extend(1u32.to_le_bytes());
    other.extend(0u32.to_le_bytes());
    other.extend(0u32.to_le_bytes());
    let dir = model_dir_with(&other);
    let msg = load_err(dir.path());
    assert!(msg.contains("not a Whisper model"), "{msg}");
}

#[test]
fn mel_filterbank_matches_openai_whisper_within_1e_6() {
    let want = reference()["mel_filters_80"].to_vec2::<f32>().expect("2d");
    assert_eq!((want.len(), want[0].len()), (80, 201));
    let ours = mel::mel_filters(16_000, 400, 80);
    let max = want.iter().flatten().zip(&ours).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("mel filterbank: max |ours - mel_filters.npz| = {max:e}");
    assert!(max <= 1e-6, "filterbank differs by {max}");
}
