//! `emollama import FORMAT PATH --out DIR`: a published checkpoint (Emotion-LLaMA's `.pth`, MiniGPT-v2's
//! that Emotion-LLaMA's stage 1 starts from, or the VideoLLaMA2-AV repository) read safely into this
//! model's checkpoint layout, with a recipe that uses it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use emollama::model::import::{self, SourceFormat};
use emollama::model::import_av::{self, AvExpect};
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
    /// The VideoLLaMA2-AV repository (`DAMO-NLP-SG/VideoLLaMA2.1-7B-AV`): a local snapshot directory, or
    /// `hf:ORG/NAME[@REVISION]` to fetch only the files needed through the Hub. The STC connector, the
    /// audio projector and BEATs; the written recipe's first stage starts from them (its `model.llm` reads
    /// the LLM from the repository itself).
    Videollama2Av,
}

impl Format {
    fn default_recipe(self) -> &'static str {
        match self {
            Self::EmotionLlama => "recipes/mer2024_finetune.toml",
            Self::MinigptV2 => "recipes/emotion_llama/stage1.toml",
            Self::Videollama2Av => "recipes/videollama2_av_mer2024.toml",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::EmotionLlama => SourceFormat::EmotionLlama.name(),
            Self::MinigptV2 => SourceFormat::MinigptV2.name(),
            Self::Videollama2Av => import_av::FORMAT,
        }
    }
}

/// What a format's reader produced: the tensors under this model's names and what the report says.
struct Imported {
    tensors: BTreeMap<String, Tensor>,
    imported: usize,
    skipped: usize,
    /// The source's sha256 (a single file), for the written recipe's header.
    sha256: String,
    /// Format-specific fields of import.json.
    report: serde_json::Map<String, serde_json::Value>,
}

