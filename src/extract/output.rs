//! Where extracted features go, sample by sample, so an interrupted extraction resumes.
//!
//! - `safetensors`: one file; key `<id>` for a pooled feature, `<id>.patch_tokens` / `<id>.cls` for
//!   EVA's merged tokens, `<id>.hidden_states.N` with `--pooling none`. Finished samples are kept as part
//!   files in `<out>.parts/` until the end, when everything (with the samples of an existing `<out>`) is
//!   written atomically and the parts are removed. The header metadata lists the ids, the encoder and the
//!   feature settings.
//! - `npy`: a folder with one `<id>.npy` per sample (MERTools' layout), written atomically; names with
//!   a suffix (`<id>.cls.npy`) for multi-tensor outputs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{ExtractError, Named};
use crate::model::encoders::FrozenEncoder;
use crate::model::encoders::features::FeatureSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Npy,
}

impl Format {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "safetensors" => Some(Self::Safetensors),
            "npy" => Some(Self::Npy),
            _ => None,
        }
    }
}

fn out_err(path: &Path, detail: impl ToString) -> ExtractError {
    ExtractError::Output { path: path.display().to_string(), detail: detail.to_string() }
}

/// A file name for an id (ids of recipe samples may hold `/`).
fn file_safe(id: &str) -> String {
    id.chars().map(|c| if c == '/' || c == '\\' || c == '\0' { '_' } else { c }).collect()
}

fn key(id: &str, suffix: &str) -> String {
    if suffix.is_empty() { id.to_string() } else { format!("{id}.{suffix}") }
}

/// The header metadata of an output file.
pub fn metadata(enc: &FrozenEncoder, spec: &FeatureSpec) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("encoder".to_string(), enc.name.clone()),
        ("architecture".to_string(), enc.architecture.clone()),
        ("features".to_string(), serde_json::to_string(spec).unwrap_or_default()),
    ])
}

/// Writes named tensors (f32, contiguous) to `path` through a temp file and a rename.
pub fn write_safetensors_atomic(path: &Path, named: Named, meta: &HashMap<String, String>) -> Result<(), ExtractError> {
    let map: HashMap<String, Tensor> = named
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| out_err(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e))?;
    }
    crate::storage::write_atomic_with(path, |tmp| safetensors::serialize_to_file(map.iter(), Some(meta.clone()), tmp).map_err(std::io::Error::other))
        .map_err(|e| out_err(path, e.source))
}

/// The ids recorded in an output file's metadata, and its `features` and `encoder` entries.
type Header = (BTreeSet<String>, Option<String>, Option<String>);

