//! Parity of the EVA ViT-g encoder and its preprocessing with the references written by
//! `tools/fixtures/make_eva_fixtures.py`: a tiny timm `Eva` in the LAVIS layout (checkpoint pos_embed at a
//! 4×4 grid, model at 8×8, so the bicubic pos_embed interpolation is exercised), loaded from both
//! safetensors and a `torch.save` zip `.pth`; MiniGPT-v2's `ln_vision` and 4-token merge; and Pillow's
//! bicubic `Image.resize` plus the CLIP normalisation.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use emollama::media::resize::{clip_normalize, resize_bicubic_rgb};
use emollama::model::encoders::eva_vit::{EvaVit, EvaVitConfig, LnVision, merge_patches};

type R = anyhow::Result<()>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders/eva_vit").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(a.dims() == b.dims(), "shape {:?} vs reference {:?}", a.dims(), b.dims());
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn config() -> anyhow::Result<EvaVitConfig> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture("config.json"))?)?)
}

fn reference() -> anyhow::Result<std::collections::HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture("reference.safetensors"), &Device::Cpu)?)
}

fn safetensors_vb() -> anyhow::Result<VarBuilder<'static>> {
    // SAFETY: the fixture file is committed and not modified while the test runs.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[fixture("model.safetensors")], DType::F32, &Device::Cpu)? })
}

/// Every hidden state, the interpolated pos_embed, against the reference; returns the worst difference.
fn check_model(model: &EvaVit, what: &str) -> anyhow::Result<f32> {
    let r = reference()?;
    let mut worst = max_diff(model.pos_embed(), &r["pos_embed_interp"])?;
    assert!(worst <= 1e-6, "{what}: interpolated pos_embed differs from F.interpolate by {worst}");
    let hidden = model.forward(&r["pixel_values"])?;
    assert_eq!(hidden.len(), model.config().depth + 1);
    for (i, h) in hidden.iter().enumerate() {
        let d = max_diff(h, &r[&format!("hidden_states.{i}")])?;
        println!("{what}: hidden_states.{i} max diff {d:e}");
        assert!(d <= 1e-4, "{what}: hidden state {i} differs from timm by {d}");
        worst = worst.max(d);
    }
    let last = model.forward_last(&r["pixel_values"])?;
    assert_eq!(max_diff(&last, &hidden[hidden.len() - 1])?, 0.0);
    Ok(worst)
}

#[test]
fn eva_matches_timm_from_safetensors() -> R {
    let cfg = config()?;
    let vb = safetensors_vb()?;
    let model = EvaVit::new(&cfg, vb)?;
    let worst = check_model(&model, "safetensors")?;
    println!("safetensors: worst {worst:e}");
    Ok(())
}

#[test]
fn eva_matches_timm_from_pth() -> R {
    let cfg = config()?;
    let vb = VarBuilder::from_pth(fixture("model.pth"), DType::F32, &Device::Cpu)?;
    let model = EvaVit::new(&cfg, vb)?;
    let worst = check_model(&model, "pth")?;
    println!("pth: worst {worst:e}");
    Ok(())
}

#[test]
fn ln_vision_and_merge_match_minigpt() -> R {
    let cfg = config()?;
    let vb = safetensors_vb()?;
    let model = EvaVit::new(&cfg, vb.clone())?;
    let ln = LnVision::load_or_identity(cfg.embed_dim, vb.pp("ln_vision"))?;
    let r = reference()?;
    let out = ln.forward(&model.forward_last(&r["pixel_values"])?)?;
    let d_ln = max_diff(&out, &r["ln_vision"])?;
    let (patches, cls) = merge_patches(&out, 4)?;
    let d_p = max_diff(&patches, &r["patch_tokens"])?;
    let d_c = max_diff(&cls, &r["cls"])?;
    println!("ln_vision {d_ln:e}, patch_tokens {d_p:e}, cls {d_c:e}");
    assert!(d_ln <= 1e-4 && d_p <= 1e-4 && d_c <= 1e-4, "ln_vision {d_ln}, patch_tokens {d_p}, cls {d_c}");
    // Absent weights: identity.
    let id = LnVision::load_or_identity(cfg.embed_dim, vb.pp("no_such_module"))?;
    assert_eq!(max_diff(&id.forward(&out)?, &out)?, 0.0);
    Ok(())
}

#[test]
fn batch_rows_are_independent() -> R {
    let cfg = config()?;
    let model = EvaVit::new(&cfg, safetensors_vb()?)?;
    let r = reference()?;
    let a = &r["pixel_values"];
    let b = a.flip(&[3])?;
    let both = model.forward_last(&Tensor::cat(&[a, &b], 0)?)?;
    let d_a = max_diff(&both.get(0)?, &r[&format!("hidden_states.{}", cfg.depth)].get(0)?)?;
    let d_b = max_diff(&both.get(1)?, &model.forward_last(&b)?.get(0)?)?;
    assert!(d_a <= 1e-4 && d_b <= 1e-5, "batched vs single: {d_a}, {d_b}");
    Ok(())
}

#[test]
fn wrong_input_size_is_an_error() -> R {
    let model = EvaVit::new(&config()?, safetensors_vb()?)?;
    let x = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu)?;
    let e = model.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("(batch, 3, 112, 112)"), "{e}");
    Ok(())
}

fn u8_image(t: &Tensor) -> anyhow::Result<(Vec<u8>, usize, usize)> {
    let (h, w, c) = t.dims3()?;
    anyhow::ensure!(c == 3);
    Ok((t.flatten_all()?.to_vec1::<u8>()?, w, h))
}

#[test]
fn bicubic_resize_matches_pillow() -> R {
    let r = candle_core::safetensors::load(fixture("resize.safetensors"), &Device::Cpu)?;
    let (src, w, h) = u8_image(&r["src"])?;
    assert_eq!((w, h), (61, 47));
    for name in ["down", "up"] {
        let (want, nw, nh) = u8_image(&r[name])?;
        let got = resize_bicubic_rgb(&src, w, h, nw, nh)?;
        let diffs: Vec<i32> = got.iter().zip(&want).map(|(&a, &b)| i32::from(a) - i32::from(b)).collect();
        let off = diffs.iter().filter(|&&d| d != 0).count();
        let worst = diffs.iter().map(|d| d.abs()).max().unwrap_or(0);
        println!("{name} ({w}x{h} -> {nw}x{nh}): {off} of {} bytes differ, max {worst}", got.len());
        assert_eq!(off, 0, "{name}: {off} bytes differ from Pillow (max {worst})");
    }
    // Bilinear (torchvision's default filter for PIL images): MAE / VideoMAE preprocessing.
    for name in ["down_bilinear", "up_bilinear"] {
        let (want, nw, nh) = u8_image(&r[name])?;
        let got = emollama::media::resize::resize_rgb(&src, w, h, nw, nh, emollama::media::resize::Filter::Bilinear)?;
        let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(off, 0, "{name}: {off} bytes differ from Pillow");
    }
    let (down, dw, dh) = u8_image(&r["down"])?;
    let t = clip_normalize(&down, dw, dh, &Device::Cpu)?;
    let d = max_diff(&t, &r["down_normalized"])?;
    println!("clip_normalize max diff {d:e}");
    assert!(d <= 1e-6, "clip_normalize differs from torchvision by {d}");
    Ok(())
}
