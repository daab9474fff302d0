//! Parity with VideoLLaMA2's BEATs (its `audio_visual` branch, `videollama2/model/beats/`) and with
//! `torchaudio.compliance.kaldi.fbank` on the fixtures written by `tools/fixtures/make_beats_fixtures.py`
//! (tests/fixtures/encoders/beats/): the fbank of a short and of a long waveform, every hidden state of a
//! tiny post-LN deep-norm BEATs and the output of a pre-LN variant, the relative-position buckets at the
//! real size, the AV audio pipeline (8 × 2 s clips padded to 30 s → fbank → BEATs) through the registry
//! path and through `emollama extract` on a WAV file, and the real-size parameter count.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{encoder_fixture, load_tensors, max_diff};
use emollama::media::audio_clips::AudioClips;
use emollama::media::fbank::{FbankOptions, KaldiFbank, beats_fbank};
use emollama::model::encoders::FrozenEncoder;
use emollama::model::encoders::beats::{Beats, BeatsConfig, relative_buckets};
use emollama::registry::{EncoderManifest, Registry};

type R = anyhow::Result<()>;

fn reference() -> HashMap<String, Tensor> {
    load_tensors(&encoder_fixture("beats/reference.safetensors"))
}

fn wave(r: &HashMap<String, Tensor>) -> anyhow::Result<Vec<f32>> {
    Ok(r["wave_i16"].to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter().map(|v| v / 32768.0).collect())
}

fn config(dir: &str) -> anyhow::Result<BeatsConfig> {
    let text = std::fs::read_to_string(encoder_fixture(dir).join("config.json"))?;
    let cfg: BeatsConfig = serde_json::from_str(&text)?;
    cfg.validate()?;
    Ok(cfg)
}

fn model(dir: &str) -> anyhow::Result<Beats> {
    let weights = encoder_fixture(dir).join("model.safetensors");
    // SAFETY: the fixture file is not modified while it is mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
    Ok(Beats::new(&config(dir)?, vb)?)
}

/// The fixture's long waveform: `long_wave()` of the fixture script, integer for integer.
fn long_wave() -> Vec<i64> {
    let n = 20 * 16_000;
    let mut state: i64 = 12345;
    (0..n)
        .map(|i: i64| {
            state = (1_103_515_245 * state + 12345) % (1 << 31);
            let noise = ((state >> 16) & 0x7FFF) - 16384;
            let saw = (i % 80) * 400 - 16000;
            let square = if i % 37 < 18 { 3000 } else { -3000 };
            // Python's floor division on negatives.
            let fdiv = |a: i64, b: i64| a.div_euclid(b);
            let v = match i / 16_000 {
                s if s < 5 => saw + fdiv(noise, 8),
                s if s < 7 => 0,
                s if s < 12 => square * 3 + fdiv(noise, 2),
                _ => fdiv(saw * ((i % 16_000) / 160), 100) + fdiv(noise, 16),
            };
            v.clamp(-32768, 32767)
        })
        .collect()
}

/// Max absolute difference, and max of |diff| / max(|reference|, 1).
fn fbank_errors(got: &Tensor, want: &Tensor) -> anyhow::Result<(f32, f32)> {
    let diff = (got - want)?.abs()?;
    let rel = diff.div(&want.abs()?.maximum(1f32)?)?.max_all()?.to_scalar::<f32>()?;
    Ok((diff.max_all()?.to_scalar::<f32>()?, rel))
}

