//! Phase 3 of a run: the model. The LLM and its template, the tokenizer (the LLM's, a resumed or
//! evaluated run's, or a word-level one built from the data), the model from the recipe, the parameters
//! to start from (a resumed checkpoint, `eval.checkpoint`), and where its media inputs come from.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::data::RunData;
use super::dir::RunDir;
use super::{RunError, io};
use crate::data::Sample;
use crate::feed::batch;
use crate::feed::inputs::{DecodedStore, Decoder, FeatureStore, MediaStore};
use crate::model::build::{BuildError, Built, build_model};
use crate::model::llm_load::LlmSpec;
use crate::model::prompt::{ChatTemplate, Template};
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::LoadedRecipe;
use crate::registry::Registry;

/// The built model and what it needs to train and evaluate.
pub struct RunModel {
    pub built: Built,
    pub varmap: VarMap,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    /// Initial values of the parameters that a stage with `init = "none"` resets.
    pub initial: HashMap<String, Tensor>,
}

impl RunModel {
    pub fn build(loaded: &LoadedRecipe, registry: &Registry, run: &RunDir, data: &RunData, device: &Device) -> Result<Self, RunError> {
        let r = &loaded.recipe;
        let mut llm = LlmSpec::resolve(registry, &r.model.llm).map_err(|e| BuildError::from(Box::new(e)))?;
        let kind = Template::chosen(r.prompt.template, llm.template);
        let template = llm.chat_template(kind).with_turn(crate::model::prompt::TurnLayout::chosen(r));
        tracing::info!(llm = %llm.name, weights = %llm.describe(), template = ?kind, "LLM");
        let saved_tokenizer = run.dir.join("tokenizer.json");
        let eval_from = if r.eval.checkpoint.is_empty() { None } else { Some(eval_checkpoint(Path::new(&r.eval.checkpoint))?) };
        let tokenizer = match llm.tokenizer().map_err(|e| BuildError::from(Box::new(e)))? {
            Some(t) => t,
            None if run.resuming && saved_tokenizer.exists() => TextTokenizer::from_file(&saved_tokenizer)?,
            None if eval_from.as_ref().is_some_and(|(_, t)| t.is_some()) => {
                TextTokenizer::from_file(eval_from.as_ref().and_then(|(_, t)| t.as_deref()).unwrap_or(&saved_tokenizer))?
            }
            None => corpus_tokenizer(loaded, data, &template)?,
        };
        if run.leader {
            tokenizer.save(&saved_tokenizer)?;
        }
        if llm.config.vocab_size == 0 {
            llm.config.vocab_size = tokenizer.vocab_size();
        }
        let varmap = VarMap::new();
        let built = build_model(r, registry, &llm, &tokenizer, &varmap, r.seed, device)?;
        tracing::info!(vocab = tokenizer.vocab_size(), samples = data.pool.len(), "model built");
        // Initial values of what an `init = "none"` stage resets (deep copies: optimiser steps write in place).
        let reset_globs: Vec<String> = r.stages.iter().filter(|s| s.init == "none").flat_map(|s| s.trainable.iter().cloned()).collect();
        let mut initial = HashMap::new();
        for (n, v) in crate::train::optim::select(&varmap, &reset_globs) {
            initial.insert(n, v.as_tensor().copy()?);
        }
        if let Some(f) = &run.found {
            load_params(&varmap, &f.dir, device)?;
        }
        if let Some((params, _)) = &eval_from {
            let tensors = candle_core::safetensors::load(params, device)
                .map_err(|e| RunError::EvalCheckpoint { path: params.display().to_string(), detail: e.to_string() })?;
            assign_params(&varmap, &tensors, params, &format!("eval.checkpoint `{}` (another recipe's checkpoint?)", params.display()))?;
            tracing::info!(params = %params.display(), tensors = tensors.len(), "evaluating checkpoint");
        }
        Ok(Self { built, varmap, tokenizer, template, initial })
    }

