//! The numerical checks against the PyTorch parity fixtures (written by `tools/fixtures/*.py`): inputs and
//! reference outputs of tiny random models, run here on the chosen device.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::{Check, Measured, Metric, timed};
use crate::model::encoders::eva_vit::{EvaVit, EvaVitConfig};
use crate::model::encoders::hubert::{HubertConfig, HubertModel};
use crate::model::encoders::videomae::{VideoMAEConfig, VideoMAEModel};
use crate::model::encoders::vit_mae::{ViTMAEConfig, ViTMAEModel};
use crate::model::llama::Llama;
use crate::model::lora::load_peft;
use crate::model::weights::{PretrainedBackend, apply_adapter, open_hf_model};

fn err(what: &str) -> impl Fn(candle_core::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn load(path: &Path, dev: &Device) -> Result<HashMap<String, Tensor>, String> {
    candle_core::safetensors::load(path, dev).map_err(|e| format!("`{}`: {e}", path.display()))
}

fn get<'a>(r: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor, String> {
    r.get(key).ok_or_else(|| format!("the reference has no `{key}`"))
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("`{}`: {e}", path.display()))
}

fn weights(dir: &Path, dev: &Device) -> Result<VarBuilder<'static>, String> {
    let tensors = load(&dir.join("model.safetensors"), dev)?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, dev))
}

/// max |a - b| in f32.
pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("shape {:?} vs reference {:?}", a.dims(), b.dims());
    }
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()
}

/// Cosine similarity of the flattened tensors, in f32.
pub(crate) fn cosine(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    let dot = (&a * &b)?.sum_all()?.to_scalar::<f32>()?;
    let na = a.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    let nb = b.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok(dot / (na * nb).max(f32::MIN_POSITIVE))
}

/// Every hidden state against the reference's `{prefix}{i}`: the worst difference.
fn hidden_states(got: &[Tensor], r: &HashMap<String, Tensor>, prefix: &str) -> Result<f32, String> {
    let want = (0..).map_while(|i| r.get(&format!("{prefix}{i}"))).count();
    if want == 0 || got.len() != want {
        return Err(format!("{} hidden states, the reference has {want}", got.len()));
    }
    let mut worst = 0f32;
    for (i, g) in got.iter().enumerate() {
        worst = worst.max(max_abs(g, get(r, &format!("{prefix}{i}"))?).map_err(err("hidden state"))?);
    }
    Ok(worst)
}

/// Builds an encoder from a fixture folder's config and weights and returns every hidden state of `input`.
type Forward = fn(&Path, VarBuilder<'static>, &Tensor) -> Result<Vec<Tensor>, String>;

/// Each encoder architecture's fixture, in f32, every hidden state within `tol` of transformers / timm.
pub fn encoders(fixtures: &Path, dev: &Device, tol: f32) -> Vec<Check> {
    let hubert: Forward = |d, vb, x| {
        let cfg = HubertConfig::from_hf_file(&d.join("config.json")).map_err(err("config"))?;
        HubertModel::new(&cfg, vb).and_then(|m| m.forward(x)).map_err(err("HuBERT"))
    };
    let vit_mae: Forward = |d, vb, x| ViTMAEModel::new(&json::<ViTMAEConfig>(&d.join("config.json"))?, vb).and_then(|m| m.forward(x)).map_err(err("ViT-MAE"));
    let videomae: Forward = |d, vb, x| VideoMAEModel::new(&json::<VideoMAEConfig>(&d.join("config.json"))?, vb).and_then(|m| m.forward(x)).map_err(err("VideoMAE"));
    let eva: Forward = |d, vb, x| EvaVit::new(&json::<EvaVitConfig>(&d.join("config.json"))?, vb).and_then(|m| m.forward(x)).map_err(err("EVA"));
    // (check, fixture folder, input, reference prefix, reference implementation, forward)
    let cases: [(&str, &str, &str, &str, &str, Forward); 4] = [
        ("encoder hubert", "hubert-layer", "input_values", "hidden_state.", "HuBERT (transformers HubertModel)", hubert),
        ("encoder vit_mae", "vit_mae", "pixel_values", "hidden_states.", "ViT-MAE (transformers ViTMAEModel)", vit_mae),
        ("encoder videomae", "videomae/mean_pooling", "pixel_values", "hidden_states.", "VideoMAE (transformers VideoMAEModel)", videomae),
        ("encoder eva_vit", "eva_vit", "pixel_values", "hidden_states.", "EVA ViT (timm / LAVIS)", eva),
    ];
    cases
        .into_iter()
        .map(|(name, folder, input, prefix, what, forward)| {
            timed(name, "f32", Metric::MaxAbsDiff, f64::from(tol), || {
                let d = fixtures.join("encoders").join(folder);
                let r = load(&d.join("reference.safetensors"), dev)?;
                let states = forward(&d, weights(&d, dev)?, get(&r, input)?)?;
                Ok((f64::from(hidden_states(&states, &r, prefix)?), format!("every hidden state of {what}")))
            })
        })
        .collect()
}

/// The tiny LLaMA of `llm/tiny-llama-hf` with its PEFT adapter, its weights in `dtype` (the adapter an f32
/// master) computing in `compute`, and the PyTorch logits / loss / adapter gradients it must reproduce.
struct LoraCase {
    model: Llama,
    varmap: VarMap,
    reference: HashMap<String, Tensor>,
    lora_reference: HashMap<String, Tensor>,
}

fn lora_case(fixtures: &Path, dev: &Device, dtype: DType, compute: DType) -> Result<LoraCase, String> {
    let dir = fixtures.join("llm").join("tiny-llama-hf");
    let (cfg, store) = open_hf_model(&dir).map_err(|e| e.to_string())?;
    let (lora, tensors) = load_peft(&dir.join("adapter"), "").map_err(|e| e.to_string())?;
    let varmap = VarMap::new();
    let vb = PretrainedBackend::builder(Arc::new(store), "", &varmap, 0, dtype, dev);
    let model = Llama::load(&cfg, Some(&lora), None, vb).and_then(|m| m.with_compute_dtype(compute)).map_err(err("load"))?;
    let tensors: HashMap<String, Tensor> = tensors.into_iter().map(|(k, t)| Ok((k, t.to_device(dev)?))).collect::<candle_core::Result<_>>().map_err(err("adapter"))?;
    let n = apply_adapter(&varmap, &tensors, &dir.join("adapter")).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the adapter set no tensor".into());
    }
    Ok(LoraCase { model, varmap, reference: load(&dir.join("reference.safetensors"), dev)?, lora_reference: load(&dir.join("lora_reference.safetensors"), dev)? })
}

