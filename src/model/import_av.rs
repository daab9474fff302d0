//! The published VideoLLaMA2-AV layout (`DAMO-NLP-SG/VideoLLaMA2.1-7B-AV`, `emollama import
//! videollama2-av`): the trained connector, audio projector and audio tower under this model's names.
//!
//! The repository holds `config.json` (`model_type = "videollama2_qwen2"`), safetensors shards (listed by
//! `model.safetensors.index.json`) with the whole `Videollama2Qwen2ForCausalLM`, and the trainer's extra
//! copies `audio_tower.bin` / `mm_projector_a.bin` (zip pickles, read by the safe reader [`super::pth`]).
//! The reference's `from_pretrained` takes every module from the shards; a part the shards lack is taken
//! from its `.bin` (which is then all that is downloaded of it).
//!
//! | reference name                        | here                   | from                                   |
//! |---------------------------------------|------------------------|----------------------------------------|
//! | `model.mm_projector.*`                | `projector.video.*`    | shards                                 |
//! | `model.mm_projector_a.*`              | `projector.audio.*`    | shards, else `mm_projector_a.bin`      |
//! | `model.audio_tower.*`                 | `encoder.audio.*`      | shards, else `audio_tower.bin`         |
//! | `model.audio_tower.predictor.*`       | skipped                | BEATs' AudioSet head, unused           |
//! | `model.vision_tower.*`                | skipped                | SigLIP is frozen: the recipe's encoder |
//! | `model.{embed_tokens,layers,norm}.*`, `lm_head.*` | not imported | the LLM: the recipe's `model.llm` reads the same repository |
//!
//! The multimodal `config.json` keys are checked against the recipe's model before anything is read
//! ([`AvExpect`]). Every tensor is stored as f32, the dtype of the run's trainable parameters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::import::ImportError;
use super::pth::{Checkpoint, TensorRef};
use super::shapes::ParamShape;

pub const FORMAT: &str = "videollama2-av";
pub const CONFIG_FILE: &str = "config.json";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const AUDIO_TOWER_FILE: &str = "audio_tower.bin";
pub const AUDIO_PROJECTOR_FILE: &str = "mm_projector_a.bin";

/// A file of the snapshot by name: `(file, required)` gives its local path (downloading it if need be), or
/// `None` when it is absent and not required.
pub type SnapshotFile<'a> = &'a dyn Fn(&str, bool) -> Result<Option<PathBuf>, ImportError>;

/// The parts imported: this model's prefix, the reference module, and its fallback file.
pub const PARTS: [(&str, &str, Option<&str>); 3] =
    [("projector.video.", "mm_projector", None), ("projector.audio.", "mm_projector_a", Some(AUDIO_PROJECTOR_FILE)), ("encoder.audio.", "audio_tower", Some(AUDIO_TOWER_FILE))];

/// What one reference name becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AvMapping {
    Ours(String),
    /// Not imported, with the reason.
    Skip(&'static str),
    /// The language model's tensors, read by the LLM loader from the same repository.
    Llm,
    Unknown,
}

/// This model's name for reference tensor `name` (with or without the `model.` prefix).
pub fn map_name(name: &str) -> AvMapping {
    if name.starts_with("lm_head.") {
        return AvMapping::Llm;
    }
    let rest = name.strip_prefix("model.").unwrap_or(name);
    if ["embed_tokens.", "layers.", "norm."].iter().any(|p| rest.starts_with(p)) && name.starts_with("model.") {
        return AvMapping::Llm;
    }
    if rest.starts_with("vision_tower.") {
        return AvMapping::Skip("the SigLIP tower is frozen in every VideoLLaMA2 stage: the recipe's video encoder");
    }
    if rest.starts_with("audio_tower.predictor.") {
        return AvMapping::Skip("BEATs' AudioSet classification head, unused by VideoLLaMA2");
    }
    // BEATs shares layer 0's relative position bias with every layer; the state dict repeats it.
    if let Some(layer) = rest.strip_prefix("audio_tower.encoder.layers.").and_then(|t| t.strip_suffix(".self_attn.relative_attention_bias.weight"))
        && layer != "0"
    {
        return AvMapping::Skip("BEATs' relative position bias of layer 0, repeated under every layer that shares it");
    }
    for (ours, theirs, _) in PARTS {
        if let Some(tail) = rest.strip_prefix(theirs).and_then(|t| t.strip_prefix('.'))
            && !tail.is_empty()
        {
            return AvMapping::Ours(format!("{ours}{tail}"));
        }
    }
    AvMapping::Unknown
}

