//! `emollama import FORMAT PATH --out DIR`: a published PyTorch checkpoint (Emotion-LLaMA's `.pth`, or
//! MiniGPT-v2's that Emotion-LLaMA's stage 1 starts from) read safely into this model's checkpoint layout,
//! with a recipe that uses it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emollama::model::import::{self, SourceFormat};
use emollama::model::pth::Checkpoint;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Emotion-LLaMA's released checkpoint (`Emoation_LLaMA.pth`, a stage's `checkpoint_N.pth`): the five
    /// projectors and the LoRA; the written recipe evaluates it.
    EmotionLlama,
    /// MiniGPT-v2's checkpoint (`minigptv2_checkpoint.pth`): `llama_proj` and the LoRA; the written recipe
    /// starts stage 1 from it.
    MinigptV2,
}

impl Format {
    fn source(self) -> SourceFormat {
        match self {
            Self::EmotionLlama => SourceFormat::EmotionLlama,
            Self::MinigptV2 => SourceFormat::MinigptV2,
        }
    }

    fn default_recipe(self) -> &'static str {
        match self {
            Self::EmotionLlama => "recipes/mer2024_finetune.toml",
            Self::MinigptV2 => "recipes/emotion_llama/stage1.toml",
        }
    }
}

/// Import a published PyTorch checkpoint (`.pth`, read without running any of its code) into a
/// checkpoint directory: DIR/params.safetensors under this model's parameter names, DIR/recipe.toml (the
/// recipe resolved, using DIR: `eval.checkpoint` for emotion-llama, the first stage's `init` for
/// minigpt-v2) and DIR/import.json (source, sha256, counts, what was skipped).
#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    format: Format,
    /// The `.pth` file.
    path: PathBuf,
    /// The checkpoint directory to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// The recipe the checkpoint is for (default: recipes/mer2024_finetune.toml for emotion-llama,
    /// recipes/emotion_llama/stage1.toml for minigpt-v2).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Override a key of --recipe, e.g. `--set model.lora.r=8` (repeatable); kept in the written recipe.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// No progress bar while the tensors are read.
    #[arg(long)]
    no_progress: bool,
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading `{}`", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Loads and validates a recipe for the import: what only a run needs (dataset roots, weights on this
/// machine) is a warning, since the tensors do not depend on it; anything else is an error.
fn load_for_import(path: &Path, sets: &[String]) -> Result<(emollama::recipe::LoadedRecipe, emollama::registry::Registry)> {
    let loaded = super::load(path, sets)?;
    let registry = emollama::registry::Registry::discover(super::recipe_dir(path))?;
    let (errors, deferred) = emollama::validate::validate_for_plan(&loaded, &registry);
    if !errors.is_empty() {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        bail!("recipe `{}` is invalid:\n{}", path.display(), text.join("\n"));
    }
    for d in &deferred {
        tracing::warn!(recipe = %path.display(), key = d.key(), "{} (needed to run the recipe, not to import)", d.message());
    }
    Ok((loaded, registry))
}