    /// Where the model's media inputs come from: none (text only), cached frozen-encoder features, or
    /// clips decoded once and kept.
    pub fn media_store<'a>(&'a self, r: &crate::recipe::Recipe, registry: &Registry, data: &RunData) -> Result<MediaStore<'a>, RunError> {
        let cached = r.model.use_av && r.runtime.feature_cache && r.model.family() == crate::recipe::Family::EmotionLlama;
        // Frames are decoded at each file's own size and transformed once per encoder view.
        let decoder = || Decoder::new(crate::data::loader::DecodeSpec { views: self.built.views.clone(), ..data.spec.clone() });
        Ok(if !r.model.use_av {
            MediaStore::Off
        } else if cached {
            let settings = feature_settings(r, registry)?;
            let cache = crate::data::feature_cache::FeatureCache::new(&data.cache, &settings);
            tracing::info!(dir = %cache.dir().display(), "frozen-encoder feature cache");
            MediaStore::Cached(Box::new(FeatureStore { cache, model: &self.built.model, decoder: decoder() }))
        } else {
            MediaStore::Decoded(Box::new(DecodedStore::new(decoder(), data.pool.len())))
        })
    }

    /// Loads the parameters stored in a checkpoint directory into the model.
    pub fn load_checkpoint(&self, dir: &Path, device: &Device) -> Result<(), RunError> {
        load_params(&self.varmap, dir, device)
    }
}

/// The device a recipe asks for, if this build has it.
pub fn device_for(r: &crate::recipe::Recipe) -> Result<Device, RunError> {
    // bf16 / f16 on a CPU without native support is slow but correct.
    crate::device::parse(&r.runtime.device).map_err(|detail| RunError::Device { device: r.runtime.device.clone(), detail })
}