/// What the recipe's model says the multimodal `config.json` keys must be.
#[derive(Debug, Clone, PartialEq)]
pub struct AvExpect {
    /// The LLM width (`hidden_size`, `hidden_size_a`).
    pub hidden_size: usize,
    /// The video encoder's width (`mm_hidden_size`).
    pub mm_hidden_size: usize,
    /// The audio encoder's width (`mm_hidden_size_a`).
    pub mm_hidden_size_a: usize,
    /// Frames per clip (`num_frames`), when the recipe samples a fixed number.
    pub num_frames: Option<usize>,
    /// The video encoder's feature layer (`mm_vision_select_layer`).
    pub select_layer: Option<i64>,
}

/// One tensor to import.
#[derive(Debug, Clone)]
pub struct AvEntry {
    pub source: String,
    pub ours: String,
    pub shape: Vec<usize>,
    pub source_dtype: String,
    /// Index into [`AvPlan::files`].
    pub file: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvFileKind {
    Safetensors,
    Pickle,
}

/// What an import does, checked against the recipe's model before any tensor data is read.
#[derive(Debug, Clone)]
pub struct AvPlan {
    pub files: Vec<(PathBuf, AvFileKind)>,
    pub entries: Vec<AvEntry>,
    /// Reference names not imported, with the reason.
    pub skipped: Vec<(String, &'static str)>,
    /// Tensors of the LLM in the shards (read by the LLM loader, not imported).
    pub llm_tensors: usize,
    /// Per part (this model's prefix): the file it came from.
    pub part_sources: Vec<(String, String)>,
}

impl AvPlan {
    pub fn nbytes(&self) -> u64 {
        self.entries.iter().map(|e| e.shape.iter().product::<usize>() as u64 * 4).sum()
    }
}

fn file_err(path: &Path, detail: impl ToString) -> ImportError {
    ImportError::File { path: path.display().to_string(), detail: detail.to_string() }
}

fn read_json(path: &Path) -> Result<serde_json::Map<String, Value>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(path, format!("not a JSON object: {e}")))
}

/// Checks the snapshot's `config.json` against what the recipe's model is: every mismatch is named.
pub fn check_config(path: &Path, expect: &AvExpect) -> Result<serde_json::Map<String, Value>, ImportError> {
    let cfg = read_json(path)?;
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type != "videollama2_qwen2" {
        return Err(file_err(path, format!("model_type `{model_type}`: expected `videollama2_qwen2` (a VideoLLaMA2 model on Qwen2, e.g. DAMO-NLP-SG/VideoLLaMA2.1-7B-AV)")));
    }
    let mut wrong = Vec::new();
    let mut number = |key: &str, want: Option<i64>, recipe: &str| match (cfg.get(key).and_then(Value::as_i64), want) {
        (Some(got), Some(want)) if got != want => wrong.push(format!("`{key}` = {got}, the recipe's {recipe} is {want}")),
        (None, Some(_)) if key != "num_frames" && key != "mm_vision_select_layer" => wrong.push(format!("`{key}` is missing (the recipe's {recipe})")),
        _ => {}
    };
    number("hidden_size", Some(expect.hidden_size as i64), "LLM width");
    number("hidden_size_a", Some(expect.hidden_size as i64), "LLM width (the audio projector's output)");
    number("mm_hidden_size", Some(expect.mm_hidden_size as i64), "video encoder width");
    number("mm_hidden_size_a", Some(expect.mm_hidden_size_a as i64), "audio encoder width");
    number("num_frames", expect.num_frames.map(|n| n as i64), "frames per clip ([data] frames)");
    number("mm_vision_select_layer", expect.select_layer, "video encoder feature layer ([features] layers)");
    for (key, want) in [("mm_projector_type", "stc_connector_v35"), ("mm_projector_a_type", "mlp2x_gelu"), ("mm_vision_select_feature", "patch")] {
        match cfg.get(key).and_then(Value::as_str) {
            Some(got) if got != want => wrong.push(format!("`{key}` = `{got}`, this family's is `{want}`")),
            None if key != "mm_vision_select_feature" => wrong.push(format!("`{key}` is missing (this family's is `{want}`)")),
            _ => {}
        }
    }
    if !wrong.is_empty() {
        return Err(ImportError::Config { path: path.display().to_string(), wrong });
    }
    Ok(cfg)
}

