//! Parity with `transformers.HubertModel` (4.46.3) on the tiny random models written by
//! `tools/fixtures/make_hubert_fixtures.py`: `hubert-group` (group-norm conv stack, post-LN encoder,
//! positional conv saved as `weight_g`/`weight_v`) and `hubert-layer` (layer-norm conv stack with bias,
//! stable-layer-norm encoder, no feature-projection norm, positional conv saved as `parametrizations`).
//! Every hidden state, the `Wav2Vec2FeatureExtractor` normalisation and MERBench's 3-chunk path are checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use emollama::model::encoders::hubert::{HubertConfig, HubertModel, normalize_waveform};

type R = anyhow::Result<()>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(a.dims() == b.dims(), "shape {:?} vs reference {:?}", a.dims(), b.dims());
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn load_model(dir: &Path, weights: &Path) -> anyhow::Result<HubertModel> {
    let cfg = HubertConfig::from_hf_file(&dir.join("config.json"))?;
    // SAFETY: the fixture file is not modified while it is mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
    Ok(HubertModel::new(&cfg, vb)?)
}

fn reference(name: &str) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)?)
}

fn check_states(got: &[Tensor], r: &HashMap<String, Tensor>, prefix: &str, what: &str) -> anyhow::Result<f32> {
    let want: Vec<&Tensor> = (0..).map_while(|i| r.get(&format!("{prefix}{i}"))).collect();
    assert_eq!(got.len(), want.len(), "{what}: number of hidden states");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = max_diff(g, w)?;
        eprintln!("{what} hidden state {i}: max |diff| {d:.3e}");
        assert!(d <= 1e-4, "{what}: hidden state {i} differs from transformers by {d}");
        worst = worst.max(d);
    }
    Ok(worst)
}

fn parity(name: &str, layers: usize) -> R {
    let dir = fixture(name);
    let model = load_model(&dir, &dir.join("model.safetensors"))?;
    let r = reference(name)?;

    let norm = normalize_waveform(&r["raw"])?;
    let d = max_diff(&norm, &r["input_values"])?;
    eprintln!("{name} normalisation: max |diff| {d:.3e}");
    assert!(d <= 1e-5, "{name}: normalize_waveform differs from Wav2Vec2FeatureExtractor by {d}");

    let x = &r["input_values"];
    let states = model.forward(x)?;
    assert_eq!(states.len(), layers + 1);
    assert_eq!(states[0].dim(1)?, model.frames_for(x.dim(1)?));
    check_states(&states, &r, "hidden_state.", name)?;

    let chunk = r["chunk_samples"].to_scalar::<i64>()? as usize;
    assert_eq!(x.dim(1)?.div_ceil(chunk), 3, "fixture should give 3 chunks");
    let chunked = model.forward_chunked(x, chunk)?;
    check_states(&chunked, &r, "chunked.hidden_state.", &format!("{name} chunked"))?;

    // At or under one chunk, MERBench runs the utterance whole.
    let whole = model.forward_chunked(x, x.dim(1)?)?;
    assert_eq!(max_diff(&whole[layers], &states[layers])?, 0.0);
    Ok(())
}

#[test]
fn hubert_group_post_ln_matches_transformers() -> R {
    parity("hubert-group", 2)
}

#[test]
fn hubert_layer_stable_ln_matches_transformers() -> R {
    parity("hubert-layer", 2)
}

#[test]
fn too_short_input_is_an_error() -> R {
    let dir = fixture("hubert-group");
    let model = load_model(&dir, &dir.join("model.safetensors"))?;
    assert_eq!(model.min_samples(), 400);
    let err = model.forward(&Tensor::zeros((2, 399), DType::F32, &Device::Cpu)?).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("399 samples") && err.contains("receptive field"), "{err}");
    assert_eq!(model.forward(&Tensor::zeros((1, 400), DType::F32, &Device::Cpu)?)?[0].dims(), &[1, 1, 32]);
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> R {
    for (name, missing) in [
        ("hubert-group", "encoder.layers.1.attention.q_proj.weight"),
        ("hubert-group", "encoder.pos_conv_embed.conv.weight_v"),
        ("hubert-layer", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
        ("hubert-layer", "feature_extractor.conv_layers.3.layer_norm.bias"),
    ] {
        let dir = fixture(name);
        let mut tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
        assert!(tensors.remove(missing).is_some(), "{missing} should be in the fixture");
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        let err = load_model(&dir, &path).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains(missing), "{name} without {missing}: error `{err}` does not name it");
    }
    Ok(())
}