#[test]
fn fbank_matches_torchaudio() -> R {
    let r = reference();
    let got = beats_fbank(&wave(&r)?)?;
    let want = &r["fbank"];
    let (_, frames, bins) = want.dims3()?;
    let got = Tensor::from_vec(got, (1, frames, bins), &Device::Cpu)?;
    let (d, rel) = fbank_errors(&got, want)?;
    eprintln!("fbank (2.5 s, {frames} frames): max |ours − torchaudio f32| = {d:.3e}, relative {rel:.3e}");
    // torchaudio computes in f32 and rounds low-energy bins of loud frames by up to 3.2e-4 (its own f64
    // result differs that much); ours is f64 throughout.
    assert!(rel <= 1e-4 && d <= 5e-4, "fbank differs from torchaudio by {d} (relative {rel})");
    let head = &r["fbank_f64_head"];
    let d64 = max_diff(&got.squeeze(0)?.narrow(0, 0, head.dim(0)?)?, &head.to_dtype(DType::F32)?);
    eprintln!("fbank, first {} frames: max |ours − torchaudio f64| = {d64:.3e}", head.dim(0)?);
    // What remains: torchaudio's filters are f32 tensors whose mel values go through torch's vectorised
    // f32 log, one ulp off the correctly rounded log used here for 29 of the 256 FFT bins.
    assert!(d64 <= 5e-5, "fbank differs from torchaudio's f64 result by {d64}");

    // 20 s: every 10th frame stored.
    let long = load_tensors(&encoder_fixture("beats/fbank_long.safetensors"));
    let samples = long_wave();
    assert_eq!(samples.iter().sum::<i64>(), long["wave_sum"].to_vec1::<i64>()?[0], "the long waveform generator differs from the fixture script's");
    let wave: Vec<f32> = samples.iter().map(|&v| v as f32 / 32768.0).collect();
    let fb = KaldiFbank::new(&FbankOptions::beats())?;
    let all = fb.compute(&wave.iter().map(|v| v * 32768.0).collect::<Vec<_>>())?;
    assert_eq!((all.len() / 128) as i64, long["num_frames"].to_vec1::<i64>()?[0]);
    let idx = long["frame_index"].to_dtype(DType::U32)?;
    let frames = all.len() / 128;
    let got = Tensor::from_vec(all, (frames, 128), &Device::Cpu)?.index_select(&idx, 0)?;
    let (d, rel) = fbank_errors(&got, &long["frames"])?;
    eprintln!("fbank (20 s, 200 of 1998 frames): max |ours − torchaudio f32| = {d:.3e}, relative {rel:.3e}");
    assert!(rel <= 1e-4 && d <= 5e-4, "long fbank differs from torchaudio by {d} (relative {rel})");
    Ok(())
}

#[test]
fn beats_matches_the_reference() -> R {
    let r = reference();
    let m = model("beats")?;
    let norm = Beats::normalise(&r["fbank"].narrow(1, 0, 16)?)?;
    assert!(max_diff(&norm, &r["normalised"]) <= 1e-6);
    let states = m.forward_states(&r["fbank"])?;
    assert_eq!(states.len(), 3);
    for (i, s) in states.iter().enumerate() {
        let d = max_diff(s, &r[&format!("hidden_states.{i}")]);
        eprintln!("BEATs hidden state {i}: max |diff| {d:.3e}");
        assert!(d <= 1e-4, "hidden state {i} differs by {d}");
    }
    let d = max_diff(&m.forward(&r["fbank"])?, &r["output"]);
    eprintln!("BEATs output (120 tokens): max |diff| {d:.3e}");
    assert!(d <= 1e-4);

    // Pre-LN, patch bias, no projection, odd positional kernel, no gate, tanh GELU.
    let pre = model("beats/prenorm")?;
    let d = max_diff(&pre.forward(&r["fbank"])?, &r["prenorm.output"]);
    eprintln!("BEATs pre-LN variant output: max |diff| {d:.3e}");
    assert!(d <= 1e-4, "pre-LN variant differs by {d}");
    Ok(())
}

#[test]
fn relative_buckets_match_the_reference_at_real_size() -> R {
    let r = reference();
    for (key, nb, md) in [("real", 320, 800), ("tiny", 32, 64)] {
        let want: Vec<u32> = r[&format!("buckets.{key}")].to_dtype(DType::U32)?.to_vec1()?;
        assert_eq!(relative_buckets(1496, nb, md), want, "buckets {key}");
    }
    Ok(())
}