/// The snapshot's tensor names and the shard holding each: the index's `weight_map`, else the single
/// `model.safetensors`'s names. `get` gives a file of the snapshot (downloading it if need be).
fn weight_map(get: SnapshotFile) -> Result<Vec<(String, String)>, ImportError> {
    if let Some(index) = get(INDEX_FILE, false)? {
        let v = read_json(&index)?;
        let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| file_err(&index, "no `weight_map` object"))?;
        let mut out = Vec::with_capacity(map.len());
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| file_err(&index, format!("`weight_map` entry `{name}` is not a file name")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(file_err(&index, format!("`weight_map` entry `{name}` names `{file}`, outside the snapshot")));
            }
            out.push((name.clone(), file.to_string()));
        }
        return Ok(out);
    }
    let single = get(SINGLE_FILE, true)?.ok_or_else(|| file_err(Path::new(SINGLE_FILE), "missing"))?;
    // SAFETY: mapped read-only; like every safetensors loader we rely on it not changing meanwhile.
    let st = unsafe { MmapedSafetensors::new(&single) }.map_err(|e| file_err(&single, format!("not a readable safetensors file: {e}")))?;
    Ok(st.tensors().into_iter().map(|(n, _)| (n, SINGLE_FILE.to_string())).collect())
}

/// Maps the snapshot onto `model` (every parameter name and shape of the recipe's model) and checks it.
/// `get(file, required)` gives a file of the snapshot; only the shards holding imported tensors, and a
/// `.bin` only for a part the shards lack, are asked for.
pub fn plan(get: SnapshotFile, model: &[ParamShape]) -> Result<AvPlan, ImportError> {
    let shapes: HashMap<&str, &[usize]> = model.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    let mut plan = AvPlan { files: Vec::new(), entries: Vec::new(), skipped: Vec::new(), llm_tensors: 0, part_sources: Vec::new() };
    let mut by_shard: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, shard) in weight_map(get)? {
        match map_name(&name) {
            AvMapping::Ours(ours) => by_shard.entry(shard).or_default().push((name, ours)),
            AvMapping::Skip(why) => plan.skipped.push((name, why)),
            AvMapping::Llm => plan.llm_tensors += 1,
            AvMapping::Unknown => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(ImportError::Unknown { path: "the snapshot's safetensors".into(), format: FORMAT, names: unknown });
    }
    for (shard, names) in by_shard {
        let path = get(&shard, true)?.ok_or_else(|| file_err(Path::new(&shard), "missing"))?;
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| file_err(&path, format!("not a readable safetensors file: {e}")))?;
        let file = plan.files.len();
        for (source, ours) in names {
            let view = st.get(&source).map_err(|e| file_err(&path, format!("tensor `{source}` (listed by the index): {e}")))?;
            plan.entries.push(AvEntry { source, ours, shape: view.shape().to_vec(), source_dtype: format!("{:?}", view.dtype()), file });
        }
        plan.files.push((path, AvFileKind::Safetensors));
    }
    for (prefix, _, fallback) in PARTS {
        let from_shards = plan.entries.iter().find(|e| e.ours.starts_with(prefix)).map(|e| plan.files[e.file].0.display().to_string());
        let source = match (from_shards, fallback) {
            (Some(file), _) => Some(file),
            (None, Some(bin)) => match get(bin, false)? {
                Some(path) => {
                    pickle_entries(&path, prefix, &mut plan)?;
                    Some(path.display().to_string())
                }
                None => None,
            },
            (None, None) => None,
        };
        if let Some(s) = source {
            plan.part_sources.push((prefix.to_string(), s));
        }
    }
    check_against_model(&mut plan, &shapes, model)?;
    Ok(plan)
}

/// The tensors of a `.bin` pickle for the part under `prefix`; its other names must be known ones.
fn pickle_entries(path: &Path, prefix: &str, plan: &mut AvPlan) -> Result<(), ImportError> {
    let ckpt = Checkpoint::open(path)?;
    let file = plan.files.len();
    let mut unknown = Vec::new();
    for (source, t) in ckpt.state_dict()? {
        match map_name(&source) {
            AvMapping::Ours(ours) if ours.starts_with(prefix) => {
                plan.entries.push(AvEntry { source, ours, shape: t.shape.clone(), source_dtype: format!("{:?}", t.storage.elem), file });
            }
            AvMapping::Skip(why) => plan.skipped.push((format!("{source} ({})", path.display()), why)),
            _ => unknown.push(source),
        }
    }
    if !unknown.is_empty() {
        return Err(ImportError::Unknown { path: path.display().to_string(), format: FORMAT, names: unknown });
    }
    plan.files.push((path.to_path_buf(), AvFileKind::Pickle));
    Ok(())
}

