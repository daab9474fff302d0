//! From an LLM name (a `plugins/llms/*.toml` manifest) or a path (an HF model directory or a `.gguf` file)
//! to what building the model needs: its config, tokenizer, chat template and weights.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use super::gguf::{GgufError, GgufFile};
use super::hub::{self, HubError, LocalWeights};
use super::init::SeededVarMap;
use super::llama::{Llama, QuantStore};
use super::llm_config::LlamaConfig;
use super::lora::LoraConfig;
use super::prompt::{ChatTemplate, Template};
use super::tokenizer::{TextTokenizer, TokenizerError};
use super::weights::{PretrainedBackend, TensorStore, WeightsError};
use crate::registry::{Registry, RegistryError, TokenizerSpec};

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Hub(#[from] Box<HubError>),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("LLM `{name}`: {detail}")]
    Invalid { name: String, detail: String },
    #[error("LLM `{name}`: {source}")]
    Build { name: String, source: candle_core::Error },
}

/// A resolved (not yet loaded) LLM.
pub struct LlmSpec {
    pub name: String,
    pub config: LlamaConfig,
    pub template: Template,
    pub system_prompt: Option<String>,
    pub stop_tokens: Vec<String>,
    /// The manifest's adapter for training this LLM when a recipe sets none.
    pub default_lora: Option<LoraConfig>,
    tokenizer: TokenizerSpec,
    base_dir: PathBuf,
    source: Source,
}

enum Source {
    Random,
    /// Frozen seeded random weights (`[weights] source = "seeded"`).
    Seeded(u64),
    HfDir(PathBuf),
    Gguf(Box<GgufFile>),
}

/// What a manifest declares besides the weights (a bare path declares nothing).
struct Declared {
    config: Option<LlamaConfig>,
    tokenizer: TokenizerSpec,
    template: Option<Template>,
    system_prompt: Option<String>,
    stop_tokens: Vec<String>,
    default_lora: Option<LoraConfig>,
    base_dir: PathBuf,
}