/// The AV path: clips → fbank → BEATs, by hand and through a manifest's `prepare_audio`.
#[test]
fn av_audio_pipeline_matches_the_reference() -> R {
    let r = reference();
    let clips = AudioClips { clips: 8, seconds: 2.0, pad_to_seconds: 30.0 };
    let picked = clips.apply(&wave(&r)?, 16_000).map_err(anyhow::Error::msg)?;
    assert_eq!(picked.len(), 480_000);
    let fb = emollama::model::encoders::beats::fbank_batch(&Tensor::from_vec(picked, (1, 480_000), &Device::Cpu)?)?;
    assert_eq!(fb.dims(), &[1, 2998, 128]);
    let m = model("beats")?;
    let d = max_diff(&m.forward(&fb)?, &r["pipeline.output"]);
    eprintln!("AV pipeline (1496 tokens): max |diff| {d:.3e}");
    assert!(d <= 1e-4, "pipeline differs by {d}");

    let dir = tempfile::tempdir()?;
    let manifest = manifest(dir.path())?;
    let text = std::fs::read_to_string(&manifest)?;
    let m: EncoderManifest = toml::from_str(&text)?;
    let enc = FrozenEncoder::load(&manifest, &m, 0, &Device::Cpu)?;
    let w = wave(&r)?;
    let x = enc.prepare_audio(&Tensor::from_vec(w.clone(), (1, w.len()), &Device::Cpu)?, None)?;
    let d = max_diff(&enc.final_output(&x)?, &r["pipeline.output"]);
    eprintln!("AV pipeline through the manifest: max |diff| {d:.3e}");
    assert!(d <= 1e-4);
    Ok(())
}