fn check_against_model(plan: &mut AvPlan, shapes: &HashMap<&str, &[usize]>, model: &[ParamShape]) -> Result<(), ImportError> {
    let absent: Vec<String> = plan.entries.iter().filter(|e| !shapes.contains_key(e.ours.as_str())).map(|e| format!("{} -> {}", e.source, e.ours)).collect();
    if !absent.is_empty() {
        return Err(ImportError::NotInModel {
            path: FORMAT.into(),
            names: absent,
            hint: "; the recipe must be of the VideoLLaMA2-AV family (`model.family = \"videollama2_av\"`, `projector = \"mlp\"`, a BEATs audio encoder)".into(),
        });
    }
    for e in &plan.entries {
        let want = shapes[e.ours.as_str()];
        if e.shape.as_slice() != want {
            return Err(ImportError::Shape { path: plan.files[e.file].0.display().to_string(), source_name: e.source.clone(), ours: e.ours.clone(), got: e.shape.clone(), want: want.to_vec() });
        }
    }
    let present: HashSet<&str> = plan.entries.iter().map(|e| e.ours.as_str()).collect();
    let missing: Vec<String> = model.iter().map(|(n, _)| n).filter(|n| PARTS.iter().any(|(p, _, _)| n.starts_with(p)) && !present.contains(n.as_str())).cloned().collect();
    if !missing.is_empty() {
        let files: Vec<&str> = PARTS.iter().filter_map(|(_, _, f)| *f).collect();
        return Err(ImportError::Missing { path: format!("the snapshot (its safetensors, and {})", files.join(", ")), format: FORMAT, names: missing });
    }
    plan.entries.sort_by(|a, b| a.ours.cmp(&b.ours));
    Ok(())
}

/// Reads the planned tensors as f32 under this model's names; `progress` advances by f32 bytes.
pub fn read(plan: &AvPlan, progress: &indicatif::ProgressBar) -> Result<BTreeMap<String, Tensor>, ImportError> {
    let mut out = BTreeMap::new();
    for (i, (path, kind)) in plan.files.iter().enumerate() {
        let entries = plan.entries.iter().filter(|e| e.file == i);
        let convert = |name: &str, t: Tensor| t.to_dtype(DType::F32).map_err(|err| ImportError::Convert { path: path.display().to_string(), name: name.to_string(), detail: err.to_string() });
        match kind {
            AvFileKind::Safetensors => {
                // SAFETY: as in `plan`.
                let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| file_err(path, e))?;
                for e in entries {
                    let t = st.load(&e.source, &Device::Cpu).map_err(|err| file_err(path, format!("tensor `{}`: {err}", e.source)))?;
                    out.insert(e.ours.clone(), convert(&e.source, t)?);
                    progress.inc(e.shape.iter().product::<usize>() as u64 * 4);
                }
            }
            AvFileKind::Pickle => {
                let mut ckpt = Checkpoint::open(path)?;
                let refs: HashMap<String, TensorRef> = ckpt.state_dict()?.into_iter().collect();
                for e in entries {
                    let t = ckpt.load(&e.source, &refs[&e.source])?;
                    out.insert(e.ours.clone(), convert(&e.source, t)?);
                    progress.inc(e.shape.iter().product::<usize>() as u64 * 4);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names_map_to_ours() {
        use AvMapping::*;
        assert_eq!(map_name("model.mm_projector.s1.b1.conv1.conv.weight"), Ours("projector.video.s1.b1.conv1.conv.weight".into()));
        assert_eq!(map_name("model.mm_projector.sampler.0.weight"), Ours("projector.video.sampler.0.weight".into()));
        assert_eq!(map_name("model.mm_projector_a.2.bias"), Ours("projector.audio.2.bias".into()));
        assert_eq!(map_name("mm_projector_a.0.weight"), Ours("projector.audio.0.weight".into()));
        assert_eq!(map_name("model.audio_tower.encoder.layers.0.fc1.weight"), Ours("encoder.audio.encoder.layers.0.fc1.weight".into()));
        assert!(matches!(map_name("model.audio_tower.predictor.weight"), Skip(_)));
        assert!(matches!(map_name("model.audio_tower.encoder.layers.5.self_attn.relative_attention_bias.weight"), Skip(_)));
        assert_eq!(
            map_name("model.audio_tower.encoder.layers.0.self_attn.relative_attention_bias.weight"),
            Ours("encoder.audio.encoder.layers.0.self_attn.relative_attention_bias.weight".into())
        );
        assert!(matches!(map_name("model.vision_tower.vision_tower.vision_model.post_layernorm.weight"), Skip(_)));
        assert_eq!(map_name("model.layers.3.self_attn.q_proj.bias"), Llm);
        assert_eq!(map_name("model.embed_tokens.weight"), Llm);
        assert_eq!(map_name("lm_head.weight"), Llm);
        assert_eq!(map_name("model.mm_projector_b.0.weight"), Unknown);
        assert_eq!(map_name("model.mm_projector"), Unknown);
        assert_eq!(map_name("layers.0.mlp.up_proj.weight"), Unknown, "the LLM's names carry `model.`");
    }
}
