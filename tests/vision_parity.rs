//! Parity with transformers 4.46.3 on tiny random models written by `tools/fixtures/make_vision_fixtures.py`:
//! ViT-MAE (`ViTMAEModel`, mask_ratio 0, identity patch order) and VideoMAE (`VideoMAEModel`, with and
//! without the final layernorm). Every hidden state and `last_hidden_state` must be within 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use emollama::model::encoders::videomae::{VideoMAEConfig, VideoMAEModel, mean_pool};
use emollama::model::encoders::vit_mae::{ViTMAEConfig, ViTMAEModel};

type R = anyhow::Result<()>;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders").join(name)
}

fn config<T: serde::de::DeserializeOwned>(dir: &Path) -> anyhow::Result<T> {
    Ok(serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?)
}

fn weights(dir: &Path) -> anyhow::Result<VarBuilder<'static>> {
    // SAFETY: the fixture file is committed and not modified while the test maps it.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)? })
}

fn reference(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?)
}

fn get<'a>(r: &'a HashMap<String, Tensor>, key: &str) -> anyhow::Result<&'a Tensor> {
    r.get(key).ok_or_else(|| anyhow::anyhow!("reference.safetensors has no `{key}`"))
}

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(a.dims() == b.dims(), "shape {:?} vs reference {:?}", a.dims(), b.dims());
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// Asserts every hidden state and the last one; returns the worst difference.
fn check(what: &str, states: &[Tensor], last: &Tensor, r: &HashMap<String, Tensor>) -> anyhow::Result<f32> {
    let want = (0..).map_while(|i| r.get(&format!("hidden_states.{i}"))).count();
    assert_eq!(states.len(), want, "{what}: number of hidden states");
    let mut worst = 0f32;
    for (i, s) in states.iter().enumerate() {
        let d = max_diff(s, get(r, &format!("hidden_states.{i}"))?)?;
        assert!(d <= TOL, "{what}: hidden_states.{i} differs from transformers by {d}");
        worst = worst.max(d);
    }
    let d = max_diff(last, get(r, "last_hidden_state")?)?;
    assert!(d <= TOL, "{what}: last_hidden_state differs from transformers by {d}");
    let worst = worst.max(d);
    println!("{what}: max abs difference {worst:.3e}");
    Ok(worst)
}

#[test]
fn vit_mae_matches_transformers() -> R {
    let dir = fixture("vit_mae");
    let cfg: ViTMAEConfig = config(&dir)?;
    let model = ViTMAEModel::new(&cfg, weights(&dir)?)?;
    let r = reference(&dir)?;
    let x = get(&r, "pixel_values")?;
    let states = model.forward(x)?;
    check("vit_mae", &states, &model.forward_last(x)?, &r)?;
    Ok(())
}

/// Without `embeddings.position_embeddings` the model computes HF's 2-D sin-cos table itself.
#[test]
fn vit_mae_computed_position_table_matches_checkpoint() -> R {
    let dir = fixture("vit_mae");
    let cfg: ViTMAEConfig = config(&dir)?;
    let mut w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let stored = w.remove("embeddings.position_embeddings").ok_or_else(|| anyhow::anyhow!("no position table"))?;
    let computed = emollama::model::encoders::vit_mae::sincos_2d_position_table(
        cfg.hidden_size,
        cfg.grid_size(),
        DType::F32,
        &Device::Cpu,
    )?;
    let d = max_diff(&computed.unsqueeze(0)?, &stored)?;
    assert!(d <= 1e-6, "sin-cos table differs from HF's by {d}");
    let model = ViTMAEModel::new(&cfg, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu))?;
    let r = reference(&dir)?;
    let x = get(&r, "pixel_values")?;
    let states = model.forward(x)?;
    check("vit_mae (computed positions)", &states, &model.final_layernorm(&states[states.len() - 1])?, &r)?;
    Ok(())
}

fn videomae(name: &str, use_mean_pooling: bool) -> R {
    let dir = fixture("videomae").join(name);
    let cfg: VideoMAEConfig = config(&dir)?;
    assert_eq!(cfg.use_mean_pooling, use_mean_pooling);
    let model = VideoMAEModel::new(&cfg, weights(&dir)?)?;
    let r = reference(&dir)?;
    let x = get(&r, "pixel_values")?;
    let states = model.forward(x)?;
    let last = model.forward_last(x)?;
    check(&format!("videomae/{name}"), &states, &last, &r)?;
    let pooled = mean_pool(&last)?;
    let want = get(&r, "last_hidden_state")?.mean(1)?;
    assert!(max_diff(&pooled, &want)? <= TOL);
    Ok(())
}

#[test]
fn videomae_mean_pooling_matches_transformers() -> R {
    videomae("mean_pooling", true)
}

#[test]
fn videomae_final_layernorm_matches_transformers() -> R {
    videomae("final_layernorm", false)
}
