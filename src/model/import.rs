//! The published checkpoints' parameters under this model's names (`emollama import`): Emotion-LLaMA's
//! released `.pth` and MiniGPT-v2's (the one Emotion-LLaMA's stage 1 starts from), read with the safe
//! reader [`super::pth`].
//!
//! | reference (`checkpoint["model"]`)                                              | here                                              |
//! |--------------------------------------------------------------------------------|---------------------------------------------------|
//! | `llama_proj.{weight,bias}`                                                     | `projector.llama_proj.{weight,bias}`              |
//! | `feats_llama_proj{1,2,3}.{weight,bias}` (Emotion-LLaMA only)                   | `projector.feats_llama_proj{1,2,3}.{weight,bias}` |
//! | `cls_tk_llama_proj.{weight,bias}` (Emotion-LLaMA only)                         | `projector.cls_tk_llama_proj.{weight,bias}`       |
//! | `llama_model.base_model.model.model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight` | `llm.model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight` |
//! | `attention.*` (the unused Conv-Attention module, reference §1.5)              | skipped                                           |
//!
//! PEFT's `lora_A` is (r × in) and `lora_B` (out × r), as [`super::lora`] keeps them, with the scaling
//! α / r applied at run time: the tensors are copied as they are, and the recipe's r must be the
//! tensors' rank (α cannot be read from the tensors; the checkpoint's `config.model.lora_{r,alpha}`
//! are checked against the recipe's when present). Every tensor is stored as f32, the dtype of the
//! run's trainable parameters.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};

use super::lora::LoraConfig;
use super::pth::{Checkpoint, PthError, TensorRef};
use super::shapes::ParamShape;