/// Logits of the real positions, the HF causal-LM loss over `labels`, and the gradient of every adapter
/// matrix, each paired with PyTorch's.
struct LoraOutputs {
    logits: Vec<(Tensor, Tensor)>,
    loss: (f32, f32),
    grads: Vec<(String, Tensor, Tensor)>,
}

fn lora_outputs(c: &LoraCase) -> Result<LoraOutputs, String> {
    let ids = get(&c.reference, "input_ids")?.to_dtype(DType::U32).map_err(err("ids"))?;
    let mask = get(&c.reference, "attention_mask")?;
    let logits = c.model.forward_embeds(&c.model.embed(&ids).map_err(err("embed"))?, &mask.to_dtype(DType::U8).map_err(err("mask"))?).map_err(err("forward"))?;
    let want = get(&c.lora_reference, "logits")?;
    let lens = mask.to_dtype(DType::I64).and_then(|m| m.sum(1)).and_then(|s| s.to_vec1::<i64>()).map_err(err("mask"))?;
    let mut pairs = Vec::new();
    for (row, len) in lens.into_iter().enumerate() {
        let len = len as usize;
        pairs.push((logits.i((row, ..len)).map_err(err("logits"))?, want.i((row, ..len)).map_err(err("reference"))?));
    }
    // HF's loss: position t predicts label t + 1; -100 is ignored; mean over the rest.
    let (b, t, _) = logits.dims3().map_err(err("logits"))?;
    let labels = get(&c.lora_reference, "labels")?.to_dtype(DType::I64).and_then(|l| l.to_vec2::<i64>()).map_err(err("labels"))?;
    let (mut pos, mut tgt) = (Vec::new(), Vec::new());
    for (row, lab) in labels.iter().enumerate() {
        for (k, &label) in lab.iter().enumerate().skip(1) {
            if label >= 0 {
                pos.push((row * t + k - 1) as u32);
                tgt.push(label as u32);
            }
        }
    }
    // As training computes it: the head in f32 over the answer positions only.
    let dev = logits.device();
    let hidden = c.model.hidden_states(&c.model.embed(&ids).map_err(err("embed"))?, &mask.to_dtype(DType::U8).map_err(err("mask"))?, false).map_err(err("forward"))?;
    let h = hidden.dim(2).map_err(err("hidden"))?;
    let picked = hidden
        .reshape((b * t, h))
        .and_then(|x| x.index_select(&Tensor::new(pos.as_slice(), dev)?, 0))
        .and_then(|x| c.model.lm_head_f32(&x))
        .map_err(err("loss"))?;
    let loss = candle_nn::loss::cross_entropy(&picked, &Tensor::new(tgt.as_slice(), dev).map_err(err("targets"))?).map_err(err("loss"))?;
    let got_loss = loss.to_scalar::<f32>().map_err(err("loss"))?;
    let want_loss = get(&c.lora_reference, "loss")?.to_dtype(DType::F32).and_then(|l| l.flatten_all()).and_then(|l| l.to_vec1::<f32>()).map_err(err("loss"))?;
    let grads = loss.backward().map_err(err("backward"))?;
    let data = c.varmap.data().lock().map_err(|_| "the parameter map is poisoned".to_string())?;
    let mut out = Vec::new();
    for (key, want) in c.lora_reference.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = key.trim_start_matches("grad.base_model.model.");
        let var = data.get(name).ok_or_else(|| format!("no variable {name}"))?;
        let g = grads.get(var.as_tensor()).ok_or_else(|| format!("no gradient for {name}"))?;
        out.push((name.to_string(), g.clone(), want.clone()));
    }
    if out.is_empty() {
        return Err("the reference has no adapter gradients".into());
    }
    Ok(LoraOutputs { logits: pairs, loss: (got_loss, want_loss.first().copied().unwrap_or(f32::NAN)), grads: out })
}

