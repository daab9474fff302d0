//! bf16 inference (`runtime.inference_precision = "bf16"`) on the encoder parity fixtures: every encoder's
//! last hidden state must stay within cosine similarity 0.999 of the f32 reference (transformers / timm),
//! and must really be rounded (not bit-equal to the f32 run). On a CPU without native bf16 the oneDNN path
//! emulates it with the same numbers (f32 products of bf16-rounded operands).
//!
//! Why 0.999: a bf16 operand keeps 8 significant bits (relative rounding error ≤ 2⁻⁹ ≈ 0.2 %); with f32
//! accumulation the errors of a length-K dot product add up like a random walk, so each matmul's output has a
//! relative error of a few 0.1 %, i.e. cosine ≈ 1 − 1e-5 per layer; LayerNorm and the residual stream keep it
//! from compounding, which leaves a wide margin over 0.999 for the 2–3 layer fixtures and real depths alike.
#![cfg(feature = "onednn")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use emollama::accel::{Precision, set_inference};
use emollama::model::encoders::eva_vit::{EvaVit, EvaVitConfig};
use emollama::model::encoders::hubert::{HubertConfig, HubertModel};
use emollama::model::encoders::videomae::{VideoMAEConfig, VideoMAEModel};
use emollama::model::encoders::vit_mae::{ViTMAEConfig, ViTMAEModel};

type R = anyhow::Result<()>;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders").join(name)
}

fn config<T: serde::de::DeserializeOwned>(d: &Path) -> anyhow::Result<T> {
    Ok(serde_json::from_str(&std::fs::read_to_string(d.join("config.json"))?)?)
}

fn weights(d: &Path) -> anyhow::Result<VarBuilder<'static>> {
    // SAFETY: the fixture file is committed and not modified while the test maps it.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[d.join("model.safetensors")], DType::F32, &Device::Cpu)? })
}

fn reference(d: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu)?)
}

fn cosine(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(a.dims() == b.dims(), "shape {:?} vs reference {:?}", a.dims(), b.dims());
    let (a, b) = (a.flatten_all()?, b.flatten_all()?);
    let dot = (&a * &b)?.sum_all()?.to_scalar::<f32>()?;
    let na = a.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    let nb = b.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok(dot / (na * nb))
}

/// Runs `forward` in f32 and in bf16; asserts the f32 run matches `want` (1e-4) and the bf16 run is rounded
/// yet within cosine 0.999 of `want`.
fn check(what: &str, want: &Tensor, forward: impl Fn() -> anyhow::Result<Tensor>) -> R {
    set_inference(Precision::F32, 2);
    let f32_out = forward()?;
    let d = (&f32_out - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d <= 1e-4, "{what}: f32 differs from the reference by {d}");
    set_inference(Precision::Bf16, 2);
    let bf16_out = forward()?;
    set_inference(Precision::F32, 2);
    let c = cosine(&bf16_out, want)?;
    let moved = (&bf16_out - &f32_out)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("{what}: bf16 cosine to the f32 reference {c:.6}, max |bf16 - f32| {moved:.3e}");
    assert!(moved > 0.0, "{what}: bf16 output equals f32 bit for bit: bf16 did not take effect");
    assert!(c >= 0.999, "{what}: bf16 cosine similarity {c} < 0.999");
    Ok(())
}

// Each model is built per precision: weights are packed once at the precision of first use.

#[test]
fn hubert_bf16_is_within_cosine_0_999() -> R {
    for name in ["hubert-group", "hubert-layer"] {
        let d = dir(name);
        let r = reference(&d)?;
        let states = (0..).map_while(|i| r.get(&format!("hidden_state.{i}"))).count();
        let want = &r[&format!("hidden_state.{}", states - 1)];
        check(name, want, || {
            let model = HubertModel::new(&HubertConfig::from_hf_file(&d.join("config.json"))?, weights(&d)?)?;
            model.forward(&r["input_values"])?.pop().ok_or_else(|| anyhow::anyhow!("no hidden states"))
        })?;
    }
    Ok(())
}

#[test]
fn vit_mae_and_videomae_bf16_are_within_cosine_0_999() -> R {
    let d = dir("vit_mae");
    let r = reference(&d)?;
    check("vit_mae", &r["last_hidden_state"], || Ok(ViTMAEModel::new(&config::<ViTMAEConfig>(&d)?, weights(&d)?)?.forward_last(&r["pixel_values"])?))?;
    for name in ["mean_pooling", "final_layernorm"] {
        let d = dir("videomae").join(name);
        let r = reference(&d)?;
        check(&format!("videomae/{name}"), &r["last_hidden_state"], || {
            Ok(VideoMAEModel::new(&config::<VideoMAEConfig>(&d)?, weights(&d)?)?.forward_last(&r["pixel_values"])?)
        })?;
    }
    Ok(())
}

#[test]
fn eva_bf16_is_within_cosine_0_999() -> R {
    let d = dir("eva_vit");
    let r = reference(&d)?;
    let cfg: EvaVitConfig = config(&d)?;
    let last = format!("hidden_states.{}", cfg.depth);
    check("eva_vit", &r[&last], || Ok(EvaVit::new(&cfg, weights(&d)?)?.forward_last(&r["pixel_values"])?))
}