/// A manifest whose weights are the fixture under VideoLLaMA2's `model.audio_tower.` prefix, next to
/// other modules' tensors (re-rooted at load, the others dropped).
fn manifest(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut tensors: HashMap<String, Tensor> = load_tensors(&encoder_fixture("beats/model.safetensors")).into_iter().map(|(k, v)| (format!("model.audio_tower.{k}"), v)).collect();
    tensors.insert("model.mm_projector_a.0.weight".into(), Tensor::zeros((4, 32), DType::F32, &Device::Cpu)?);
    let weights = dir.join("audio_tower.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(encoder_fixture("beats/config.json"))?)?;
    let mut config = toml::Table::new();
    for (k, v) in cfg.as_object().ok_or_else(|| anyhow::anyhow!("config"))? {
        let v = match v {
            serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
            serde_json::Value::Number(n) => toml::Value::Integer(n.as_i64().ok_or_else(|| anyhow::anyhow!("{k}"))?),
            serde_json::Value::String(s) => toml::Value::String(s.clone()),
            other => anyhow::bail!("{k}: {other}"),
        };
        config.insert(k.clone(), v);
    }
    let text = format!(
        "name = \"beats-fixture\"\narchitecture = \"beats\"\nmodality = \"audio\"\n\n[config]\n{}\n[weights]\nsource = \"path\"\npath = {:?}\n\n[preprocess]\naudio_clips = {{ clips = 8, seconds = 2.0, pad_to_seconds = 30.0 }}\n\n[features]\nlayers = [-1]\npooling = \"mean\"\n",
        toml::to_string(&config)?,
        weights.to_str().ok_or_else(|| anyhow::anyhow!("utf-8"))?
    );
    let path = dir.join("beats-fixture.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// 16 kHz mono 16-bit PCM WAV: decodes to exactly `i16 / 32768`.
fn write_wav(path: &Path, samples: &[i16]) -> std::io::Result<()> {
    let data = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&32_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b)
}

fn extract(args: &[&str]) {
    let out = common::emollama(&[&["extract"], args].concat(), &[]);
    assert!(out.status.success(), "emollama extract {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `emollama extract` on a WAV file (decode, clip selection, fbank, BEATs from a prefixed checkpoint) and
/// on a preprocessed fbank file.
#[test]
fn extract_matches_the_reference() -> R {
    let r = reference();
    let dir = tempfile::tempdir()?;
    let manifest = manifest(dir.path())?;
    let s = |p: &Path| p.to_str().map(String::from).ok_or_else(|| anyhow::anyhow!("utf-8"));
    let samples: Vec<i16> = r["wave_i16"].to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|v| v as i16).collect();
    let wav = dir.path().join("clip.wav");
    write_wav(&wav, &samples)?;

    let out = dir.path().join("all.safetensors");
    extract(&["--encoder", &s(&manifest)?, "--input", &s(&wav)?, "--out", &s(&out)?, "--pooling", "none"]);
    let got = load_tensors(&out);
    let last = got["clip.hidden_states.2"].unsqueeze(0)?;
    let d = max_diff(&last, &r["pipeline.output"]);
    eprintln!("emollama extract on the WAV (1496 tokens): max |diff| {d:.3e}");
    assert!(d <= 1e-4, "extract differs by {d}");

    // The manifest's feature: the last layer averaged over tokens.
    let pooled = dir.path().join("pooled.safetensors");
    extract(&["--encoder", &s(&manifest)?, "--input", &s(&wav)?, "--out", &s(&pooled)?]);
    let d = max_diff(&load_tensors(&pooled)["clip"], &r["pipeline.output"].mean(1)?.squeeze(0)?);
    assert!(d <= 1e-5, "pooled feature differs by {d}");

    // Preprocessed input: `fbank` (batch, frames, 128).
    let input = dir.path().join("fbank.safetensors");
    r["fbank"].save_safetensors("fbank", &input)?;
    let out = dir.path().join("from_fbank.safetensors");
    extract(&["--encoder", &s(&manifest)?, "--input", &s(&input)?, "--out", &s(&out)?, "--pooling", "none"]);
    let got = load_tensors(&out);
    for i in 0..3 {
        let d = max_diff(&got[&format!("hidden_states.{i}")], &r[&format!("hidden_states.{i}")]);
        assert!(d <= 1e-4, "extract --input fbank: hidden state {i} differs by {d}");
    }
    // The waveform is not BEATs' input.
    let wrong = dir.path().join("wave.safetensors");
    Tensor::zeros((1, 16_000), DType::F32, &Device::Cpu)?.save_safetensors("input_values", &wrong)?;
    let o = common::emollama(&["extract", "--encoder", &s(&manifest)?, "--input", &s(&wrong)?, "--out", &s(&dir.path().join("x.safetensors"))?], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("fbank"), "{err}");
    Ok(())
}

/// The registered manifests: the tiny one runs on a short clip; the real-size one counts its parameters
/// without weights (the plans' shape recorder).
#[test]
fn manifests_build_and_count() -> R {
    let reg = Registry::load(&common::repo())?;
    let (path, m) = reg.encoder("beats-tiny")?;
    let enc = FrozenEncoder::load(path, m, 3, &Device::Cpu)?;
    let x = enc.prepare_audio(&Tensor::randn(0f32, 0.1, (1, 8000), &Device::Cpu)?, None)?;
    assert_eq!(x.dims(), &[1, 2998, 128]);
    assert_eq!(enc.final_output(&x)?.dims(), &[1, 1496, 32]);

    let (path, m) = reg.encoder("beats-iter3-plus-as2m")?;
    let (vb, rec) = emollama::model::shapes::recorder(DType::F32);
    let enc = FrozenEncoder::build(path, m, None, vb)?;
    assert_eq!(enc.hidden_size, 768);
    let n: usize = rec.take().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    eprintln!("BEATs iter3+ parameters: {n}");
    // patch 512·256, LN 2·512, proj 512·768 + 768, pos conv 128 + 768·48·128 + 768, encoder LN 2·768,
    // 12 × (4 × (768² + 768) + grep 64·8 + 8 + 12 + 2 LNs 4·768 + fc1 768·3072 + 3072 + fc2 3072·768 + 768),
    // relative bias 320·12.
    let layer = 4 * (768 * 768 + 768) + 64 * 8 + 8 + 12 + 4 * 768 + 768 * 3072 + 3072 + 3072 * 768 + 768;
    let want = 512 * 256 + 2 * 512 + 512 * 768 + 768 + 128 + 768 * 48 * 128 + 768 + 2 * 768 + 12 * layer + 320 * 12;
    assert_eq!(n, want);
    assert_eq!(n, 90_311_792);
    Ok(())
}
