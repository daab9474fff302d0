//! What `predict --model` names, loaded exactly as a run builds and evaluates it: a run directory (its
//! recipe and tokenizer, its best checkpoint, else its newest), a checkpoint directory or `.safetensors`
//! file (the recipe of the run directory above it, or the `recipe.toml` beside it, as `emollama import`
//! writes), or a recipe (its `eval.checkpoint`, else the model as the recipe builds it).

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;
use sha2::{Digest, Sha256};

use super::PredictError;
use crate::model::build::{Built, build_model};
use crate::model::llm_load::LlmSpec;
use crate::model::prompt::{ChatTemplate, Template};
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::{LoadedRecipe, Recipe};
use crate::registry::Registry;

/// A model ready to predict with.
pub struct PredictModel {
    pub loaded: LoadedRecipe,
    pub registry: Registry,
    pub built: Built,
    pub varmap: VarMap,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    /// The label set of the recipe's dataset card.
    pub labels: Vec<String>,
    pub device: Device,
    /// The parameters loaded over the recipe's model (`None`: as the recipe builds it).
    pub params: Option<PathBuf>,
    /// sha256 over the resolved recipe, the tokenizer and the parameters: part of each output line's key.
    pub fingerprint: String,
    /// What `--model` was, for the summary.
    pub described: String,
}

/// Where `--model` points: the recipe file, the parameters and a saved tokenizer.
struct Located {
    recipe: PathBuf,
    params: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    described: String,
}

fn bad(model: &Path, detail: impl std::fmt::Display) -> PredictError {
    PredictError::Model { model: model.display().to_string(), detail: detail.to_string() }
}

/// `--model` names of the project's own models: the recipe each stands for (found like the registries:
/// from here up, else the build's source tree).
pub const NAMED_MODELS: [(&str, &str); 1] = [("zero-shot", "recipes/zero_shot.toml")];

fn locate(model: &Path) -> Result<Located, PredictError> {
    if let Some((name, recipe)) = NAMED_MODELS.iter().find(|(n, _)| model == Path::new(n)).filter(|_| !model.exists()) {
        let root = Registry::discover(Path::new(".")).map_err(|e| bad(model, e))?.root;
        let recipe = root.join(recipe);
        return Ok(Located { described: format!("{name} ({})", recipe.display()), recipe, params: None, tokenizer: None });
    }
    if !model.exists() {
        return Err(bad(model, "does not exist (give a run directory, a checkpoint, an imported model's directory, a recipe, or `zero-shot`)"));
    }
    if model.is_file() && model.extension().is_some_and(|e| e == "toml") {
        return Ok(Located { recipe: model.to_path_buf(), params: None, tokenizer: None, described: format!("recipe {}", model.display()) });
    }
    let (params, tokenizer) = crate::run::eval_checkpoint(model).map_err(|e| bad(model, e))?;
    // The recipe: the run directory's resolved one, else a `recipe.toml` beside the parameters.
    let recipe = params
        .ancestors()
        .skip(1)
        .take(4)
        .flat_map(|d| [d.join("recipe.resolved.toml"), d.join("recipe.toml")])
        .find(|p| p.is_file())
        .ok_or_else(|| bad(model, "no recipe.resolved.toml (run directory) or recipe.toml (imported model) found beside or above the parameters"))?;
    let described = if model.join("recipe.resolved.toml").is_file() { format!("run {} ({})", model.display(), params.display()) } else { format!("checkpoint {}", params.display()) };
    Ok(Located { recipe, params: Some(params), tokenizer, described })
}