impl Args {
    pub fn run(self) -> Result<()> {
        let recipe_path = match &self.recipe {
            Some(r) => r.clone(),
            // The project's recipe, found like the registries (from here, else the build's source tree).
            None => emollama::registry::Registry::discover(Path::new("."))?.root.join(self.format.default_recipe()),
        };
        let (loaded, registry) = load_for_import(&recipe_path, &self.sets)?;
        if loaded.recipe.model.global_encoder.is_empty() {
            bail!("recipe `{}` is not an Emotion-LLaMA model (`model.global_encoder` is empty): pass an Emotion-LLaMA recipe with --recipe", recipe_path.display());
        }
        if self.out.exists() && std::fs::read_dir(&self.out).with_context(|| format!("--out `{}`", self.out.display()))?.next().is_some() {
            bail!("--out `{}` exists and is not empty: choose a new directory", self.out.display());
        }
        let shapes = emollama::plan::model::shapes(&loaded.recipe, &registry).with_context(|| format!("the model of recipe `{}`", recipe_path.display()))?;
        let lora = shapes.llm.lora.clone();
        let format = self.format.source();

        let mut ckpt = Checkpoint::open(&self.path)?;
        let plan = import::plan(&ckpt, format, &shapes.params, lora.as_ref())?;
        for name in &plan.skipped {
            tracing::info!(tensor = %name, "skipped: the reference's unused `attention` module");
        }
        let show = super::show_progress(loaded.recipe.runtime.progress, self.no_progress);
        let bar = emollama::progress::bar(plan.nbytes(), "import", show);
        let tensors = import::read(&mut ckpt, &plan, &bar)?;
        bar.finish_and_clear();
        let sha = sha256_file(&self.path)?;

        // The checkpoint directory, written by the trainer's checkpoint writer (atomic, hashed).
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating --out `{}`", self.out.display()))?;
        let out = std::fs::canonicalize(&self.out).with_context(|| format!("--out `{}`", self.out.display()))?;
        let (root, name) = match (out.parent(), out.file_name().and_then(|n| n.to_str())) {
            (Some(root), Some(name)) => (root.to_path_buf(), name.to_string()),
            _ => bail!("--out `{}`: give a directory with a (UTF-8) name", self.out.display()),
        };
        let mut recipe = loaded.clone();
        let r = &mut recipe.recipe;
        r.model.lora = lora.clone();
        let out_str = out.to_str().with_context(|| format!("--out `{}` is not UTF-8", out.display()))?.to_string();
        let role = match self.format {
            Format::EmotionLlama => {
                // Evaluation of the imported parameters (eval.checkpoint forbids training stages).
                r.stages.clear();
                r.eval.enabled = true;
                r.eval.checkpoint = out_str.clone();
                r.name = format!("{}-imported", r.name);
                "eval.checkpoint"
            }
            Format::MinigptV2 => {
                let Some(first) = r.stages.first_mut() else {
                    bail!("recipe `{}` has no [[stage]] to start from the MiniGPT-v2 checkpoint: pass a training recipe with --recipe", recipe_path.display());
                };
                first.init = out_str.clone();
                r.name = format!("{}-from-minigpt-v2", r.name);
                "stage[0].init"
            }
        };
        let text = recipe.to_toml().map_err(|e| anyhow::anyhow!("{e}"))?;
        let header = format!(
            "# Written by `emollama import {}`: recipe `{}` resolved, with `{role}` = this directory.\n# Source: `{}` (sha256 {sha}).\n",
            format.name(),
            recipe_path.display(),
            self.path.display()
        );
        let recipe_text = format!("{header}{text}");
        let params: std::collections::HashMap<String, candle_core::Tensor> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let state = emollama::train::checkpoint::TrainState::new(hex::encode(Sha256::digest(recipe_text.as_bytes())));
        emollama::train::checkpoint::write(&root, &name, &params, None, &state)?;
        let recipe_file = out.join("recipe.toml");
        std::fs::write(&recipe_file, &recipe_text).with_context(|| format!("writing `{}`", recipe_file.display()))?;

        // The written recipe must load from where it is: its registries are found from its folder.
        let found = emollama::registry::Registry::discover(&out).map(|r| r.root);
        match &found {
            Ok(root) if *root == registry.root => {}
            Ok(root) => tracing::warn!(recipe = %recipe_file.display(), found = %root.display(), expected = %registry.root.display(), "the written recipe finds another project's plugins/ from its folder: move --out under the project"),
            Err(e) => tracing::warn!(recipe = %recipe_file.display(), error = %e, "the written recipe finds no plugins/ from its folder: move --out under the project"),
        }
        load_for_import(&recipe_file, &[]).with_context(|| format!("the written recipe `{}` does not load", recipe_file.display()))?;

        let report = serde_json::json!({
            "format": format.name(),
            "source": std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone()).display().to_string(),
            "sha256": sha,
            "recipe": recipe_path.display().to_string(),
            "written_recipe": recipe_file.display().to_string(),
            "recipe_uses_it_as": role,
            "registry_root": registry.root.display().to_string(),
            "tensors": { "in_file": plan.in_file, "imported": plan.entries.len(), "skipped": plan.skipped.len() },
            "parameters": tensors.values().map(|t| t.elem_count()).sum::<usize>(),
            "lora": lora.as_ref().map(|l| serde_json::json!({ "r": l.r, "lora_alpha": l.lora_alpha, "target_modules": l.target_modules })),
            "checkpoint_config_lora": plan.config_lora.map(|(r, a)| serde_json::json!({ "lora_r": r, "lora_alpha": a })),
            "epoch": plan.epoch,
            "mapping": plan.entries.iter().map(|e| serde_json::json!({ "source": e.source, "name": e.ours, "shape": e.tensor.shape, "source_dtype": format!("{:?}", e.tensor.storage.elem) })).collect::<Vec<_>>(),
            "skipped": plan.skipped,
        });
        let report_file = out.join("import.json");
        std::fs::write(&report_file, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing `{}`", report_file.display()))?;
        tracing::info!(imported = plan.entries.len(), skipped = plan.skipped.len(), dir = %out.display(), "imported");
        let next = match self.format {
            Format::EmotionLlama => format!("emollama eval {}", recipe_file.display()),
            Format::MinigptV2 => format!("emollama run {}", recipe_file.display()),
        };
        println!(
            "imported {} tensors ({} skipped) from `{}` into `{}`\nnext: {next}",
            plan.entries.len(),
            plan.skipped.len(),
            self.path.display(),
            out.display()
        );
        Ok(())
    }
}