/// Import a published checkpoint (PyTorch pickles are read without running any of their code) into a
/// checkpoint directory: DIR/params.safetensors under this model's parameter names, DIR/recipe.toml (the
/// recipe resolved, using DIR: `eval.checkpoint` for emotion-llama, the first stage's `init` for
/// minigpt-v2 and videollama2-av) and DIR/import.json (sources, sha256, counts, what was skipped).
#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    format: Format,
    /// The `.pth` file; for videollama2-av the snapshot directory or `hf:ORG/NAME[@REVISION]`.
    path: PathBuf,
    /// The checkpoint directory to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// The recipe the checkpoint is for (default: recipes/mer2024_finetune.toml for emotion-llama,
    /// recipes/emotion_llama/stage1.toml for minigpt-v2, recipes/videollama2_av_mer2024.toml for
    /// videollama2-av).
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
        let av = loaded.recipe.model.family() == emollama::recipe::Family::VideoLlama2Av;
        match self.format {
            Format::Videollama2Av if !av => bail!("recipe `{}` is not of the VideoLLaMA2-AV family (`model.family`): pass one with --recipe, e.g. recipes/videollama2_av_mer2024.toml", recipe_path.display()),
            Format::EmotionLlama | Format::MinigptV2 if loaded.recipe.model.global_encoder.is_empty() => {
                bail!("recipe `{}` is not an Emotion-LLaMA model (`model.global_encoder` is empty): pass an Emotion-LLaMA recipe with --recipe", recipe_path.display())
            }
            _ => {}
        }
        if self.out.exists() && std::fs::read_dir(&self.out).with_context(|| format!("--out `{}`", self.out.display()))?.next().is_some() {
            bail!("--out `{}` exists and is not empty: choose a new directory", self.out.display());
        }
        let shapes = emollama::plan::model::shapes(&loaded.recipe, &registry).with_context(|| format!("the model of recipe `{}`", recipe_path.display()))?;
        let lora = shapes.llm.lora.clone();
        let show = super::show_progress(loaded.recipe.runtime.progress, self.no_progress);
        let got = match self.format {
            Format::EmotionLlama => self.read_pth(SourceFormat::EmotionLlama, &shapes, show)?,
            Format::MinigptV2 => self.read_pth(SourceFormat::MinigptV2, &shapes, show)?,
            Format::Videollama2Av => self.read_videollama2_av(&loaded.recipe, &registry, &shapes, show)?,
        };
        let tensors = &got.tensors;
        let sha = got.sha256.clone();

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
            Format::MinigptV2 | Format::Videollama2Av => {
                let Some(first) = r.stages.first_mut() else {
                    bail!("recipe `{}` has no [[stage]] to start from the {} checkpoint: pass a training recipe with --recipe", recipe_path.display(), self.format.name());
                };
                first.init = out_str.clone();
                r.name = format!("{}-from-{}", r.name, self.format.name());
                "stage[0].init"
            }
        };
        let text = recipe.to_toml().map_err(|e| anyhow::anyhow!("{e}"))?;
        let header = format!(
            "# Written by `emollama import {}`: recipe `{}` resolved, with `{role}` = this directory.\n# Source: `{}` (sha256 {sha}).\n",
            self.format.name(),
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

        let mut report = serde_json::json!({
            "format": self.format.name(),
            "source": std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone()).display().to_string(),
            "sha256": sha,
            "recipe": recipe_path.display().to_string(),
            "written_recipe": recipe_file.display().to_string(),
            "recipe_uses_it_as": role,
            "registry_root": registry.root.display().to_string(),
            "parameters": tensors.values().map(|t| t.elem_count()).sum::<usize>(),
            "lora": lora.as_ref().map(|l| serde_json::json!({ "r": l.r, "lora_alpha": l.lora_alpha, "target_modules": l.target_modules })),
        });
        if let Some(obj) = report.as_object_mut() {
            obj.extend(got.report.clone());
        }
        let report_file = out.join("import.json");
        std::fs::write(&report_file, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing `{}`", report_file.display()))?;
        tracing::info!(imported = got.imported, skipped = got.skipped, dir = %out.display(), "imported");
        let next = match self.format {
            Format::EmotionLlama => format!("emollama eval {}", recipe_file.display()),
            Format::MinigptV2 | Format::Videollama2Av => format!("emollama run {}", recipe_file.display()),
        };
        println!("imported {} tensors ({} skipped) from `{}` into `{}`\nnext: {next}", got.imported, got.skipped, self.path.display(), out.display());
        Ok(())
    }

    /// Emotion-LLaMA's / MiniGPT-v2's `.pth`.
    fn read_pth(&self, format: SourceFormat, shapes: &emollama::plan::model::ModelShapes, show: bool) -> Result<Imported> {
        let mut ckpt = Checkpoint::open(&self.path)?;
        let plan = import::plan(&ckpt, format, &shapes.params, shapes.llm.lora.as_ref())?;
        for name in &plan.skipped {
            tracing::info!(tensor = %name, "skipped: the reference's unused `attention` module");
        }
        let bar = emollama::progress::bar(plan.nbytes(), "import", show);
        let tensors = import::read(&mut ckpt, &plan, &bar)?;
        bar.finish_and_clear();
        let mut report = serde_json::Map::new();
        report.insert("tensors".into(), serde_json::json!({ "in_file": plan.in_file, "imported": plan.entries.len(), "skipped": plan.skipped.len() }));
        report.insert("checkpoint_config_lora".into(), serde_json::json!(plan.config_lora.map(|(r, a)| serde_json::json!({ "lora_r": r, "lora_alpha": a }))));
        report.insert("epoch".into(), serde_json::json!(plan.epoch));
        report.insert(
            "mapping".into(),
            plan.entries.iter().map(|e| serde_json::json!({ "source": e.source, "name": e.ours, "shape": e.tensor.shape, "source_dtype": format!("{:?}", e.tensor.storage.elem) })).collect(),
        );
        report.insert("skipped".into(), serde_json::json!(plan.skipped));
        Ok(Imported { imported: plan.entries.len(), skipped: plan.skipped.len(), sha256: sha256_file(&self.path)?, tensors, report })
    }

    /// The VideoLLaMA2-AV repository: a snapshot directory, or `hf:ORG/NAME[@REVISION]`.
    fn read_videollama2_av(&self, recipe: &emollama::recipe::Recipe, registry: &emollama::registry::Registry, shapes: &emollama::plan::model::ModelShapes, show: bool) -> Result<Imported> {
        let text = self.path.to_string_lossy().to_string();
        let hub = match text.strip_prefix("hf:") {
            Some(spec) => {
                let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
                if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                    bail!("`{text}`: give the repository as hf:ORG/NAME or hf:ORG/NAME@REVISION");
                }
                Some(emollama::model::hub::HubRepo::new("videollama2-av import", repo, revision)?)
            }
            None if self.path.is_dir() => None,
            None => bail!("`{}` is not a directory: give the snapshot directory of the VideoLLaMA2-AV repository (`huggingface-cli download DAMO-NLP-SG/VideoLLaMA2.1-7B-AV --local-dir DIR`), or hf:DAMO-NLP-SG/VideoLLaMA2.1-7B-AV", self.path.display()),
        };
        let get = |file: &str, required: bool| -> Result<Option<PathBuf>, import::ImportError> {
            match &hub {
                Some(h) => Ok(h.get(file, required)?),
                None => {
                    let p = self.path.join(file);
                    match (p.is_file(), required) {
                        (true, _) => Ok(Some(p)),
                        (false, false) => Ok(None),
                        (false, true) => Err(import::ImportError::File { path: p.display().to_string(), detail: "missing from the snapshot".into() }),
                    }
                }
            }
        };
        let expect = av_expect(recipe, registry, shapes)?;
        let config = get(import_av::CONFIG_FILE, true)?.context("config.json")?;
        import_av::check_config(&config, &expect)?;
        let plan = import_av::plan(&get, &shapes.params)?;
        for (name, why) in &plan.skipped {
            tracing::debug!(tensor = %name, "skipped: {why}");
        }
        let bar = emollama::progress::bar(plan.nbytes(), "import", show);
        let tensors = import_av::read(&plan, &bar)?;
        bar.finish_and_clear();
        let mut files = vec![serde_json::json!({ "file": config.display().to_string(), "sha256": sha256_file(&config)? })];
        for (path, _) in &plan.files {
            files.push(serde_json::json!({ "file": path.display().to_string(), "sha256": sha256_file(path)? }));
        }
        // The recipe's header names the config's hash: the files' hashes are in import.json.
        let sha256 = sha256_file(&config)?;
        let mut report = serde_json::Map::new();
        report.insert("files".into(), serde_json::json!(files));
        report.insert("parts".into(), plan.part_sources.iter().map(|(p, f)| serde_json::json!({ "prefix": p, "from": f })).collect());
        report.insert("tensors".into(), serde_json::json!({ "imported": plan.entries.len(), "skipped": plan.skipped.len(), "llm_in_shards": plan.llm_tensors }));
        report.insert("mapping".into(), plan.entries.iter().map(|e| serde_json::json!({ "source": e.source, "name": e.ours, "shape": e.shape, "source_dtype": e.source_dtype })).collect());
        let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, why) in &plan.skipped {
            *skipped.entry(why).or_default() += 1;
        }
        report.insert("skipped".into(), skipped.iter().map(|(why, n)| serde_json::json!({ "tensors": n, "why": why })).collect());
        Ok(Imported { imported: plan.entries.len(), skipped: plan.skipped.len(), sha256, tensors, report })
    }
}

/// What the recipe's model says VideoLLaMA2's multimodal config keys must be.
fn av_expect(recipe: &emollama::recipe::Recipe, registry: &emollama::registry::Registry, shapes: &emollama::plan::model::ModelShapes) -> Result<AvExpect> {
    let width = |prefix: &str| shapes.encoders.iter().find(|e| e.prefix == prefix).map(|e| e.hidden_size);
    let (Some(mm_hidden_size), Some(mm_hidden_size_a)) = (width("encoder.video"), width("encoder.audio")) else {
        bail!("the recipe's model has no video and audio encoder of the VideoLLaMA2-AV family (`model.video_encoder`, `model.audio_encoder`)");
    };
    let num_frames = match recipe.data.frames {
        emollama::media::sample::FrameSampling::Midpoints { n } | emollama::media::sample::FrameSampling::Uniform { n } => Some(n),
        _ => None,
    };
    let (_, video) = registry.encoder(&recipe.model.video_encoder)?;
    let select_layer = match video.features.layers.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    Ok(AvExpect { hidden_size: shapes.llm.config.hidden_size, mm_hidden_size, mm_hidden_size_a, num_frames, select_layer })
}