fn ids_of(path: &Path) -> Result<Header, ExtractError> {
    let bytes = std::fs::read(path).map_err(|e| out_err(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| out_err(path, format!("not a safetensors file: {e}")))?;
    let m = meta.metadata().as_ref();
    let ids = m.and_then(|m| m.get("ids")).ok_or_else(|| out_err(path, "exists but was not written by `emollama extract` (no `ids` metadata); choose another --out"))?;
    let ids = serde_json::from_str(ids).map_err(|e| out_err(path, format!("bad `ids` metadata: {e}")))?;
    Ok((ids, m.and_then(|m| m.get("features").cloned()), m.and_then(|m| m.get("encoder").cloned())))
}

/// Accepts finished samples and knows which are done.
pub enum Sink {
    Safetensors { out: PathBuf, parts: PathBuf, done: BTreeSet<String>, in_file: BTreeSet<String> },
    Npy { dir: PathBuf },
}

impl Sink {
    /// `meta`: this extraction's [`metadata`]; an existing output made with another encoder or other
    /// feature settings is not mixed in.
    pub fn open(format: Format, out: &Path, meta: &HashMap<String, String>) -> Result<Self, ExtractError> {
        match format {
            Format::Safetensors => {
                let in_file = if out.is_file() {
                    let (ids, features, encoder) = ids_of(out)?;
                    if features.as_ref() != meta.get("features") || encoder.as_ref() != meta.get("encoder") {
                        return Err(out_err(out, format!("exists with other settings (encoder {encoder:?}, features {features:?}); choose another --out or delete it")));
                    }
                    ids
                } else {
                    BTreeSet::new()
                };
                let parts = PathBuf::from(format!("{}.parts", out.display()));
                std::fs::create_dir_all(&parts).map_err(|e| out_err(&parts, e))?;
                let mut done = in_file.clone();
                for e in std::fs::read_dir(&parts).map_err(|e| out_err(&parts, e))?.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "safetensors")
                        && let Ok((ids, _, _)) = ids_of(&p)
                    {
                        done.extend(ids);
                    }
                }
                Ok(Self::Safetensors { out: out.to_path_buf(), parts, done, in_file })
            }
            Format::Npy => {
                if out.is_file() {
                    return Err(out_err(out, "is a file; --format npy writes a folder of .npy files"));
                }
                std::fs::create_dir_all(out).map_err(|e| out_err(out, e))?;
                Ok(Self::Npy { dir: out.to_path_buf() })
            }
        }
    }

    pub fn is_done(&self, id: &str) -> bool {
        match self {
            Self::Safetensors { done, .. } => done.contains(id),
            Self::Npy { dir } => ["", ".patch_tokens", ".hidden_states.0"].iter().any(|s| dir.join(format!("{}{s}.npy", file_safe(id))).is_file()),
        }
    }

    pub fn write(&mut self, id: &str, named: Named) -> Result<(), ExtractError> {
        match self {
            Self::Safetensors { parts, done, .. } => {
                let path = parts.join(format!("{}.safetensors", file_safe(id)));
                let meta = HashMap::from([("ids".to_string(), serde_json::to_string(&[id]).unwrap_or_default())]);
                let keyed = named.into_iter().map(|(s, t)| (key(id, &s), t)).collect();
                write_safetensors_atomic(&path, keyed, &meta)?;
                done.insert(id.to_string());
                Ok(())
            }
            Self::Npy { dir } => {
                // The first tensor's file marks the sample as done, so it is written last.
                let mut named = named;
                named.rotate_left(1);
                for (suffix, t) in named {
                    let t = t.to_dtype(DType::F32).and_then(|t| t.flatten_all().map(|f| (t.dims().to_vec(), f))).and_then(|(dims, f)| Ok((dims, f.to_vec1::<f32>()?)));
                    let (dims, data) = t.map_err(|e| out_err(dir, e))?;
                    let path = dir.join(format!("{}.npy", key(&file_safe(id), &suffix)));
                    crate::storage::write_atomic(&path, &super::npy::npy_bytes(&data, &dims)).map_err(|e| out_err(&path, e))?;
                }
                Ok(())
            }
        }
    }

    /// Assembles the output; returns the number of tensors in it.
    pub fn finish(self, meta: &HashMap<String, String>) -> Result<usize, ExtractError> {
        match self {
            Self::Safetensors { out, parts, done, in_file } => {
                let mut all: Vec<(String, Tensor)> = Vec::new();
                if !in_file.is_empty() {
                    all.extend(candle_core::safetensors::load(&out, &Device::Cpu).map_err(|e| out_err(&out, e))?);
                }
                let mut part_files: Vec<PathBuf> = std::fs::read_dir(&parts).map_err(|e| out_err(&parts, e))?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "safetensors")).collect();
                part_files.sort();
                for p in &part_files {
                    all.extend(candle_core::safetensors::load(p, &Device::Cpu).map_err(|e| out_err(p, e))?);
                }
                let n = all.len();
                let mut meta = meta.clone();
                meta.insert("ids".into(), serde_json::to_string(&done).unwrap_or_default());
                write_safetensors_atomic(&out, all, &meta)?;
                std::fs::remove_dir_all(&parts).map_err(|e| out_err(&parts, e))?;
                Ok(n)
            }
            Self::Npy { dir } => Ok(std::fs::read_dir(&dir).map_err(|e| out_err(&dir, e))?.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "npy")).count()),
        }
    }
}
