//! A whole run: data → model → stages → evaluation, into `runs/<name>-<timestamp>/`.
//!
//! The run directory holds `recipe.resolved.toml`, `run_info.json` (device, dtype, versions, git commit),
//! `tokenizer.json`, `log.jsonl` (per step: stage, loss, lr, gradient norms; validation points),
//! `metrics.json` (stages, best checkpoint, final evaluation), `predictions.jsonl`, `report.html` and
//! `checkpoints/` (`step-*` to resume from, `best-*`, and each stage's trained parameters).
//!
//! A run that stops before `metrics.json` is interrupted: running the same recipe again continues it
//! from its newest checkpoint (`runtime.auto_resume`, or `--resume`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use serde::Serialize;

use crate::data::loader::{DecodeSpec, Skipped};
use crate::data::{Sample, sources};
use crate::eval::runner::{EvalContext, EvalOutcome, EvalRequest, evaluate};
use crate::model::build::{BuildError, build_model};
use crate::model::llm_load::LlmSpec;
use crate::model::prompt::{ChatTemplate, Template};
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::LoadedRecipe;
use crate::registry::Registry;
use crate::storage::{cache_root, write_atomic};
use crate::feed::batch::{self, MediaLayout};
use crate::feed::inputs::{DecodedStore, Decoder, FeatureStore, MediaStore};
use crate::train::trainer::{StageReport, TrainContext, Validation, train};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Source(#[from] sources::SourceError),
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    #[error(transparent)]
    Tokenizer(#[from] crate::model::tokenizer::TokenizerError),
    #[error(transparent)]
    Build(#[from] crate::model::build::BuildError),
    #[error(transparent)]
    Train(#[from] crate::train::trainer::TrainError),
    #[error(transparent)]
    Eval(#[from] crate::eval::runner::EvalError),
    #[error(transparent)]
    Write(#[from] crate::storage::WriteError),
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io { path: path.display().to_string(), source }
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub data_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub total_s: f64,
}

/// What a run produced (also written as `metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub recipe: String,
    pub use_av: bool,
    pub train_samples: usize,
    /// Samples whose file had no audio stream (decoded as silence).
    pub audio_missing: usize,
    pub stages: Vec<StageReport>,
    pub eval: Option<EvalOutcome>,
    /// The best validation point, whose parameters the evaluation used when `validation.select_best`.
    pub best: Option<crate::train::checkpoint::BestCheckpoint>,
    /// Hits and misses of the frozen-encoder feature cache (absent when it is not used).
    pub feature_cache: Option<crate::data::feature_cache::CacheStats>,
    pub skipped: Vec<Skipped>,
    pub timings: Timings,
}

fn create_run_dir(runs_dir: &Path, name: &str) -> Result<PathBuf, RunError> {
    std::fs::create_dir_all(runs_dir).map_err(io(runs_dir))?;
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    for k in 0..1000 {
        let dir = if k == 0 { runs_dir.join(format!("{name}-{stamp}")) } else { runs_dir.join(format!("{name}-{stamp}-{k}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    Err(RunError::Other(format!("could not create a fresh run directory under `{}`", runs_dir.display())))
}

/// Texts the word-level tokenizer must cover: every prompt shape, instruction, label and training answer.
fn tokenizer_corpus(loaded: &LoadedRecipe, train: &[&Sample], labels: &[String], template: &ChatTemplate) -> Vec<String> {
    let r = &loaded.recipe;
    let mut tasks: BTreeSet<&str> = r.stages.iter().flat_map(|s| s.tasks.iter().chain(s.data.iter().flat_map(|d| d.tasks.iter())).map(String::as_str)).collect();
    tasks.insert(r.eval.task.as_str());
    if !r.validation.task.is_empty() {
        tasks.insert(r.validation.task.as_str());
    }
    let mut corpus: Vec<String> = labels.to_vec();
    let extra: Vec<&String> = r.stages.iter().flat_map(|s| s.data.iter().flat_map(|d| d.instructions.values().flatten())).collect();
    for sample in train {
        for task in &tasks {
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

/// How `run` picks its run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Continue the newest interrupted run of the same recipe when `runtime.auto_resume` is on.
    Auto,
    /// Always start a new run directory.
    Fresh,
    /// Continue the newest interrupted run of the same recipe; an error if there is none.
    Latest,
    /// Continue this run directory.
    Dir(PathBuf),
}

/// The canonical text of a recipe: what `recipe.resolved.toml` holds and what a resume compares.
fn canonical(recipe: &crate::recipe::Recipe) -> Result<String, RunError> {
    toml::to_string_pretty(recipe).map_err(|e| RunError::Other(format!("serialising the recipe: {e}")))
}

/// A run directory that was started but did not finish (no `metrics.json`) with this exact recipe.
fn interrupted_runs(runs_dir: &Path, name: &str, recipe: &crate::recipe::Recipe) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(runs_dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-"))))
        .filter(|p| !p.join("metrics.json").exists() && same_recipe(p, recipe))
        .collect();
    found.sort();
    found
}

fn same_recipe(dir: &Path, recipe: &crate::recipe::Recipe) -> bool {
    std::fs::read_to_string(dir.join("recipe.resolved.toml"))
        .ok()
        .and_then(|t| toml::from_str::<crate::recipe::Recipe>(&t).ok())
        .is_some_and(|saved| &saved == recipe)
}

/// Takes the run directory's lock (held until the process ends, also when it is killed), so two
/// processes never write one run directory. `None` when another process holds it.
fn lock_run_dir(dir: &Path) -> Result<Option<std::fs::File>, RunError> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// The run directory, whether it is resumed, and its lock.
fn choose_run_dir(r: &crate::recipe::Recipe, resume: &Resume) -> Result<(PathBuf, bool, std::fs::File), RunError> {
    let (dir, resuming) = pick_run_dir(r, resume)?;
    match lock_run_dir(&dir)? {
        Some(lock) => Ok((dir, resuming, lock)),
        None if matches!(resume, Resume::Auto) => {
            tracing::warn!(dir = %dir.display(), "the interrupted run is in use by another process; starting a new run");
            let dir = create_run_dir(Path::new(&r.runtime.runs_dir), &r.name)?;
            let lock = lock_run_dir(&dir)?.ok_or_else(|| RunError::Other(format!("could not lock the new run directory `{}`", dir.display())))?;
            Ok((dir, false, lock))
        }
        None => Err(RunError::Other(format!("run directory `{}` is in use by another emollama process", dir.display()))),
    }
}

fn pick_run_dir(r: &crate::recipe::Recipe, resume: &Resume) -> Result<(PathBuf, bool), RunError> {
    let runs_dir = Path::new(&r.runtime.runs_dir);
    match resume {
        Resume::Dir(d) => {
            if !d.join("recipe.resolved.toml").exists() {
                return Err(RunError::Other(format!("`{}` is not a run directory (no recipe.resolved.toml)", d.display())));
            }
            if !same_recipe(d, r) {
                return Err(RunError::Other(format!(
                    "`{}` was made by a different recipe; resume it with its own: `emollama run --resume {}` (no recipe argument), or start a new run without --resume",
                    d.display(),
                    d.display()
                )));
            }
            Ok((d.clone(), true))
        }
        Resume::Latest => match interrupted_runs(runs_dir, &r.name, r).pop() {
            Some(d) => Ok((d, true)),
            None => Err(RunError::Other(format!(
                "no interrupted run of recipe `{}` with these settings under `{}`; run without --resume to start one",
                r.name,
                runs_dir.display()
            ))),
        },
        Resume::Auto if r.runtime.auto_resume => match interrupted_runs(runs_dir, &r.name, r).pop() {
            Some(d) => {
                tracing::warn!(dir = %d.display(), "continuing an interrupted run of this recipe (start anew with --fresh or runtime.auto_resume=false)");
                Ok((d, true))
            }
            None => Ok((create_run_dir(runs_dir, &r.name)?, false)),
        },
        _ => Ok((create_run_dir(runs_dir, &r.name)?, false)),
    }
}

/// Keeps the log lines up to `global_step` (a resumed run writes the later ones again).
fn truncate_log(path: &Path, global_step: usize) -> Result<(), RunError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("global_step").and_then(|g| g.as_u64())).is_some_and(|g| g as usize <= global_step))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(write_atomic(path, kept.as_bytes())?)
}

/// The device, dtype, versions and source commit of a run (`run_info.json`).
fn run_info(r: &crate::recipe::Recipe, threads: usize, recipe_sha256: &str, resumed_from: Option<&Path>) -> serde_json::Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    serde_json::json!({
        "device": r.runtime.device,
        "dtype": r.runtime.dtype,
        "threads": threads,
        "emollama_version": env!("CARGO_PKG_VERSION"),
        "candle_version": crate::CANDLE_VERSION,
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "recipe_sha256": recipe_sha256,
        "started": chrono::Local::now().to_rfc3339(),
        "resumed_from": resumed_from.map(|p| p.display().to_string()),
        "inference_precision": r.runtime.resolved_inference_precision().name(),
        "inference_backend": crate::accel::backend(),
    })
}

/// The device a recipe asks for, if this build has it.
fn device_for(r: &crate::recipe::Recipe) -> Result<Device, RunError> {
    let dev = r.runtime.device.as_str();
    if dev == "cpu" {
        if r.runtime.dtype != "f32" {
            return Err(RunError::Other(format!(
                "runtime.dtype = `{}` needs a GPU: training on the CPU is f32 (set runtime.dtype = \"f32\" or runtime.device = \"cuda\")",
                r.runtime.dtype
            )));
        }
        return Ok(Device::Cpu);
    }
    if let Some(rest) = dev.strip_prefix("cuda") {
        let ordinal: usize = rest.strip_prefix(':').map(|n| n.parse().unwrap_or(usize::MAX)).unwrap_or(0);
        if ordinal == usize::MAX {
            return Err(RunError::Other(format!("runtime.device = `{dev}`: expected `cuda` or `cuda:N`")));
        }
        #[cfg(feature = "cuda")]
        return Device::new_cuda(ordinal).map_err(|e| RunError::Other(format!("runtime.device = `{dev}`: {e}")));
        #[cfg(not(feature = "cuda"))]
        return Err(RunError::Other(format!(
            "runtime.device = `{dev}` (GPU {ordinal}): this binary was built without CUDA; rebuild with `cargo build --release --features cuda`"
        )));
    }
    Err(RunError::Other(format!("runtime.device = `{dev}`: expected `cpu`, `cuda` or `cuda:N`")))
}

/// Where `eval.checkpoint` points: the parameters file, and the run directory's tokenizer when there is one.
pub fn eval_checkpoint(path: &Path) -> Result<(PathBuf, Option<PathBuf>), RunError> {
    let bad = |why: &str| RunError::Other(format!("eval.checkpoint `{}`: {why}", path.display()));
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
    let tensors = crate::train::checkpoint::load_tensors(dir, false, device).map_err(|e| RunError::Other(e.to_string()))?;
    assign_params(varmap, &tensors, dir, &format!("checkpoint `{}`", dir.display()))
}

/// Writes `tensors` into the model's parameters of the same names; a tensor the model does not have is
/// an error about `what`.
fn assign_params(varmap: &VarMap, tensors: &std::collections::HashMap<String, candle_core::Tensor>, source: &Path, what: &str) -> Result<(), RunError> {
    let vars: Vec<(String, candle_core::Var)> =
        crate::train::optim::select(varmap, &["*".to_string()]).into_iter().filter(|(n, _)| tensors.contains_key(n)).collect();
    if vars.len() != tensors.len() {
        return Err(RunError::Other(format!("{what} holds parameters this model does not have")));
    }
    crate::train::trainer::assign(&vars, tensors, &source.display().to_string()).map_err(RunError::Other)
}

/// Runs the recipe end to end. `show_progress` controls progress bars; `resume` how the run
/// directory is chosen (a resumed run continues from its newest checkpoint that verifies).
pub fn run(loaded: &LoadedRecipe, registry: &Registry, show_progress: bool) -> Result<RunSummary, RunError> {
    run_with(loaded, registry, show_progress, &Resume::Auto)
}

pub fn run_with(loaded: &LoadedRecipe, registry: &Registry, show_progress: bool, resume: &Resume) -> Result<RunSummary, RunError> {
    use sha2::Digest;
    let t0 = Instant::now();
    let r = &loaded.recipe;
    let device = device_for(r)?;
    let text = canonical(r)?;
    let recipe_sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let (run_dir, resuming, _lock) = choose_run_dir(r, resume)?;
    tracing::info!(dir = %run_dir.display(), resuming, "run directory");
    let ckpt_root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_root).map_err(io(&ckpt_root))?;
    let found = if resuming { crate::train::checkpoint::latest(&ckpt_root) } else { None };
    let mut state = match &found {
        Some(f) if f.state.recipe_sha256 != recipe_sha256 => {
            return Err(RunError::Other(format!("checkpoint `{}` was written by another recipe; start a new run with --fresh", f.dir.display())));
        }
        Some(f) => {
            tracing::info!(checkpoint = %f.dir.display(), stage = f.state.stage_index, global_step = f.state.global_step, "resuming");
            f.state.clone()
        }
        None => crate::train::checkpoint::TrainState::new(recipe_sha256.clone()),
    };
    let best_keep = state.best.as_ref().and_then(|b| Path::new(&b.checkpoint).file_name().map(|n| n.to_string_lossy().to_string()));
    crate::train::checkpoint::drop_newer(&ckpt_root, state.global_step).map_err(|e| RunError::Other(e.to_string()))?;
    crate::train::checkpoint::prune(&ckpt_root, usize::MAX, best_keep.as_deref()).map_err(|e| RunError::Other(e.to_string()))?;
    write_atomic(&run_dir.join("recipe.resolved.toml"), text.as_bytes())?;
    let log_path = run_dir.join("log.jsonl");
    if resuming {
        truncate_log(&log_path, state.global_step)?;
    } else {
        let _ = std::fs::remove_file(&log_path);
    }
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    let threads = if r.runtime.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { r.runtime.threads };
    crate::accel::set_inference(r.runtime.resolved_inference_precision(), threads);
    let info = run_info(r, threads, &recipe_sha256, found.as_ref().map(|f| f.dir.as_path()));
    write_atomic(&run_dir.join("run_info.json"), &serde_json::to_vec_pretty(&info).map_err(|e| RunError::Other(e.to_string()))?)?;

    // Data: every dataset the recipe names, with the splits it uses.
    let (_, card) = registry.dataset(&r.data.dataset)?;
    let cache = cache_root(&r.runtime.cache_dir);
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for stage in &r.stages {
        if stage.data.is_empty() {
            wanted.insert((r.data.dataset.clone(), "train".into()));
        }
        for d in &stage.data {
            wanted.insert((if d.dataset.is_empty() { r.data.dataset.clone() } else { d.dataset.clone() }, d.split.clone()));
        }
    }
    if r.validation.enabled && !r.stages.is_empty() {
        wanted.insert((r.data.dataset.clone(), r.validation.split.clone()));
    }
    if r.eval.enabled {
        wanted.insert((r.data.dataset.clone(), r.eval.split.clone()));
    }
    let storage = crate::storage::Storage::new(r.storage.clone(), &cache).map_err(|e| RunError::Other(e.to_string()))?;
    let mut pool: Vec<Sample> = Vec::new();
    let mut pool_dataset: Vec<String> = Vec::new();
    for name in wanted.iter().map(|(d, _)| d.clone()).collect::<BTreeSet<_>>() {
        let (card_path, c) = registry.dataset(&name)?;
        let root = crate::data::dataset::dataset_root(c, card_path, &r.data.roots)?;
        for s in crate::data::dataset::load_dataset(c, root.as_ref(), &storage, &r.data.synth, &cache, show_progress)? {
            if wanted.contains(&(name.clone(), s.split.clone())) {
                pool.push(s);
                pool_dataset.push(name.clone());
            }
        }
    }
    let spec = DecodeSpec {
        sampling: r.data.frames.clone(),
        width: r.data.width,
        height: r.data.height,
        audio_len: (r.data.audio_seconds * crate::media::AUDIO_SAMPLE_RATE as f32).round() as usize,
        on_error: r.data.on_error,
        threads,
        show_progress,
        storage: storage.clone(),
        face: match &r.front_end.face {
            Some(opts) => {
                let fe = crate::media::face::FaceFrontEnd::new(opts).map_err(|e| RunError::Other(e.to_string()))?;
                tracing::info!(detector = %opts.detector, scorer = %opts.scorer, peak = ?opts.peak, missing = ?opts.missing, "face front end");
                Some(std::sync::Arc::new(fe))
            }
            None => None,
        },
        global_frame: crate::media::GlobalFrame::from_name(&r.model.global_frame).unwrap_or(crate::media::GlobalFrame::First),
    };
    let cached = r.model.use_av && r.runtime.feature_cache && !r.model.global_encoder.is_empty();
    let data_s = t0.elapsed().as_secs_f64();

    // Model.
    let mut llm = LlmSpec::resolve(registry, &r.model.llm).map_err(|e| BuildError::from(Box::new(e)))?;
    let kind = match r.prompt.template.as_str() {
        "auto" => llm.template,
        name => Template::from_name(name).ok_or_else(|| RunError::Other(format!("unknown template `{name}`")))?,
    };
    let template = llm.chat_template(kind);
    tracing::info!(llm = %llm.name, weights = %llm.describe(), template = ?kind, "LLM");
    let saved_tokenizer = run_dir.join("tokenizer.json");
    let eval_from = if r.eval.checkpoint.is_empty() { None } else { Some(eval_checkpoint(Path::new(&r.eval.checkpoint))?) };
    let tokenizer = match llm.tokenizer().map_err(|e| BuildError::from(Box::new(e)))? {
        Some(t) => t,
        None if resuming && saved_tokenizer.exists() => TextTokenizer::from_file(&saved_tokenizer)?,
        None if eval_from.as_ref().is_some_and(|(_, t)| t.is_some()) => {
            TextTokenizer::from_file(eval_from.as_ref().and_then(|(_, t)| t.as_deref()).unwrap_or(&saved_tokenizer))?
        }
        None => {
            let train: Vec<&Sample> = pool.iter().filter(|s| s.split == "train").collect();
            let corpus = tokenizer_corpus(loaded, &train, &card.labels, &template);
            TextTokenizer::from_corpus(corpus.iter().map(String::as_str))?
        }
    };
    tokenizer.save(&saved_tokenizer)?;
    if llm.config.vocab_size == 0 {
        llm.config.vocab_size = tokenizer.vocab_size();
    }
    let varmap = VarMap::new();
    let built = build_model(r, registry, &llm, &tokenizer, &varmap, r.seed, &device)?;
    let layout = MediaLayout { width: r.data.width as usize, height: r.data.height as usize, mean: built.pixel_mean, std: built.pixel_std };
    tracing::info!(vocab = tokenizer.vocab_size(), samples = pool.len(), "model built");
    // Initial values of what an `init = "none"` stage resets (deep copies: optimiser steps write in place).
    let reset_globs: Vec<String> = r.stages.iter().filter(|s| s.init == "none").flat_map(|s| s.trainable.iter().cloned()).collect();
    let mut initial = std::collections::HashMap::new();
    for (n, v) in crate::train::optim::select(&varmap, &reset_globs) {
        initial.insert(n, v.as_tensor().copy().map_err(|e| RunError::Other(e.to_string()))?);
    }
    if let Some(f) = &found {
        load_params(&varmap, &f.dir, &device)?;
    }
    if let Some((params, _)) = &eval_from {
        let tensors = candle_core::safetensors::load(params, &device).map_err(|e| RunError::Other(format!("eval.checkpoint `{}`: {e}", params.display())))?;
        assign_params(&varmap, &tensors, params, &format!("eval.checkpoint `{}` (another recipe's checkpoint?)", params.display()))?;
        tracing::info!(params = %params.display(), tensors = tensors.len(), "evaluating checkpoint");
    }

    let store = if !r.model.use_av {
        MediaStore::Off
    } else if cached {
        let settings = feature_settings(r, registry)?;
        let cache = crate::data::feature_cache::FeatureCache::new(&cache, &settings);
        tracing::info!(dir = %cache.dir().display(), "frozen-encoder feature cache");
        MediaStore::Cached(Box::new(FeatureStore { cache, model: &built.model, decoder: Decoder::new(spec.clone()), layout: layout.clone() }))
    } else {
        MediaStore::Decoded(Box::new(DecodedStore::new(Decoder::new(spec.clone()), layout.clone(), pool.len())))
    };
    // Unreadable clips are found (and skipped, by `data.on_error`) when first used.
    let split_of = |split: &str| -> Vec<usize> { (0..pool.len()).filter(|&i| pool_dataset[i] == r.data.dataset && pool[i].split == split).collect() };

    // Stages.
    let t_train = Instant::now();
    let validation = (r.validation.enabled && !r.stages.is_empty()).then(|| Validation { samples: split_of(&r.validation.split), labels: &card.labels });
    if state.stage_index < r.stages.len() {
        let mut ctx = TrainContext {
            model: &built.model,
            varmap: &varmap,
            tokenizer: &tokenizer,
            pool: &pool,
            pool_dataset: &pool_dataset,
            store: &store,
            recipe: r,
            template: template.clone(),
            device: &device,
            run_dir: &run_dir,
            log: &mut log,
            show_progress,
            validation,
            initial,
            resume_from: found.as_ref().map(|f| f.dir.clone()),
            after_stage: &|| {
                if let Err(e) = crate::report::write_report(&run_dir) {
                    tracing::warn!(error = %e, "run report not written");
                }
            },
        };
        state = train(&mut ctx, state)?;
    }
    let train_s = t_train.elapsed().as_secs_f64();
    if let (true, Some(best)) = (r.validation.select_best, &state.best) {
        tracing::info!(checkpoint = %best.checkpoint, metric = %best.metric, value = best.value, "evaluating with the best validation checkpoint");
        load_params(&varmap, &run_dir.join(&best.checkpoint), &device)?;
    }
    if let Some(lora) = &built.lora {
        let params: Vec<(String, candle_core::Tensor)> =
            crate::train::optim::select(&varmap, &["llm.*.lora_*".to_string()]).into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let dir = run_dir.join("adapter");
        let n = crate::model::lora::save_peft(&dir, lora, &params, "llm.").map_err(|e| RunError::Other(e.to_string()))?;
        tracing::info!(tensors = n, dir = %dir.display(), "LoRA adapter saved (PEFT format)");
    }

    // Evaluation.
    let t_eval = Instant::now();
    let eval = if r.eval.enabled {
        let ctx = EvalContext {
            model: &built.model,
            tokenizer: &tokenizer,
            recipe: r,
            template,
            device: &device,
            labels: &card.labels,
            show_progress,
            pool: &pool,
            store: &store,
        };
        let req = EvalRequest { split: &r.eval.split, task: &r.eval.task, limit: r.eval.limit, predictions: &run_dir.join("predictions.jsonl") };
        let items = split_of(&r.eval.split);
        let limit = if r.eval.limit > 0 { r.eval.limit.min(items.len()) } else { items.len() };
        store.warm(&pool, &items[..limit], &device, "decode:eval", show_progress).map_err(|e| RunError::Other(e.to_string()))?;
        Some(evaluate(&ctx, &items, &req)?)
    } else {
        None
    };
    let skipped = store.skipped();
    let audio_missing = store.audio_missing();
    if audio_missing > 0 {
        tracing::warn!(count = audio_missing, "samples without an audio stream were decoded as silence");
    }
    if !skipped.is_empty() {
        let lines: String = skipped.iter().filter_map(|x| serde_json::to_string(x).ok()).map(|l| l + "\n").collect();
        write_atomic(&run_dir.join("skipped.jsonl"), lines.as_bytes())?;
        tracing::warn!(count = skipped.len(), list = %run_dir.join("skipped.jsonl").display(), "samples skipped");
    }
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        recipe: loaded.path.display().to_string(),
        use_av: r.model.use_av,
        train_samples: pool.iter().filter(|s| s.split == "train").count(),
        audio_missing,
        stages: state.reports.clone(),
        eval,
        best: state.best.clone(),
        feature_cache: store.cache_stats(),
        skipped,
        timings: Timings { data_s, train_s, eval_s: t_eval.elapsed().as_secs_f64(), total_s: t0.elapsed().as_secs_f64() },
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| RunError::Other(e.to_string()))?;
    write_atomic(&run_dir.join("metrics.json"), &json)?;
    match crate::report::write_report(&run_dir) {
        Ok(files) => tracing::info!(report = %files.html.display(), "run report"),
        Err(e) => tracing::warn!(error = %e, "run report not written"),
    }
    Ok(summary)
}

/// Everything besides the media that the frozen encoders' outputs depend on (the feature cache key):
/// each encoder's manifest text (architecture, config, weights reference), the seed of random weights,
/// the preprocessing and the global view's frame.
fn feature_settings(r: &crate::recipe::Recipe, registry: &Registry) -> Result<String, RunError> {
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

/// The end-of-run table.
pub fn summary_table(s: &RunSummary) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["what", "value"]);
    for st in &s.stages {
        t.add_row(vec![format!("stage {}", st.name), format!("{} steps, loss {:.3} → {:.3}, {:.0} s", st.steps, st.first_loss, st.final_loss, st.seconds)]);
    }
    if let Some(b) = &s.best {
        t.add_row(vec!["best validation".to_string(), format!("{} {:.4} at stage {} step {} ({})", b.metric, b.value, b.stage, b.step, b.checkpoint)]);
    }
    if let Some(c) = &s.feature_cache {
        t.add_row(vec!["feature cache".to_string(), format!("{} hits, {} misses", c.hits, c.misses)]);
    }
    if let Some(e) = &s.eval {
        t.add_row(vec![format!("{} ({} task, n={})", e.split, e.task, e.report.n), String::new()]);
        t.add_row(vec!["weighted F1".to_string(), format!("{:.4}", e.report.weighted_f1)]);
        t.add_row(vec!["accuracy".to_string(), format!("{:.4}", e.report.accuracy)]);
        t.add_row(vec!["macro F1".to_string(), format!("{:.4}", e.report.macro_f1)]);
        t.add_row(vec!["unparsed answers".to_string(), e.unparsed.to_string()]);
    }
    t.add_row(vec!["audio/visual tokens".to_string(), if s.use_av { "on" } else { "off (text-only ablation)" }.to_string()]);
    if !s.skipped.is_empty() {
        t.add_row(vec!["skipped samples".to_string(), s.skipped.len().to_string()]);
    }
    t.add_row(vec!["time".to_string(), format!("data {:.0} s, train {:.0} s, eval {:.0} s, total {:.0} s", s.timings.data_s, s.timings.train_s, s.timings.eval_s, s.timings.total_s)]);
    t.add_row(vec!["run directory".to_string(), s.run_dir.display().to_string()]);
    let mut out = t.to_string();
    if let Some(e) = &s.eval {
        out.push_str("\nconfusion matrix (rows: truth, columns: prediction)\n");
        let mut cm = comfy_table::Table::new();
        cm.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        let mut header = vec![String::new()];
        header.extend(e.report.labels.iter().cloned());
        cm.set_header(header);
        for (label, row) in e.report.labels.iter().zip(&e.report.confusion_matrix) {
            let mut cells = vec![label.clone()];
            cells.extend(row.iter().map(|v| v.to_string()));
            cm.add_row(cells);
        }
        out.push_str(&cm.to_string());
    }
    out
}
