//! `emollama extract` end to end through the binary: real media (fetched by `just fetch-media`) through
//! the four encoder architectures (tiny random-weight manifests), both output formats, resuming, the
//! preprocessed-tensor input, and clear errors on bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::media;

use candle_core::{Device, Tensor};

fn emollama(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the emollama binary")
}

fn ok(args: &[&str]) -> String {
    let out = emollama(args);
    assert!(out.status.success(), "emollama {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails(args: &[&str]) -> String {
    let out = emollama(args);
    assert!(!out.status.success(), "emollama {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "a panic instead of an error:\n{err}");
    err
}

fn load(p: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).expect("read the output")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A 16-bit PCM WAV file.
fn write_wav(path: &Path, rate: u32, channels: u16, frames: usize) {
    let data_len = (frames * channels as usize * 2) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * channels as u32 * 2).to_le_bytes());
    b.extend_from_slice(&(channels * 2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames * channels as usize {
        let v = ((i as f32 * 0.05).sin() * 8000.0) as i16;
        b.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, b).expect("write wav");
}

#[test]
fn audio_features_of_jfk_wav_resume_and_npy() {
    let wav = media("jfk.wav");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("audio.safetensors");
    let stdout = ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&wav), "--out", s(&out)]);
    assert!(stdout.contains("1 samples extracted"), "{stdout}");
    let t = load(&out);
    let f = t.get("jfk").expect("feature keyed by the file stem");
    assert_eq!(f.dims(), &[32]);
    let v = f.to_vec1::<f32>().expect("f32");
    assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|x| x.abs() > 1e-6), "a real feature: {v:?}");

    // Resumable: the sample is already in the output, so nothing is recomputed.
    let again = ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&wav), "--out", s(&out)]);
    assert!(again.contains("0 samples extracted, 1 already done"), "{again}");
    assert_eq!(load(&out).get("jfk").expect("kept").to_vec1::<f32>().expect("f32"), v);

    // Every hidden state, and MERBench's chunked sum of layers, in MERTools' per-sample .npy layout.
    let npy = dir.path().join("npy");
    ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&wav), "--out", s(&npy), "--format", "npy", "--layers=-2,-1", "--chunk-seconds", "4"]);
    let bytes = std::fs::read(npy.join("jfk.npy")).expect("jfk.npy");
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert!(String::from_utf8_lossy(&bytes[10..80]).contains("'shape': (32,)"));
    let none = dir.path().join("hidden.safetensors");
    ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&wav), "--out", s(&none), "--pooling", "none"]);
    let h = load(&none);
    // 11 s at 16 kHz → 549 frames of 20 ms; embeddings output + 2 layers.
    for i in 0..3 {
        let t = h.get(&format!("jfk.hidden_states.{i}")).expect("every hidden state");
        assert_eq!(t.dims(), &[549, 32]);
    }
}

#[test]
fn visual_features_of_carphone_for_each_view() {
    let video = media("carphone_pristine.mp4");
    let dir = tempfile::tempdir().expect("tempdir");
    // Local view: CLS per frame, mean over 8 frames.
    let out = dir.path().join("mae.safetensors");
    ok(&["extract", "--encoder", "vit-mae-tiny", "--input", s(&video), "--out", s(&out)]);
    assert_eq!(load(&out).get("carphone_pristine").expect("key").dims(), &[32]);
    // Temporal view: 8 segments x 2 frames.
    let out = dir.path().join("videomae.safetensors");
    ok(&["extract", "--encoder", "videomae-tiny", "--input", s(&video), "--out", s(&out)]);
    assert_eq!(load(&out).get("carphone_pristine").expect("key").dims(), &[32]);
    // Global view: EVA's 1024 patches merged by four into 256 tokens, plus the CLS token.
    let out = dir.path().join("eva.safetensors");
    ok(&["extract", "--encoder", "eva-vit-tiny", "--input", s(&video), "--out", s(&out)]);
    let t = load(&out);
    assert_eq!(t.get("carphone_pristine.patch_tokens").expect("patches").dims(), &[256, 4 * 32]);
    assert_eq!(t.get("carphone_pristine.cls").expect("cls").dims(), &[32]);
    // A folder: every media file in it, one key each.
    let folder = dir.path().join("clips");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::copy(&video, folder.join("a.mp4")).expect("copy");
    std::fs::copy(&video, folder.join("b.mp4")).expect("copy");
    let out = dir.path().join("folder.safetensors");
    ok(&["extract", "--encoder", "vit-mae-tiny", "--input", s(&folder), "--out", s(&out)]);
    let t = load(&out);
    assert_eq!(t.get("a").expect("a").to_vec1::<f32>().expect("a"), t.get("b").expect("b").to_vec1::<f32>().expect("b"));
}