/// f32: logits, loss and the adapter gradients within the tolerance of PEFT's (the worst is reported).
pub fn llm_lora_f32(fixtures: &Path, dev: &Device) -> Measured {
    let c = lora_case(fixtures, dev, DType::F32, DType::F32)?;
    let o = lora_outputs(&c)?;
    let mut worst = (o.loss.0 - o.loss.1).abs();
    for (a, b) in &o.logits {
        worst = worst.max(max_abs(a, b).map_err(err("logits"))?);
    }
    for (_, g, w) in &o.grads {
        worst = worst.max(max_abs(g, w).map_err(err("gradient"))?);
    }
    Ok((f64::from(worst), format!("logits, loss {:.5} (PyTorch {:.5}), {} adapter gradients", o.loss.0, o.loss.1, o.grads.len())))
}

/// bf16 weights and compute (adapter f32 masters), forward: the lowest cosine of the logits against
/// PyTorch's f32 ones.
pub fn llm_lora_bf16_forward(fixtures: &Path, dev: &Device) -> Measured {
    let c = lora_case(fixtures, dev, DType::BF16, DType::BF16)?;
    if c.model.compute_dtype() != DType::BF16 {
        return Err("the model did not compute in bf16".into());
    }
    let o = lora_outputs(&c)?;
    let mut lowest = f32::INFINITY;
    for (a, b) in &o.logits {
        lowest = lowest.min(cosine(a, b).map_err(err("logits"))?);
    }
    Ok((f64::from(lowest), format!("logits of {} rows vs PyTorch f32; loss {:.4} (PyTorch f32 {:.4})", o.logits.len(), o.loss.0, o.loss.1)))
}

/// bf16 backward: the lowest cosine of the adapter gradients (f32 masters) against f32 arithmetic on the
/// same bf16 weights, so it measures the bf16 arithmetic. The detail also gives how far rounding this
/// tiny model's frozen weights to bf16 alone moves the gradients from PyTorch's f32 ones.
pub fn llm_lora_bf16_backward(fixtures: &Path, dev: &Device) -> Measured {
    let o = lora_outputs(&lora_case(fixtures, dev, DType::BF16, DType::BF16)?)?;
    let exact = lora_outputs(&lora_case(fixtures, dev, DType::BF16, DType::F32)?)?;
    let (mut lowest, mut which, mut floor) = (f32::INFINITY, String::new(), f32::INFINITY);
    for (name, g, _) in &o.grads {
        if g.dtype() != DType::F32 {
            return Err(format!("gradient of {name} is {:?}, not the f32 master's", g.dtype()));
        }
        let (_, g32, torch) = exact.grads.iter().find(|(n, _, _)| n == name).ok_or_else(|| format!("no f32 gradient of {name}"))?;
        let c = cosine(g, g32).map_err(err("gradient"))?;
        if c < lowest {
            (lowest, which) = (c, name.clone());
        }
        floor = floor.min(cosine(g32, torch).map_err(err("gradient"))?);
    }
    Ok((f64::from(lowest), format!("{} adapter gradients (lowest: {which}); the bf16 weights alone give {floor:.4} vs PyTorch f32", o.grads.len())))
}
