//! LoRA: `y = x Wᵀ (+ b) + (α / r) · x Aᵀ Bᵀ`, with `A` (r × in) Kaiming-uniform and `B` (out × r) zero, so a
//! fresh adapter leaves the model unchanged. Adapters are saved in HF PEFT's layout
//! (`adapter_config.json` + `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`)
//! so `peft` can read them, and can be merged into the base weights for export.

use std::collections::HashMap;
use std::path::Path;

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// The fields of PEFT's `LoraConfig` this implementation honours (names as in `adapter_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (the last path component), e.g. `["q_proj", "v_proj"]` (Emotion-LLaMA).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// Emotion-LLaMA's adapter: r = 64, α = 16, dropout 0.05 on q_proj and v_proj.
    pub fn emotion_llama() -> Self {
        Self { r: 64, lora_alpha: 16.0, lora_dropout: 0.05, target_modules: vec!["q_proj".into(), "v_proj".into()] }
    }

    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| t == module)
    }
}

/// The frozen or trainable base of a linear layer: dense (differentiable), or a GGUF matrix kept
/// quantized for CPU inference (no gradient flows through it, so it is never used for training).
#[derive(Debug, Clone)]
pub enum BaseLinear {
    /// Differentiable through `forward`; `forward_inference` packs frozen weights for oneDNN.
    Dense(crate::accel::Linear),
    /// `prompt`: when set, inputs of [`PROMPT_ROWS`] rows or more (a prompt, not a decoding step) take a
    /// dense f32 copy of the weight, dequantized on first use, through the packed GEMM: a quantized
    /// matrix-vector product is the fast way to decode one token, but a prompt is a matrix product, where
    /// the packed f32 GEMM is ~2.7x faster than candle's row-by-row quantized dot products (BENCHMARKS.md).
    Quantized { weight: Arc<QTensor>, matmul: QMatMul, bias: Option<Tensor>, prompt: Option<Arc<OnceLock<crate::accel::Linear>>> },
}

/// Input rows from which a quantized layer with a dense prompt copy uses it (decoding steps, even
/// batched, have fewer).
pub const PROMPT_ROWS: usize = 16;

impl BaseLinear {
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self::Quantized { matmul: QMatMul::from_arc(weight.clone())?, weight, bias, prompt: None })
    }

    /// [`Self::quantized`], with a dense f32 copy made on the first prompt for prompts (twice the f32 size
    /// of the matrix in memory: the copy and its packed form; the caller decides whether it fits).
    pub fn quantized_with_dense_prompt(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self::Quantized { matmul: QMatMul::from_arc(weight.clone())?, weight, bias, prompt: Some(Arc::new(OnceLock::new())) })
    }

    /// [`Self::quantized_with_dense_prompt`] when `dense_prompt`, else [`Self::quantized`].
    pub fn quantized_for(weight: Arc<QTensor>, bias: Option<Tensor>, dense_prompt: bool) -> Result<Self> {
        if dense_prompt { Self::quantized_with_dense_prompt(weight, bias) } else { Self::quantized(weight, bias) }
    }

    /// (out, in).
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Self::Dense(l) => l.weight().dims2(),
            Self::Quantized { weight, .. } => weight.shape().dims2(),
        }
    }

    /// The dense layer (dequantized if needed).
    pub fn dense(&self) -> Result<Linear> {
        match self {
            Self::Dense(l) => Ok(l.as_candle().clone()),
            Self::Quantized { weight, bias, .. } => Ok(Linear::new(weight.dequantize(&weight.device())?, bias.clone())),
        }
    }
}

impl BaseLinear {
    pub fn dense_from(l: Linear) -> Self {
        Self::Dense(crate::accel::Linear::from(l))
    }

    /// For inference only (no gradient flows back through it): frozen dense weights go through the
    /// oneDNN fast path (packed once); trainable weights (variables, which an optimizer changes in place)
    /// and quantized ones take the usual path.
    pub fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) if !l.weight().is_variable() => l.forward(x),
            _ => self.forward(x),
        }
    }
}