/// Where `eval.checkpoint` points: the parameters file, and the run directory's tokenizer when there is one.
pub fn eval_checkpoint(path: &Path) -> Result<(PathBuf, Option<PathBuf>), RunError> {
    let bad = |why: &str| RunError::EvalCheckpoint { path: path.display().to_string(), detail: why.to_string() };
    let params = if path.is_file() {
        path.to_path_buf()
    } else if path.join(crate::train::checkpoint::PARAMS).is_file() {
        path.join(crate::train::checkpoint::PARAMS)
    } else if path.join("checkpoints").is_dir() {
        // A run directory: its best checkpoint, else its newest step checkpoint.
        let best = std::fs::read(path.join("metrics.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["best"]["checkpoint"].as_str().map(PathBuf::from))
            .map(|c| if c.is_absolute() { c } else { path.join("checkpoints").join(c.file_name().unwrap_or_default()) })
            .filter(|c| c.join(crate::train::checkpoint::PARAMS).is_file());
        let dir = best
            .or_else(|| crate::train::checkpoint::latest(&path.join("checkpoints")).map(|f| f.dir))
            .ok_or_else(|| bad("a run directory without a complete checkpoint"))?;
        dir.join(crate::train::checkpoint::PARAMS)
    } else {
        return Err(bad("not a run directory, checkpoint directory or .safetensors file"));
    };
    let tokenizer = params.ancestors().skip(1).take(4).map(|d| d.join("tokenizer.json")).find(|t| t.is_file());
    Ok((params, tokenizer))
}

/// Loads the parameters stored in a checkpoint directory into the model.
fn load_params(varmap: &VarMap, dir: &Path, device: &Device) -> Result<(), RunError> {
    let tensors = crate::train::checkpoint::load_tensors(dir, false, device)?;
    assign_params(varmap, &tensors, dir, &format!("checkpoint `{}`", dir.display()))
}

/// Writes `tensors` into the model's parameters of the same names; a tensor the model does not have is
/// an error about `what`.
pub fn assign_params(varmap: &VarMap, tensors: &std::collections::HashMap<String, candle_core::Tensor>, source: &Path, what: &str) -> Result<(), RunError> {
    let vars: Vec<(String, candle_core::Var)> =
        crate::train::optim::select(varmap, &["*".to_string()]).into_iter().filter(|(n, _)| tensors.contains_key(n)).collect();
    if vars.len() != tensors.len() {
        return Err(RunError::ForeignParams(what.to_string()));
    }
    crate::train::trainer::assign(&vars, tensors, &source.display().to_string()).map_err(RunError::Params)
}

/// The word-level vocabulary a run builds from its training samples' texts (for LLMs whose manifest says
/// `corpus_word_level`): the same data and template give the same vocabulary.
pub fn corpus_tokenizer(loaded: &LoadedRecipe, data: &RunData, template: &ChatTemplate) -> Result<TextTokenizer, RunError> {
    let train: Vec<&Sample> = data.pool.iter().filter(|s| s.split == "train").collect();
    let corpus = tokenizer_corpus(loaded, &train, &data.labels, template);
    Ok(TextTokenizer::from_corpus(corpus.iter().map(String::as_str))?)
}

/// Texts the word-level tokenizer must cover: every prompt shape, instruction, label and training answer.
fn tokenizer_corpus(loaded: &LoadedRecipe, train: &[&Sample], labels: &[String], template: &ChatTemplate) -> Vec<String> {
    let r = &loaded.recipe;
    let mut tasks: BTreeSet<crate::recipe::Task> = r.stages.iter().flat_map(|s| s.tasks.iter().chain(s.data.iter().flat_map(|d| d.tasks.iter())).copied()).collect();
    tasks.insert(r.eval.task);
    tasks.insert(r.validation_task());
    let mut corpus: Vec<String> = labels.to_vec();
    let extra: Vec<&String> = r.stages.iter().flat_map(|s| s.data.iter().flat_map(|d| d.instructions.values().flatten())).collect();
    for sample in train {
        for &task in &tasks {
            for instruction in r.prompt.instructions_for(task).iter().chain(extra.iter().copied()) {
                for transcript in [true, false] {
                    corpus.push(batch::prompt_text(sample, task, instruction, template, transcript));
                }
            }
            if let Some(a) = batch::answer_for(sample, task) {
                corpus.push(a);
            }
        }
    }
    corpus
}

/// Everything besides the media that the frozen encoders' outputs depend on (the feature cache key):
/// each encoder's manifest text (architecture, config, weights reference), the seed of random weights,
/// the preprocessing and the global view's frame.
pub fn feature_settings(r: &crate::recipe::Recipe, registry: &Registry) -> Result<String, RunError> {
    let mut out = String::new();
    for (view, name) in [("global", &r.model.global_encoder), ("local", &r.model.local_encoder), ("temporal", &r.model.temporal_encoder), ("audio", &r.model.audio_encoder)] {
        if name.is_empty() {
            continue;
        }
        let (path, manifest) = registry.encoder(name)?;
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        out.push_str(&format!("[{view}:{name}]\n{text}\n"));
        if matches!(manifest.weights, crate::registry::Weights::Random) {
            out.push_str(&format!("random-seed={}\n", r.seed));
        }
    }
    // Frames are decoded at the file's own size and resized per encoder (features cached
    // before came from frames scaled once to data.width x data.height).
    out.push_str("pixels=per-encoder-transform\n");
    out.push_str(&format!(
        "frames={:?}\nwidth={}\nheight={}\naudio_seconds={}\nglobal_frame={}\n",
        r.data.frames, r.data.width, r.data.height, r.data.audio_seconds, r.model.global_frame
    ));
    // bf16 matmuls give (slightly) different features.
    out.push_str(&format!("inference_precision={}\n", r.runtime.resolved_inference_precision().name()));
    // The face front end changes what every view sees (its weights are compiled in: the version is enough).
    if let Some(face) = &r.front_end.face {
        out.push_str(&format!("front_end.face={}\nemollama={}\n", serde_json::to_string(face).unwrap_or_default(), env!("CARGO_PKG_VERSION")));
    }
    Ok(out)
}