/// Which release a `.pth` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// Emotion-LLaMA's checkpoint: the five projectors and the LoRA.
    EmotionLlama,
    /// MiniGPT-v2's checkpoint: `llama_proj` and the LoRA.
    MinigptV2,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::EmotionLlama => "emotion-llama",
            Self::MinigptV2 => "minigpt-v2",
        }
    }

    /// Whether this format holds parameter `ours` (a name of this model) of the model.
    fn holds(self, ours: &str) -> bool {
        let lora = ours.starts_with("llm.") && ours.contains(".lora_");
        match self {
            Self::EmotionLlama => lora || ours.starts_with("projector."),
            Self::MinigptV2 => lora || ours.starts_with("projector.llama_proj."),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Pth(#[from] PthError),
    #[error("`{path}`: {} tensor(s) that the `{format}` format does not have: {}; is it another format (`emollama import --help`)?", names.len(), list(names))]
    Unknown { path: String, format: &'static str, names: Vec<String> },
    #[error("`{path}`: {} tensor(s) map to parameters the recipe's model does not have: {}{hint}", names.len(), list(names))]
    NotInModel { path: String, names: Vec<String>, hint: String },
    #[error("`{path}`: {} parameter(s) of the recipe's model that the `{format}` format holds are missing: {}", names.len(), list(names))]
    Missing { path: String, format: &'static str, names: Vec<String> },
    #[error("`{path}`: LoRA tensor `{source_name}` has rank {got} (shape {shape:?}), the recipe's LoRA r = {r}: set `model.lora.r = {got}` (with its `lora_alpha`) in the recipe, or `--set model.lora.r={got}`")]
    LoraRank { path: String, source_name: String, shape: Vec<usize>, got: usize, r: usize },
    #[error("`{path}`: tensor `{source_name}` has shape {got:?}, the recipe's model has `{ours}` {want:?} (a checkpoint of another model size? check the recipe's LLM and encoders)")]
    Shape { path: String, source_name: String, ours: String, got: Vec<usize>, want: Vec<usize> },
    #[error("`{path}`: its config says LoRA {key} = {got}, the recipe's LoRA {key} = {want}: use a recipe with the checkpoint's LoRA (`--set model.lora.{field}={got}`)")]
    LoraConfig { path: String, key: &'static str, field: &'static str, got: f64, want: f64 },
    #[error("`{path}`: tensor `{name}`: {detail}")]
    Convert { path: String, name: String, detail: String },
    #[error("`{path}`: {detail}")]
    File { path: String, detail: String },
    #[error("`{path}` does not describe the recipe's model:\n  {}\nimport into a recipe whose model matches it (its LLM, encoders and [data] frames), or `--set` the recipe's keys", wrong.join("\n  "))]
    Config { path: String, wrong: Vec<String> },
    #[error(transparent)]
    Hub(Box<super::hub::HubError>),
}

impl From<super::hub::HubError> for ImportError {
    fn from(e: super::hub::HubError) -> Self {
        Self::Hub(Box::new(e))
    }
}

fn list(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(12).map(|n| format!("`{n}`")).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// What one reference name becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    Ours(String),
    /// The unused `attention` module.
    Skip,
    Unknown,
}

/// This model's name for the reference parameter `name` in `format`.
pub fn map_name(format: SourceFormat, name: &str) -> Mapping {
    if name.starts_with("attention.") {
        return Mapping::Skip;
    }
    let proj = |stem: &str| name.strip_prefix(stem).is_some_and(|rest| rest == ".weight" || rest == ".bias");
    let mut projectors = vec!["llama_proj"];
    if format == SourceFormat::EmotionLlama {
        projectors.extend(["feats_llama_proj1", "feats_llama_proj2", "feats_llama_proj3", "cls_tk_llama_proj"]);
    }
    if projectors.iter().any(|p| proj(p)) {
        return Mapping::Ours(format!("projector.{name}"));
    }
    // PEFT 0.2.0 names, and later PEFTs' `.default` adapter level.
    if let Some(rest) = name.strip_prefix("llama_model.base_model.model.") {
        let rest = rest.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight", ".lora_B.weight");
        if rest.starts_with("model.layers.") && (rest.ends_with(".lora_A.weight") || rest.ends_with(".lora_B.weight")) {
            return Mapping::Ours(format!("llm.{rest}"));
        }
    }
    Mapping::Unknown
}

/// One tensor to import.
#[derive(Debug, Clone)]
pub struct Entry {
    pub source: String,
    pub ours: String,
    pub tensor: TensorRef,
}

/// What an import does, checked against the recipe's model before any tensor data is read.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub format: SourceFormat,
    pub entries: Vec<Entry>,
    /// Reference names skipped (the unused `attention` module).
    pub skipped: Vec<String>,
    /// Tensors in the state dict.
    pub in_file: usize,
    /// `config.model.lora_r` / `lora_alpha` of the checkpoint, when it has them.
    pub config_lora: Option<(Option<i64>, Option<f64>)>,
    /// `epoch` of the checkpoint dict, when it has one.
    pub epoch: Option<i64>,
}

impl ImportPlan {
    /// Bytes of tensor data to read.
    pub fn nbytes(&self) -> u64 {
        self.entries.iter().map(|e| e.tensor.nbytes()).sum()
    }
}

/// Maps the checkpoint's state dict onto `model` (every parameter name and shape of the recipe's model,
/// as [`crate::plan::model::shapes`] records them) and checks it: unknown names, names the model lacks,
/// shapes (the LoRA rank against `lora.r`), parameters the format holds that are missing, and the
/// checkpoint config's LoRA settings against `lora`.
pub fn plan(ckpt: &Checkpoint, format: SourceFormat, model: &[ParamShape], lora: Option<&LoraConfig>) -> Result<ImportPlan, ImportError> {
    let path = ckpt.path().display().to_string();
    let shapes: HashMap<&str, &[usize]> = model.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    let state = ckpt.state_dict()?;
    let in_file = state.len();
    let (mut entries, mut skipped, mut unknown, mut absent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (source, tensor) in state {
        match map_name(format, &source) {
            Mapping::Skip => skipped.push(source),
            Mapping::Unknown => unknown.push(source),
            Mapping::Ours(ours) if !shapes.contains_key(ours.as_str()) => absent.push(format!("{source} -> {ours}")),
            Mapping::Ours(ours) => entries.push(Entry { source, ours, tensor }),
        }
    }
    if !unknown.is_empty() {
        return Err(ImportError::Unknown { path, format: format.name(), names: unknown });
    }
    if !absent.is_empty() {
        let hint = match lora {
            None if absent.iter().any(|n| n.contains(".lora_")) => {
                "; the recipe's model has no LoRA: give it Emotion-LLaMA's (`[model.lora]` r = 64, lora_alpha = 16.0, target_modules = [\"q_proj\", \"v_proj\"])".to_string()
            }
            Some(l) => format!("; the recipe's LoRA targets {:?} and its encoders decide which projectors exist", l.target_modules),
            None => "; the recipe's encoders decide which projectors exist".to_string(),
        };
        return Err(ImportError::NotInModel { path, names: absent, hint });
    }
    for e in &entries {
        let want = shapes[e.ours.as_str()];
        let got = &e.tensor.shape;
        // The rank is lora_A's first and lora_B's second dimension.
        let rank = match (e.ours.ends_with(".lora_A.weight"), e.ours.ends_with(".lora_B.weight"), got.as_slice()) {
            (true, _, [r, _]) | (_, true, [_, r]) => Some(*r),
            _ => None,
        };
        if let (Some(got_r), Some(l)) = (rank, lora)
            && got_r != l.r
        {
            return Err(ImportError::LoraRank { path, source_name: e.source.clone(), shape: got.clone(), got: got_r, r: l.r });
        }
        if got.as_slice() != want {
            return Err(ImportError::Shape { path, source_name: e.source.clone(), ours: e.ours.clone(), got: got.clone(), want: want.to_vec() });
        }
    }
    let present: std::collections::HashSet<&str> = entries.iter().map(|e| e.ours.as_str()).collect();
    let missing: Vec<String> = model.iter().map(|(n, _)| n).filter(|n| format.holds(n) && !present.contains(n.as_str())).cloned().collect();
    if !missing.is_empty() {
        return Err(ImportError::Missing { path, format: format.name(), names: missing });
    }
    let cfg = ckpt.root.get("config").and_then(|c| c.get("model"));
    let config_lora = cfg.map(|m| (m.get("lora_r").and_then(|v| v.as_int()), m.get("lora_alpha").and_then(|v| v.as_f64())));
    if let (Some((r, alpha)), Some(l)) = (config_lora, lora) {
        if let Some(r) = r.filter(|&r| r != l.r as i64) {
            return Err(ImportError::LoraConfig { path, key: "r", field: "r", got: r as f64, want: l.r as f64 });
        }
        if let Some(a) = alpha.filter(|a| (a - l.lora_alpha).abs() > 1e-9) {
            return Err(ImportError::LoraConfig { path, key: "alpha", field: "lora_alpha", got: a, want: l.lora_alpha });
        }
    }
    let epoch = ckpt.root.get("epoch").and_then(|e| e.as_int());
    Ok(ImportPlan { format, entries, skipped, in_file, config_lora, epoch })
}

/// Reads the planned tensors as f32 under this model's names; `progress` advances by bytes read.
pub fn read(ckpt: &mut Checkpoint, plan: &ImportPlan, progress: &indicatif::ProgressBar) -> Result<BTreeMap<String, Tensor>, ImportError> {
    let path = ckpt.path().display().to_string();
    let mut out = BTreeMap::new();
    for e in &plan.entries {
        let t = ckpt.load(&e.source, &e.tensor)?;
        let t = t.to_dtype(DType::F32).map_err(|err| ImportError::Convert { path: path.clone(), name: e.source.clone(), detail: err.to_string() })?;
        out.insert(e.ours.clone(), t);
        progress.inc(e.tensor.nbytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names_map_to_ours() {
        use Mapping::*;
        let el = SourceFormat::EmotionLlama;
        let mv = SourceFormat::MinigptV2;
        assert_eq!(map_name(el, "llama_proj.weight"), Ours("projector.llama_proj.weight".into()));
        assert_eq!(map_name(el, "feats_llama_proj3.bias"), Ours("projector.feats_llama_proj3.bias".into()));
        assert_eq!(map_name(el, "cls_tk_llama_proj.weight"), Ours("projector.cls_tk_llama_proj.weight".into()));
        assert_eq!(map_name(mv, "cls_tk_llama_proj.weight"), Unknown, "MiniGPT-v2 has no CLS projector");
        assert_eq!(
            map_name(mv, "llama_model.base_model.model.model.layers.31.self_attn.v_proj.lora_B.weight"),
            Ours("llm.model.layers.31.self_attn.v_proj.lora_B.weight".into())
        );
        assert_eq!(
            map_name(el, "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            Ours("llm.model.layers.0.self_attn.q_proj.lora_A.weight".into())
        );
        assert_eq!(map_name(el, "attention.fc.weight"), Skip);
        assert_eq!(map_name(el, "llama_model.base_model.model.model.embed_tokens.weight"), Unknown);
        assert_eq!(map_name(el, "llama_proj.weight.extra"), Unknown);
    }
}