impl Module for BaseLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => l.forward_differentiable(x),
            Self::Quantized { weight, matmul, bias, prompt } => {
                let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
                if let Some(cell) = prompt
                    && rows >= PROMPT_ROWS
                    && x.device().is_cpu()
                    && x.dtype() == candle_core::DType::F32
                {
                    if cell.get().is_none() {
                        // A race makes two copies and keeps one: harmless.
                        let _ = cell.set(crate::accel::Linear::new(weight.dequantize(x.device())?, bias.clone()));
                    }
                    if let Some(dense) = cell.get() {
                        return dense.forward(x);
                    }
                }
                // GGUF Q4_1 (e.g. SmolLM2's file): the run-time dispatched kernel of `accel::quant_gemv`.
                let y = match crate::accel::quant_gemv::forward(weight, x)? {
                    Some(y) => y,
                    None => matmul.forward(x)?,
                };
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// A linear layer with an optional low-rank adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: BaseLinear,
    adapter: Option<(Tensor, Tensor, f64)>,
    /// Dropout on the adapter's input during training (PEFT applies it to x before A).
    dropout: f32,
    rng: DropoutRng,
}

/// The seeded random stream behind LoRA dropout (candle's own CPU RNG cannot be seeded), shared by all
/// adapters of a model so a run's dropout masks are reproducible.
pub type DropoutRng = Arc<std::sync::Mutex<rand_chacha::ChaCha8Rng>>;

pub fn dropout_rng(seed: u64) -> DropoutRng {
    use rand::SeedableRng;
    Arc::new(std::sync::Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)))
}

/// Inverted dropout with a mask drawn from `rng` (also BEATs' training-time dropouts).
pub(crate) fn seeded_dropout(x: &Tensor, p: f32, rng: &DropoutRng) -> Result<Tensor> {
    use rand::Rng;
    let n = x.elem_count();
    let keep = 1.0 - p;
    let mut g = rng.lock().map_err(|_| candle_core::Error::Msg("dropout rng lock poisoned".into()))?;
    let mask: Vec<f32> = (0..n).map(|_| if g.random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    drop(g);
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

impl LoraLinear {
    /// The base `Linear` (weight named `weight`, optional `bias`) at `vb`; adapter tensors at
    /// `vb.lora_A.weight` / `vb.lora_B.weight` when `lora` targets `module`.
    pub fn new(base: BaseLinear, module: &str, lora: Option<&LoraConfig>, vb: VarBuilder) -> Result<Self> {
        Self::with_rng(base, module, lora, vb, dropout_rng(0))
    }

    pub fn with_rng(base: BaseLinear, module: &str, lora: Option<&LoraConfig>, vb: VarBuilder, rng: DropoutRng) -> Result<Self> {
        let adapter = match lora {
            Some(cfg) if cfg.targets(module) => {
                let (out, inp) = base.dims()?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a = vb.get_with_hints((cfg.r, inp), "lora_A.weight", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
                let b = vb.get_with_hints((out, cfg.r), "lora_B.weight", candle_nn::Init::Const(0.0))?;
                Some((a, b, cfg.scaling()))
            }
            _ => None,
        };
        let dropout = lora.map(|c| c.lora_dropout as f32).unwrap_or(0.0);
        Ok(Self { base, adapter, dropout, rng })
    }

    /// Every tensor of the layer: the base weight and bias (dense), the adapter's A and B.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        if let BaseLinear::Dense(l) = &self.base {
            out.push(l.weight().clone());
            out.extend(l.bias().cloned());
        }
        if let Some((a, b, _)) = &self.adapter {
            out.extend([a.clone(), b.clone()]);
        }
        out
    }

    /// `W + (α/r) B A`: the plain linear layer to export.
    pub fn merged(&self) -> Result<Linear> {
        let base = self.base.dense()?;
        match &self.adapter {
            None => Ok(base),
            Some((a, b, s)) => Ok(Linear::new((base.weight() + (b.matmul(a)? * *s)?)?, base.bias().cloned())),
        }
    }

    /// `train`: apply the adapter's dropout (inference never does).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.with_adapter(x, train, self.base.forward(x)?, self.adapter.clone())
    }

    /// Inference only (generation): the base through [`BaseLinear::forward_inference`]; no gradient
    /// reaches `x` through the base.
    pub fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        // The adapter detached: no graph is recorded for what never backpropagates.
        let adapter = self.adapter.as_ref().map(|(a, b, s)| (a.detach(), b.detach(), *s));
        self.with_adapter(x, false, self.base.forward_inference(x)?, adapter)
    }

    /// `y` (the base's product) plus the adapter's low-rank update of `x`.
    fn with_adapter(&self, x: &Tensor, train: bool, y: Tensor, adapter: Option<(Tensor, Tensor, f64)>) -> Result<Tensor> {
        match &adapter {
            None => Ok(y),
            Some((a, b, s)) => {
                let x = if train && self.dropout > 0.0 { seeded_dropout(x, self.dropout, &self.rng)? } else { x.clone() };
                // x Aᵀ Bᵀ through two small matmuls (never materialise the out × in update).
                // The adapter's small low-rank product stays in f32 (its masters' dtype) whatever the
                // activations' dtype: cheap at rank r, and it keeps the adapter's gradients precise.
                let low = x.to_dtype(a.dtype())?.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                let dt = y.dtype();
                y + (low * *s)?.to_dtype(dt)?
            }
        }
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("adapter `{path}`: {detail}")]
    Io { path: String, detail: String },
}