#[test]
fn preprocessed_tensor_input_gives_every_hidden_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.safetensors");
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).expect("randn");
    x.save_safetensors("pixel_values", &input).expect("save");
    let out = dir.path().join("out.safetensors");
    ok(&["extract", "--encoder", "vit-mae-tiny", "--input", s(&input), "--out", s(&out), "--pooling", "none"]);
    let t = load(&out);
    for i in 0..3 {
        assert_eq!(t.get(&format!("hidden_states.{i}")).expect("hidden state").dims(), &[2, 17, 32]);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("o.safetensors");
    // Wrong sample rate and stereo: named, with the fix.
    let stereo = dir.path().join("stereo.wav");
    write_wav(&stereo, 44_100, 2, 44_100);
    let e = fails(&["extract", "--encoder", "hubert-tiny", "--input", s(&stereo), "--out", s(&out)]);
    assert!(e.contains("stereo.wav") && e.contains("44100 Hz") && e.contains("2 channels") && e.contains("--resample"), "{e}");
    // ... which --resample accepts.
    ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&stereo), "--out", s(&out), "--resample"]);
    // Too short for the conv feature extractor's receptive field (400 samples).
    let short = dir.path().join("short.wav");
    write_wav(&short, 16_000, 1, 100);
    let e = fails(&["extract", "--encoder", "hubert-tiny", "--input", s(&short), "--out", s(&dir.path().join("s.safetensors"))]);
    assert!(e.contains("short.wav") && e.contains("100 samples") && e.contains("at least 400"), "{e}");
    // Stereo preprocessed input.
    let t3 = dir.path().join("stereo.safetensors");
    Tensor::zeros((1, 2, 16_000), candle_core::DType::F32, &Device::Cpu).expect("zeros").save_safetensors("input_values", &t3).expect("save");
    let e = fails(&["extract", "--encoder", "hubert-tiny", "--input", s(&t3), "--out", s(&out)]);
    assert!(e.contains("2-channel") && e.contains("mono"), "{e}");
    // A frame count the tubelet does not divide.
    let clip = dir.path().join("clip.safetensors");
    Tensor::zeros((1, 15, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).expect("zeros").save_safetensors("pixel_values", &clip).expect("save");
    let e = fails(&["extract", "--encoder", "videomae-tiny", "--input", s(&clip), "--out", s(&out)]);
    assert!(e.contains("clip.safetensors") && e.contains("15") && e.contains("tubelet"), "{e}");
    // A checkpoint missing a tensor: the error names the file and the tensor.
    let ckpt = dir.path().join("mae.safetensors");
    let w = Tensor::zeros((32, 3, 16, 16), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    let cls = Tensor::zeros((1, 1, 32), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    candle_core::safetensors::save(&std::collections::HashMap::from([("embeddings.patch_embeddings.projection.weight".to_string(), w), ("embeddings.cls_token".to_string(), cls)]), &ckpt).expect("save");
    let manifest = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/encoders/vit-mae-tiny.toml")).expect("manifest");
    let text = text.replace("name = \"vit-mae-tiny\"", "name = \"broken\"").replace("source = \"random\"", &format!("source = \"path\"\npath = {:?}", s(&ckpt)));
    std::fs::write(&manifest, text).expect("write manifest");
    let e = fails(&["extract", "--encoder", s(&manifest), "--input", s(&media("carphone_pristine.mp4")), "--out", s(&out)]);
    assert!(e.contains("mae.safetensors") && e.contains("embeddings.patch_embeddings.projection.bias"), "{e}");
}

#[test]
fn a_recipes_dataset_is_extracted_sample_by_sample() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/base/tiny.toml");
    let recipe = dir.path().join("mini.toml");
    std::fs::write(
        &recipe,
        format!(
            "extends = [{:?}]\nname = \"mini\"\n\n[runtime]\ncache_dir = {:?}\n\n[data.synth]\nseed = 3\ntrain = 6\nval = 1\ntest = 2\n",
            base.display().to_string(),
            dir.path().join("cache").display().to_string()
        ),
    )
    .expect("recipe");
    let out = dir.path().join("npy");
    let stdout = ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&recipe), "--out", s(&out), "--format", "npy"]);
    assert!(stdout.contains("9 samples extracted"), "{stdout}");
    let files: Vec<_> = std::fs::read_dir(&out).expect("out dir").filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "npy")).collect();
    assert_eq!(files.len(), 9);
    // Interrupted runs resume: remove two samples' files, and only those are recomputed.
    for f in files.iter().take(2) {
        std::fs::remove_file(f.path()).expect("rm");
    }
    let again = ok(&["extract", "--encoder", "hubert-tiny", "--input", s(&recipe), "--out", s(&out), "--format", "npy"]);
    assert!(again.contains("2 samples extracted, 7 already done"), "{again}");
}
