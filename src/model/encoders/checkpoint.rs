//! Reading an encoder checkpoint into memory: an HF directory (`model.safetensors`, sharded safetensors or
//! `pytorch_model.bin`), a single `.safetensors` file, or a PyTorch zip pickle (`.pth` / `.pt` / `.bin`,
//! e.g. LAVIS `eva_vit_g.pth`, MAE `checkpoint-340.pth` with its `model` key). The tensor names are then
//! re-rooted at the architecture's own names, whatever wrapper saved them (`hubert.` of `HubertForCTC`,
//! `vit.` of `ViTMAEForPreTraining`, `videomae.`, MiniGPT-v2's `visual_encoder.`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::EncoderError;
use crate::model::hub::LocalWeights;

/// All tensors of a checkpoint, in f32 on `device`, with where they came from.
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub origin: PathBuf,
    /// `config.json` beside the weights (HF layout), if any.
    pub config_json: Option<PathBuf>,
}

fn load_err(path: &Path, detail: impl ToString) -> EncoderError {
    EncoderError::Load { path: path.display().to_string(), detail: detail.to_string() }
}

impl Checkpoint {
    pub fn read(local: &LocalWeights, device: &Device) -> Result<Self, EncoderError> {
        match local {
            LocalWeights::HfDir(dir) => {
                let config = dir.join("config.json");
                let config_json = config.is_file().then_some(config);
                let files = match crate::model::weights::hf_safetensors_files(dir).map_err(|e| load_err(dir, e))? {
                    Some(files) => files,
                    None if dir.join("pytorch_model.bin").is_file() => vec![dir.join("pytorch_model.bin")],
                    None => return Err(load_err(dir, "no `model.safetensors`, `model.safetensors.index.json` or `pytorch_model.bin` in this model directory")),
                };
                let mut tensors = HashMap::new();
                for f in &files {
                    tensors.extend(read_file(f, device)?);
                }
                Ok(Self { tensors, origin: dir.clone(), config_json })
            }
            LocalWeights::File(f) => Ok(Self { tensors: read_file(f, device)?, origin: f.clone(), config_json: None }),
            LocalWeights::Gguf(p) => Err(load_err(p, "GGUF holds LLMs; encoders load safetensors or PyTorch checkpoints")),
        }
    }

    /// Re-roots the names so that `probe` (a tensor every checkpoint of the architecture has, e.g.
    /// `patch_embed.proj.weight`) is at the top: a key `<prefix>probe` makes every `<prefix>` name
    /// lose its prefix; names outside the prefix are dropped (decoders, heads, other modules), except the
    /// ones listed in `keep` (e.g. MiniGPT-v2's `ln_vision.*` beside `visual_encoder.*`).
    pub fn rooted_at(mut self, probe: &str, keep: &[&str]) -> Result<Self, EncoderError> {
        let mut prefixes: Vec<String> = self.tensors.keys().filter_map(|k| k.strip_suffix(probe).map(String::from)).filter(|p| p.is_empty() || p.ends_with('.')).collect();
        prefixes.sort_by_key(String::len);
        let Some(prefix) = prefixes.into_iter().next() else {
            let mut names: Vec<&String> = self.tensors.keys().collect();
            names.sort();
            let sample: Vec<&str> = names.iter().take(8).map(|s| s.as_str()).collect();
            return Err(load_err(&self.origin, format!("no tensor `{probe}` (under any prefix): is this a checkpoint of this architecture? First names: {}", sample.join(", "))));
        };
        if prefix.is_empty() {
            return Ok(self);
        }
        tracing::debug!(origin = %self.origin.display(), prefix, "checkpoint names re-rooted");
        self.tensors = self
            .tensors
            .into_iter()
            .filter_map(|(k, v)| match k.strip_prefix(prefix.as_str()) {
                Some(rest) => Some((rest.to_string(), v)),
                None if keep.iter().any(|p| k.starts_with(p)) => Some((k, v)),
                None => None,
            })
            .collect();
        Ok(self)
    }
}

/// One file: safetensors by extension, anything else as a PyTorch zip pickle (a plain state dict, or
/// one under `model` / `state_dict` / `module` as training scripts save it).
fn read_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, EncoderError> {
    if !path.is_file() {
        return Err(load_err(path, "weights file is missing"));
    }
    let raw: Vec<(String, Tensor)> = if path.extension().is_some_and(|e| e == "safetensors") {
        candle_core::safetensors::load(path, device).map_err(|e| load_err(path, format!("not a readable safetensors file: {e}")))?.into_iter().collect()
    } else {
        let mut found = Vec::new();
        for key in [None, Some("model"), Some("state_dict"), Some("module")] {
            match candle_core::pickle::read_all_with_key(path, key) {
                Ok(t) if !t.is_empty() => {
                    found = t;
                    break;
                }
                Ok(_) => {}
                Err(e) if key.is_none() => return Err(load_err(path, format!("not a readable PyTorch zip checkpoint (legacy non-zip `torch.save` files must be re-saved): {e}"))),
                Err(_) => {}
            }
        }
        if found.is_empty() {
            return Err(load_err(path, "no tensors found (neither a state dict nor one under `model`, `state_dict` or `module`)"));
        }
        found
    };
    raw.into_iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32).map_err(|e| load_err(path, format!("tensor `{k}`: {e}")))? };
            Ok((k, t.to_device(device).map_err(|e| load_err(path, e))?))
        })
        .collect()
}