/// PEFT's key for an emollama parameter name under `prefix` (e.g. `llm.`): `base_model.model.<rest>`.
pub fn peft_key(name: &str, prefix: &str) -> Option<String> {
    name.strip_prefix(prefix).filter(|rest| rest.contains(".lora_")).map(|rest| format!("base_model.model.{rest}"))
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` from the LoRA tensors among
/// `params` (names starting with `prefix`).
pub fn save_peft(dir: &Path, cfg: &LoraConfig, params: &[(String, Tensor)], prefix: &str) -> std::result::Result<usize, AdapterError> {
    let io = |p: &Path, e: String| AdapterError::Io { path: p.display().to_string(), detail: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let tensors: HashMap<String, Tensor> = params.iter().filter_map(|(n, t)| peft_key(n, prefix).map(|k| (k, t.clone()))).collect();
    let weights = dir.join("adapter_model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| io(&weights, e.to_string()))?;
    let config = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.r, "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout, "target_modules": cfg.target_modules, "bias": "none",
        "fan_in_fan_out": false, "inference_mode": true, "base_model_name_or_path": null,
    });
    let cfg_path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| io(&cfg_path, e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(|e| io(&cfg_path, e.to_string()))?;
    Ok(tensors.len())
}

/// Reads a PEFT adapter directory: its config and its tensors renamed back to emollama names under `prefix`.
pub fn load_peft(dir: &Path, prefix: &str) -> std::result::Result<(LoraConfig, HashMap<String, Tensor>), AdapterError> {
    let io = |p: &Path, e: String| AdapterError::Io { path: p.display().to_string(), detail: e };
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io(&cfg_path, e.to_string()))?;
    let field = |k: &str| v.get(k).cloned().ok_or_else(|| io(&cfg_path, format!("missing `{k}`")));
    let cfg = LoraConfig {
        r: field("r")?.as_u64().ok_or_else(|| io(&cfg_path, "`r` is not an integer".into()))? as usize,
        lora_alpha: field("lora_alpha")?.as_f64().ok_or_else(|| io(&cfg_path, "`lora_alpha` is not a number".into()))?,
        lora_dropout: v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0),
        target_modules: serde_json::from_value(field("target_modules")?).map_err(|e| io(&cfg_path, format!("`target_modules`: {e}")))?,
    };
    let weights = dir.join("adapter_model.safetensors");
    let raw = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).map_err(|e| io(&weights, e.to_string()))?;
    let tensors = raw
        .into_iter()
        .map(|(k, t)| match k.strip_prefix("base_model.model.") {
            Some(rest) => Ok((format!("{prefix}{rest}"), t)),
            None => Err(io(&weights, format!("tensor `{k}` is not a PEFT LoRA key (base_model.model.*)"))),
        })
        .collect::<std::result::Result<HashMap<_, _>, _>>()?;
    Ok((cfg, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn a_quantized_layer_takes_its_dense_copy_for_prompts_and_stays_quantized_for_decoding() -> Result<()> {
        let dev = Device::Cpu;
        // Seeded N(0, 1) draws: the test's values are the same on every run.
        let normal = |name: &str, shape: &[usize]| {
            let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
            crate::model::init::seeded_tensor(3, name, &candle_core::Shape::from(shape.to_vec()), init, DType::F32, &dev)
        };
        let w = normal("w", &[64, 128])?;
        let q = Arc::new(QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q4_1)?);
        let bias = normal("b", &[64])?;
        let plain = BaseLinear::quantized(q.clone(), Some(bias.clone()))?;
        let fast = BaseLinear::quantized_with_dense_prompt(q.clone(), Some(bias.clone()))?;
        let dense = Linear::new(q.dequantize(&dev)?, Some(bias));
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
        // A prompt (PROMPT_ROWS rows or more): the dequantized weights in f32, as the dense layer computes.
        let prompt = normal("prompt", &[2, PROMPT_ROWS, 128])?;
        let got = fast.forward(&prompt)?;
        assert!(max_diff(&got, &dense.forward(&prompt)?)? < 1e-4);
        // The quantized product (q8 activations) differs from it a little, not more.
        let q_err = max_diff(&plain.forward(&prompt)?, &got)?;
        assert!(q_err > 0.0 && q_err < 0.5, "{q_err}");
        // A decoding step (one row, or a small batch) is the quantized product, bit for bit.
        for rows in [1, PROMPT_ROWS - 1] {
            let x = normal(&format!("x{rows}"), &[1, rows, 128])?;
            assert_eq!(max_diff(&fast.forward(&x)?, &plain.forward(&x)?)?, 0.0, "{rows} rows");
        }
        Ok(())
    }

    fn layer(cfg: &LoraConfig, vm: &VarMap) -> Result<LoraLinear> {
        let vb = crate::model::init::SeededVarMap::builder(vm, 5, DType::F32, &Device::Cpu);
        let base = BaseLinear::dense_from(candle_nn::linear(6, 4, vb.pp("q_proj"))?);
        LoraLinear::new(base, "q_proj", Some(cfg), vb.pp("q_proj"))
    }

    #[test]
    fn fresh_adapter_is_identity_and_merge_matches_forward() -> Result<()> {
        let cfg = LoraConfig { r: 2, lora_alpha: 4.0, lora_dropout: 0.0, target_modules: vec!["q_proj".into()] };
        let vm = VarMap::new();
        let l = layer(&cfg, &vm)?;
        let x = Tensor::randn(0f32, 1.0, (3, 6), &Device::Cpu)?;
        let d = (l.forward(&x)? - l.base.forward(&x)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "B = 0 makes a fresh adapter a no-op");
        // Train-like change of B, then the merged layer must give the same output.
        let data = vm.data().lock().expect("lock");
        data["q_proj.lora_B.weight"].set(&Tensor::randn(0f32, 1.0, (4, 2), &Device::Cpu)?)?;
        drop(data);
        let merged = l.merged()?.forward(&x)?;
        let d = (l.forward(&x)? - merged)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "merged differs by {d}");
        Ok(())
    }

    #[test]
    fn peft_round_trip_keeps_names_and_values() -> Result<()> {
        let cfg = LoraConfig::emotion_llama();
        let params = vec![
            ("llm.model.layers.0.self_attn.q_proj.lora_A.weight".to_string(), Tensor::ones((64, 8), DType::F32, &Device::Cpu)?),
            ("llm.model.layers.0.self_attn.q_proj.weight".to_string(), Tensor::ones((8, 8), DType::F32, &Device::Cpu)?),
        ];
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let n = save_peft(dir.path(), &cfg, &params, "llm.").map_err(candle_core::Error::wrap)?;
        assert_eq!(n, 1, "only LoRA tensors are saved");
        let (back, tensors) = load_peft(dir.path(), "llm.").map_err(candle_core::Error::wrap)?;
        assert_eq!(back, cfg);
        assert!(tensors.contains_key("llm.model.layers.0.self_attn.q_proj.lora_A.weight"));
        let raw = candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)?;
        assert!(raw.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
        assert!(load_peft(&dir.path().join("nope"), "llm.").is_err());
        Ok(())
    }
}
