//! Pretrained LLM weights: the HF layout (`config.json` + `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; f32 / f16 / bf16, converted on load) and GGUF files (see [`super::gguf`]),
//! served to the model through a `VarBuilder` backend.
//!
//! The backend is strict about the base model: a parameter under the LLM's prefix that is missing from
//! the files, or has another shape, is an error naming the file and the tensor; it is never silently
//! initialised. Only LoRA adapters (`*.lora_*`) and the non-LLM parts (projectors, encoders) are created
//! fresh, in the run's seeded `VarMap`, so the base weights stay frozen (they are not variables).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use super::init::SeededVarMap;
use super::llm_config::LlamaConfig;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("`{path}`: {detail}")]
    File { path: String, detail: String },
    #[error(transparent)]
    Config(#[from] super::llm_config::ConfigError),
}

fn file_err(path: &Path, detail: impl ToString) -> WeightsError {
    WeightsError::File { path: path.display().to_string(), detail: detail.to_string() }
}

/// Tensors by HF name, each remembering the file it came from (for error messages).
pub enum TensorStore {
    /// Memory-mapped safetensors shards and, per tensor name, the shard holding it.
    Safetensors { shards: Vec<(PathBuf, MmapedSafetensors)>, index: HashMap<String, usize> },
    /// Tensors already in memory (dequantized GGUF), all from `origin`.
    Memory { origin: PathBuf, tensors: HashMap<String, Tensor> },
    /// Seeded random values made on request in the requested shape (`[weights] source = "seeded"`).
    Seeded { seed: u64 },
}

impl TensorStore {
    /// Opens the safetensors of an HF model directory.
    pub fn open_hf_dir(dir: &Path) -> Result<Self, WeightsError> {
        match hf_safetensors_files(dir)? {
            Some(files) => Self::open_files(&files),
            None => Err(file_err(dir, "no `model.safetensors` and no `model.safetensors.index.json` (expected an HF model directory)")),
        }
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            if !f.is_file() {
                return Err(file_err(f, "weight file is missing (listed by the model's index)"));
            }
            // SAFETY: the file is mapped read-only; like every safetensors loader we rely on it not being
            // modified while the model is alive.
            let st = unsafe { MmapedSafetensors::new(f) }.map_err(|e| file_err(f, format!("not a readable safetensors file: {e}")))?;
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            shards.push((f.clone(), st));
        }
        Ok(Self::Safetensors { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Safetensors { index, .. } => index.contains_key(name),
            Self::Memory { tensors, .. } => tensors.contains_key(name),
            Self::Seeded { .. } => true,
        }
    }

    /// Where `name` comes from (or would), for messages.
    pub fn origin(&self, name: &str) -> String {
        match self {
            Self::Safetensors { shards, index } => match index.get(name) {
                Some(&i) => shards[i].0.display().to_string(),
                None if shards.len() == 1 => shards[0].0.display().to_string(),
                None => shards.first().and_then(|s| s.0.parent()).map(|d| d.display().to_string()).unwrap_or_default(),
            },
            Self::Memory { origin, .. } => origin.display().to_string(),
            Self::Seeded { seed } => format!("seeded random weights (seed {seed})"),
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Safetensors { index, .. } => index.keys().cloned().collect(),
            Self::Memory { tensors, .. } => tensors.keys().cloned().collect(),
            Self::Seeded { .. } => Vec::new(),
        }
    }

    /// The tensor in its stored dtype, or None when absent (seeded weights have no stored shape: see
    /// [`PretrainedBackend`]).
    pub fn load(&self, name: &str, dev: &Device) -> Option<candle_core::Result<Tensor>> {
        match self {
            Self::Safetensors { shards, index } => index.get(name).map(|&i| shards[i].1.load(name, dev)),
            Self::Memory { tensors, .. } => tensors.get(name).map(|t| t.to_device(dev)),
            Self::Seeded { .. } => None,
        }
    }
}