impl LlmSpec {
    /// `name_or_path`: a registered LLM name, or a path to an HF model directory or `.gguf` file.
    pub fn resolve(registry: &Registry, name_or_path: &str) -> Result<Self, LlmError> {
        if registry.llms.contains_key(name_or_path) || !Path::new(name_or_path).exists() {
            return Self::from_registry(registry, name_or_path);
        }
        let p = PathBuf::from(name_or_path);
        let local = if p.is_dir() { LocalWeights::HfDir(p.clone()) } else { LocalWeights::Gguf(p.clone()) };
        let declared = Declared {
            config: None,
            tokenizer: TokenizerSpec::Pretrained,
            template: None,
            system_prompt: None,
            stop_tokens: Vec::new(),
            default_lora: None,
            base_dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        Self::from_local(name_or_path, local, declared)
    }

    pub fn from_registry(registry: &Registry, name: &str) -> Result<Self, LlmError> {
        let (path, m) = registry.llm(name)?;
        let invalid = |detail: String| LlmError::Invalid { name: name.to_string(), detail: format!("{detail} (manifest `{}`)", path.display()) };
        let template = Template::from_name(&m.template).ok_or_else(|| invalid(format!("unknown template `{}`; known: {}", m.template, Template::NAMES.join(", "))))?;
        let declared = Declared {
            config: m.config.clone(),
            tokenizer: m.tokenizer.clone(),
            template: Some(template),
            system_prompt: m.system_prompt.clone(),
            stop_tokens: m.stop_tokens.clone(),
            default_lora: m.lora.clone(),
            base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        match hub::resolve(name, path, &m.weights).map_err(Box::new)? {
            Some(local) => Self::from_local(name, local, declared),
            None => {
                let source = match m.weights {
                    crate::registry::Weights::Seeded { seed } => Source::Seeded(seed),
                    _ => Source::Random,
                };
                let config = declared.config.ok_or_else(|| invalid("random weights need a [config] table".into()))?;
                config.validate().map_err(invalid)?;
                Ok(Self {
                    name: name.into(),
                    config,
                    template,
                    system_prompt: declared.system_prompt,
                    stop_tokens: declared.stop_tokens,
                    default_lora: declared.default_lora,
                    tokenizer: declared.tokenizer,
                    base_dir: declared.base_dir,
                    source,
                })
            }
        }
    }

    fn from_local(name: &str, local: LocalWeights, d: Declared) -> Result<Self, LlmError> {
        let (config, source, gguf_system) = match local {
            LocalWeights::HfDir(dir) => {
                let cfg = LlamaConfig::from_hf_file(&dir.join("config.json")).map_err(WeightsError::from)?;
                (cfg, Source::HfDir(dir), None)
            }
            LocalWeights::File(p) => {
                return Err(LlmError::Invalid { name: name.to_string(), detail: format!("`{}`: an LLM needs an HF model directory or a .gguf file", p.display()) });
            }
            LocalWeights::Gguf(p) => {
                let g = GgufFile::open(&p)?;
                let sys = g.default_system_prompt();
                (g.config()?, Source::Gguf(Box::new(g)), sys)
            }
        };
        if let Some(m) = d.config.filter(|m| m != &config) {
            tracing::warn!(llm = name, manifest = ?m, weights = ?config, "the manifest's [config] differs from the weights' config; using the weights'");
        }
        // ChatML models carry their default system prompt in the chat template; LLaMA-2 has none.
        let chatml = config.model_type == "qwen2" || gguf_system.is_some();
        let template = d.template.unwrap_or(if chatml { Template::Chatml } else { Template::Llama2 });
        Ok(Self {
            name: name.into(),
            config,
            template,
            system_prompt: d.system_prompt.or(gguf_system),
            stop_tokens: d.stop_tokens,
            default_lora: d.default_lora,
            tokenizer: d.tokenizer,
            base_dir: d.base_dir,
            source,
        })
    }

    pub fn is_pretrained(&self) -> bool {
        !matches!(self.source, Source::Random)
    }

    /// The model's tokenizer; `None` for `corpus_word_level` (the run builds it from its texts).
    pub fn tokenizer(&self) -> Result<Option<TextTokenizer>, LlmError> {
        let eos = self.config.eos_token_id.as_ref().and_then(|e| e.ids().first().copied());
        let tok = match (&self.tokenizer, &self.source) {
            (TokenizerSpec::CorpusWordLevel, _) => return Ok(None),
            (TokenizerSpec::Pretrained, Source::Gguf(g)) => g.tokenizer()?,
            (TokenizerSpec::Pretrained, Source::HfDir(dir)) => self.hf_tokenizer(&dir.join("tokenizer.json"), Some(dir), eos)?,
            (TokenizerSpec::Pretrained, Source::Random | Source::Seeded(_)) => {
                return Err(LlmError::Invalid { name: self.name.clone(), detail: "random weights have no pretrained tokenizer; use kind = \"corpus_word_level\" or \"file\"".into() });
            }
            // A GGUF file as the vocabulary (e.g. llama.cpp's `ggml-vocab-llama-spm.gguf`).
            (TokenizerSpec::File { path }, _) if path.ends_with(".gguf") => {
                let file = hub::expand(path, &self.base_dir);
                if !file.is_file() {
                    return Err(LlmError::Invalid { name: self.name.clone(), detail: format!("tokenizer `{}` is missing (registry vocabularies: `just fetch-models`)", file.display()) });
                }
                GgufFile::open(&file)?.tokenizer()?
            }
            (TokenizerSpec::File { path }, src) => {
                let dir = match src {
                    Source::HfDir(d) => Some(d.as_path()),
                    _ => None,
                };
                self.hf_tokenizer(&hub::expand(path, &self.base_dir), dir, eos)?
            }
        };
        self.check_tokenizer(&tok)?;
        Ok(Some(tok))
    }

    fn hf_tokenizer(&self, path: &Path, dir: Option<&Path>, eos: Option<u32>) -> Result<TextTokenizer, LlmError> {
        // A config without special ids (a manifest's own [config]): a corpus tokenizer saved by a run,
        // whose special tokens are found by name.
        let Some(eos) = eos else { return Ok(TextTokenizer::from_file(path)?) };
        // tokenizer_config.json says whether BOS is added; LLaMA adds it by default, Qwen2 does not.
        let add_bos = dir
            .and_then(|d| std::fs::read_to_string(d.join("tokenizer_config.json")).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("add_bos_token").and_then(|b| b.as_bool()))
            .unwrap_or(self.config.model_type == "llama");
        Ok(TextTokenizer::from_pretrained_file(path, self.config.bos_token_id, add_bos, eos)?)
    }

    /// A tokenizer whose ids exceed the embedding table belongs to another model.
    pub fn check_tokenizer(&self, tok: &TextTokenizer) -> Result<(), LlmError> {
        if self.config.vocab_size != 0 && tok.vocab_size() > self.config.vocab_size {
            return Err(LlmError::Invalid {
                name: self.name.clone(),
                detail: format!("the tokenizer has {} tokens but the model's vocab_size is {}: tokenizer and weights do not belong together", tok.vocab_size(), self.config.vocab_size),
            });
        }
        Ok(())
    }

    /// Stop token ids (EOS of the config plus the manifest's `stop_tokens`) for `tok`.
    pub fn stop_ids(&self, tok: &TextTokenizer) -> Vec<u32> {
        let mut ids: Vec<u32> = self.config.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default();
        ids.push(tok.eos);
        ids.extend(self.stop_tokens.iter().filter_map(|t| tok.token_id(t)));
        if self.template == Template::Chatml {
            ids.extend(tok.token_id("<|im_end|>"));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Builds the LLM (with `self.config`; a corpus tokenizer's run sets its `vocab_size` first) under
    /// `prefix` (e.g. `llm.`): pretrained weights from the files (frozen, never in
    /// `varmap`), LoRA and random weights created in `varmap` from `seed`. `keep_quantized` (GGUF,
    /// inference only) keeps the matrices quantized. Returns the model and the `VarBuilder` for the
    /// remaining (non-LLM) parameters.
    /// `dtype`: pretrained (frozen) weights are loaded in it and the LLM computes in it; new parameters
    /// (LoRA, projectors, a random LLM's weights) are f32 master copies.
    #[allow(clippy::too_many_arguments)]
    pub fn build(&self, lora: Option<&LoraConfig>, varmap: &VarMap, seed: u64, prefix: &str, keep_quantized: bool, dtype: DType, dev: &Device) -> Result<(Llama, VarBuilder<'static>), LlmError> {
        let cfg = &self.config;
        let berr = |source| LlmError::Build { name: self.name.clone(), source };
        let (vb, quant): (VarBuilder<'static>, QuantStore) = match &self.source {
            Source::Random => (SeededVarMap::builder(varmap, seed, DType::F32, dev), QuantStore::new()),
            Source::Seeded(weights_seed) => {
                let store = TensorStore::Seeded { seed: *weights_seed };
                (PretrainedBackend::builder(Arc::new(store), prefix, varmap, seed, dtype, dev), QuantStore::new())
            }
            Source::HfDir(dir) => {
                let store = TensorStore::open_hf_dir(dir)?;
                (PretrainedBackend::builder(Arc::new(store), prefix, varmap, seed, dtype, dev), QuantStore::new())
            }
            Source::Gguf(g) => {
                let (store, quant) = g.load(cfg, prefix, keep_quantized, dev)?;
                (PretrainedBackend::builder(Arc::new(store), prefix, varmap, seed, dtype, dev), quant)
            }
        };
        let quant_ref = if quant.is_empty() { None } else { Some(&quant) };
        let llm_vb = match prefix.trim_end_matches('.') {
            "" => vb.clone(),
            p => vb.pp(p),
        };
        let llm = Llama::load(cfg, lora, quant_ref, llm_vb).and_then(|l| l.with_compute_dtype(dtype)).map_err(berr)?;
        Ok((llm, vb))
    }

    /// The LLM alone (no prefix), with a PEFT adapter directory applied when given.
    pub fn build_with_adapter(&self, adapter: Option<&Path>, keep_quantized: bool, dev: &Device) -> Result<Llama, LlmError> {
        let (lora, tensors) = match adapter {
            Some(dir) => {
                let (cfg, t) = super::lora::load_peft(dir, "").map_err(|e| LlmError::Invalid { name: self.name.clone(), detail: e.to_string() })?;
                (Some(cfg), t)
            }
            None => (None, Default::default()),
        };
        let varmap = VarMap::new();
        let (llm, _) = self.build(lora.as_ref(), &varmap, 0, "", keep_quantized, DType::F32, dev)?;
        if let Some(dir) = adapter {
            super::weights::apply_adapter(&varmap, &tensors, dir)?;
        }
        Ok(llm)
    }

    /// The chat template of `kind` with this model's system prompt (ChatML only: Emotion-LLaMA's LLaMA-2
    /// prompt has none).
    pub fn chat_template(&self, kind: Template) -> ChatTemplate {
        ChatTemplate { kind, system: self.system_prompt.clone().filter(|_| kind == Template::Chatml), turn: Default::default() }
    }

    /// The `tokenizer.json` file behind the tokenizer, when there is one.
    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        match (&self.tokenizer, &self.source) {
            (TokenizerSpec::File { path }, _) => Some(hub::expand(path, &self.base_dir)),
            (TokenizerSpec::Pretrained, Source::HfDir(d)) => Some(d.join("tokenizer.json")).filter(|p| p.is_file()),
            _ => None,
        }
    }

    /// Where the weights come from, for logs and the run directory.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Random => "random (trained from scratch)".into(),
            Source::Seeded(seed) => format!("seeded random weights (seed {seed}, frozen)"),
            Source::HfDir(d) => d.display().to_string(),
            Source::Gguf(g) => g.path.display().to_string(),
        }
    }
}