impl PredictModel {
    /// Loads `model` with `sets` (`KEY=VALUE` overrides of its recipe, e.g. `runtime.device=cuda`).
    pub fn open(model: &Path, sets: &[String]) -> Result<Self, PredictError> {
        let mut at = locate(model)?;
        let mut loaded = crate::recipe::load_recipe(&at.recipe, sets).map_err(|e| bad(model, e))?;
        // Nothing trains here (as `emollama eval`): a recipe's stages neither build nor change the model.
        loaded.recipe.stages.clear();
        let r = &loaded.recipe;
        let start = at.recipe.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let registry = Registry::discover(start).map_err(|e| bad(model, e))?;
        let errors = crate::validate::validate(&loaded, &registry);
        if !errors.is_empty() {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            return Err(bad(model, format!("its recipe `{}` is invalid:\n{}", at.recipe.display(), text.join("\n"))));
        }
        // A recipe's own `eval.checkpoint` (relative paths from the working directory, as `run` reads them).
        if at.params.is_none() && !r.eval.checkpoint.is_empty() {
            let (p, t) = crate::run::eval_checkpoint(Path::new(&r.eval.checkpoint)).map_err(|e| bad(model, e))?;
            at.described = format!("{} with eval.checkpoint {}", at.described, p.display());
            (at.params, at.tokenizer) = (Some(p), t);
        }
        if at.params.is_none() && !r.prompt.cues {
            tracing::warn!(recipe = %at.recipe.display(), "no trained parameters: predicting with the model as the recipe builds it (untrained projectors and adapters)");
        }
        let device = crate::run::model::device_for(r).map_err(|e| bad(model, e))?;
        let threads = if r.runtime.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { r.runtime.threads };
        crate::accel::set_inference(r.runtime.resolved_inference_precision(), threads);

        let mut llm = LlmSpec::resolve(&registry, &r.model.llm).map_err(|e| bad(model, e))?;
        let template = llm.chat_template(Template::chosen(r.prompt.template, llm.template)).with_turn(crate::model::prompt::TurnLayout::chosen(r));
        let tokenizer = match llm.tokenizer().map_err(|e| bad(model, e))? {
            Some(t) => t,
            None => match &at.tokenizer {
                Some(path) => TextTokenizer::from_file(path).map_err(|e| bad(path, e))?,
                // No saved vocabulary (an imported or recipe-only model): built from the recipe's
                // training data exactly as its runs and `emollama eval` build it.
                None => {
                    tracing::info!(llm = %llm.name, "building the word-level vocabulary from the recipe's training data, as its runs do");
                    let data = crate::run::data::RunData::load(r, &registry, threads, false).map_err(|e| bad(model, format!("its vocabulary comes from the training data: {e}")))?;
                    crate::run::model::corpus_tokenizer(&loaded, &data, &template).map_err(|e| bad(model, e))?
                }
            },
        };
        if llm.config.vocab_size == 0 {
            llm.config.vocab_size = tokenizer.vocab_size();
        }
        let varmap = VarMap::new();
        let built = build_model(r, &registry, &llm, &tokenizer, &varmap, r.seed, &device).map_err(|e| bad(model, e))?;
        if let Some(p) = &at.params {
            let tensors = candle_core::safetensors::load(p, &device).map_err(|e| bad(p, e))?;
            crate::run::model::assign_params(&varmap, &tensors, p, &format!("`{}` (parameters of another recipe's model?)", p.display())).map_err(|e| bad(p, e))?;
            tracing::info!(params = %p.display(), tensors = tensors.len(), "parameters loaded");
        }
        let (_, card) = registry.dataset(&r.data.dataset).map_err(|e| bad(model, e))?;
        let labels = card.labels.clone();
        let fingerprint = fingerprint(r, &tokenizer, at.params.as_deref()).map_err(|e| bad(model, e))?;
        Ok(Self { described: at.described, loaded, registry, built, varmap, tokenizer, template, labels, device, params: at.params, fingerprint })
    }

    pub fn recipe(&self) -> &Recipe {
        &self.loaded.recipe
    }
}

/// sha256 over what decides the model's answers: the resolved recipe, the vocabulary and the parameters.
fn fingerprint(r: &Recipe, tokenizer: &TextTokenizer, params: Option<&Path>) -> Result<String, String> {
    let mut h = Sha256::new();
    // `[annotate]` says which clips, not how they are answered.
    let answering = Recipe { annotate: None, ..r.clone() };
    h.update(toml::to_string(&answering).map_err(|e| e.to_string())?.as_bytes());
    h.update(tokenizer.vocab_size().to_le_bytes());
    if let Some(p) = params {
        h.update(crate::storage::cache::sha256_file(p).map_err(|e| format!("{}: {e}", p.display()))?.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}