/// The safetensors files of an HF model directory: the shards named by `model.safetensors.index.json`, else
/// `model.safetensors`; `None` when the directory has neither.
pub fn hf_safetensors_files(dir: &Path) -> Result<Option<Vec<PathBuf>>, WeightsError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| file_err(&index_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(&index_path, format!("not JSON: {e}")))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| file_err(&index_path, "no `weight_map` object"))?;
        let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        names.sort();
        names.dedup();
        Ok(Some(names.iter().map(|n| dir.join(n)).collect()))
    } else if dir.join("model.safetensors").is_file() {
        Ok(Some(vec![dir.join("model.safetensors")]))
    } else {
        Ok(None)
    }
}

/// `VarBuilder` backend: names under `prefix` (the LLM) come from `store` in the builder's dtype, except
/// LoRA adapters; all other names are created in the seeded `VarMap`, in f32.
pub struct PretrainedBackend {
    store: Arc<TensorStore>,
    prefix: String,
    fresh: SeededVarMap,
}

impl PretrainedBackend {
    pub fn builder(store: Arc<TensorStore>, prefix: &str, varmap: &VarMap, seed: u64, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        let backend = Self { store, prefix: prefix.to_string(), fresh: SeededVarMap::new(varmap, seed) };
        VarBuilder::from_backend(Box::new(backend), dtype, dev.clone())
    }

    fn pretrained_name<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str()).filter(|rest| !rest.contains(".lora_"))
    }
}

impl SimpleBackend for PretrainedBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        // New parameters are f32 master copies whatever the run's dtype.
        let Some(key) = self.pretrained_name(name) else { return self.fresh.get(s, name, h, DType::F32, dev) };
        if let TensorStore::Seeded { seed } = &*self.store {
            return super::init::seeded_tensor(*seed, key, &s, h, dtype, dev);
        }
        let t = match self.store.load(key, dev) {
            Some(t) => t.map_err(|e| candle_core::Error::Msg(format!("`{}`: tensor `{key}`: {e}", self.store.origin(key))))?,
            None => candle_core::bail!("`{}`: tensor `{key}` is missing (the model config needs it)", self.store.origin(key)),
        };
        if t.shape() != &s {
            candle_core::bail!("`{}`: tensor `{key}` has shape {:?}, the model config expects {:?}", self.store.origin(key), t.dims(), s.dims());
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.pretrained_name(name) {
            Some(key) => match self.store.load(key, dev) {
                Some(t) => t?.to_dtype(dtype),
                None => candle_core::bail!("`{}`: tensor `{key}` is missing", self.store.origin(key)),
            },
            None => self.fresh.get_unchecked(name, DType::F32, dev),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.pretrained_name(name) {
            Some(key) => self.store.contains(key),
            None => self.fresh.contains_tensor(name),
        }
    }
}

/// An HF model directory: its config and weights.
pub fn open_hf_model(dir: &Path) -> Result<(LlamaConfig, TensorStore), WeightsError> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(file_err(&cfg_path, "missing (an HF model directory needs config.json)"));
    }
    let cfg = LlamaConfig::from_hf_file(&cfg_path)?;
    Ok((cfg, TensorStore::open_hf_dir(dir)?))
}

/// Sets LoRA tensors (e.g. from [`super::lora::load_peft`]) into the model's variables; every tensor
/// must name an existing adapter variable of the same shape.
pub fn apply_adapter(varmap: &VarMap, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<usize, WeightsError> {
    let data = varmap.data().lock().map_err(|_| file_err(origin, "parameter store lock poisoned"))?;
    for (name, t) in tensors {
        let var = data.get(name).ok_or_else(|| file_err(origin, format!("adapter tensor `{name}` has no matching LoRA module in the model (check target_modules)")))?;
        if var.shape() != t.shape() {
            return Err(file_err(origin, format!("adapter tensor `{name}` has shape {:?}, the model expects {:?} (check r)", t.dims(), var.dims())));
        }
        var.set(&t.to_dtype(var.dtype()).map_err(|e| file_err(origin, e))?).map_err(|e| file_err(origin, e))?;
    }
    Ok(tensors.len())
}
