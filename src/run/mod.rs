//! A whole run, in phases: open the run directory ([`dir`]: lock, resume, log), load the data
//! ([`data`]), build the model ([`model`]), train the stages, evaluate, finish (`metrics.json`, the report).
//! Writes `runs/<name>-<timestamp>/`.
//!
//! The run directory holds `recipe.resolved.toml`, `run_info.json` (device, dtype, versions, git commit),
//! `tokenizer.json`, `log.jsonl` (per step: stage, loss, lr, gradient norms; validation points),
//! `metrics.json` (stages, best checkpoint, final evaluation), `predictions.jsonl`, `report.html` and
//! `checkpoints/` (`step-*` to resume from, `best-*`, and each stage's trained parameters).
//!
//! A run that stops before `metrics.json` is interrupted: running the same recipe again continues it
//! from its newest checkpoint (`runtime.auto_resume`, or `--resume`).

pub mod data;
pub mod dir;
pub mod model;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use self::data::RunData;
use self::dir::RunDir;
use self::model::RunModel;
use crate::data::loader::Skipped;
use crate::dist::Group;
use crate::data::sources;
use crate::eval::runner::{EvalContext, EvalOutcome, EvalRequest, evaluate_in};
use crate::feed::inputs::MediaStore;
use crate::recipe::{LoadedRecipe, Recipe};
use crate::registry::Registry;
use crate::storage::write_atomic;
use crate::train::checkpoint::{BestCheckpoint, StageReport, TrainState};
use crate::train::trainer::{TrainContext, Validation, train};

pub use self::model::eval_checkpoint;

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
    Face(#[from] crate::media::face::FaceError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Write(#[from] crate::storage::WriteError),
    #[error(transparent)]
    Tokenizer(#[from] crate::model::tokenizer::TokenizerError),
    #[error(transparent)]
    Build(#[from] crate::model::build::BuildError),
    #[error(transparent)]
    Adapter(#[from] crate::model::lora::AdapterError),
    #[error(transparent)]
    Input(#[from] crate::feed::inputs::InputError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error("prompt.transcript = \"asr\": {0}")]
    Asr(#[from] crate::model::asr::AsrError),
    #[error(transparent)]
    Checkpoint(#[from] crate::train::checkpoint::CheckpointError),
    #[error(transparent)]
    Train(#[from] crate::train::trainer::TrainError),
    #[error(transparent)]
    Eval(#[from] crate::eval::runner::EvalError),
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("serialising the recipe: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("could not create a fresh run directory under `{0}`")]
    NoFreshDir(String),
    #[error("run directory `{0}` is in use by another emollama process")]
    InUse(String),
    #[error("`{0}` is not a run directory (no recipe.resolved.toml)")]
    NotARunDir(String),
    #[error("`{0}` was made by a different recipe; resume it with its own: `emollama run --resume {0}` (no recipe argument), or start a new run without --resume")]
    DifferentRecipe(String),
    #[error("no interrupted run of recipe `{name}` with these settings under `{runs_dir}`; run without --resume to start one")]
    NoInterruptedRun { name: String, runs_dir: String },
    #[error("checkpoint `{0}` was written by another recipe; start a new run with --fresh")]
    ForeignCheckpoint(String),
    #[error("runtime.device = `{device}`: {detail}")]
    Device { device: String, detail: String },
    #[error("eval.checkpoint `{path}`: {detail}")]
    EvalCheckpoint { path: String, detail: String },
    #[error("{0} holds parameters this model does not have")]
    ForeignParams(String),
    #[error("{0}")]
    Params(String),
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
    /// Rank 0 (or the only process); another rank of a group prints no summary.
    #[serde(skip)]
    pub leader: bool,
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

/// Runs the recipe end to end, phase by phase. `show_progress` controls progress bars; `resume` how the run
/// directory is chosen (a resumed run continues from its newest checkpoint that verifies).
pub fn run(loaded: &LoadedRecipe, registry: &Registry, show_progress: bool, resume: &Resume) -> Result<RunSummary, RunError> {
    let t0 = Instant::now();
    let r = &loaded.recipe;
    // Data-parallel ranks (one process unless a launcher started a group): rank 0 opens and writes the
    // run directory, the others follow it.
    let group = Group::join(r.runtime.distributed, &r.runtime.device, r.runtime.distributed_timeout_s)?;
    let device = model::device_for(r)?;
    let show_progress = show_progress && group.is_leader();
    // The others take rank 0's directory and the checkpoint it resumes from (its verified state), so
    // every rank continues from the same point without scanning the checkpoints again.
    let mut run_dir = if group.is_leader() {
        let d = RunDir::open(r, loaded.lock.as_ref(), resume)?;
        group.broadcast(&(d.dir.clone(), d.resuming, d.found.as_ref().map(|f| f.dir.clone()), d.state.clone()), "the run directory")?;
        d
    } else {
        let blank = (PathBuf::new(), false, None::<PathBuf>, crate::train::checkpoint::TrainState::new(String::new()));
        let (dir, resuming, found, state) = group.broadcast(&blank, "the run directory")?;
        RunDir::follow(r, dir, resuming, group.rank, found.map(|dir| crate::train::checkpoint::Found { dir, state: state.clone() }), state)?
    };
    if group.is_distributed() && group.is_leader() {
        tracing::info!(ranks = group.world, library = group.library(), "data-parallel run: rank 0 writes the run directory, rank K logs to rank-K.log");
    }
    // Rank 0 first: generated data and downloads land once, the others then read them from the cache.
    if !group.is_leader() {
        group.barrier("loading the data")?;
    }
    let data = RunData::load(r, registry, run_dir.threads, show_progress)?;
    if group.is_leader() {
        group.barrier("loading the data")?;
    }
    let data_s = t0.elapsed().as_secs_f64();
    let model = RunModel::build(loaded, registry, &run_dir, &data, &device)?;
    // Unreadable clips are found (and skipped, by `data.on_error`) when first used.
    let store = model.media_store(r, registry, &data)?;

    let t_train = Instant::now();
    let state = train_stages(r, &mut run_dir, &data, &model, &store, &device, show_progress, &group)?;
    group.barrier("the end of training")?;
    // Rank 0 chose the best validation point (it scored the gathered shards); every rank evaluates with it.
    let best = group.broadcast(&state.best, "the best checkpoint")?;
    select_and_export(r, &run_dir.dir, &model, best.as_ref(), &device, group.is_leader())?;
    let train_s = t_train.elapsed().as_secs_f64();

    let t_eval = Instant::now();
    let eval = if r.eval.enabled { evaluate_split(r, &run_dir.dir, &data, &model, &store, &device, show_progress, &group)? } else { None };
    let eval_s = t_eval.elapsed().as_secs_f64();
    if !group.is_leader() {
        // The run's records are rank 0's.
        let timings = Timings { data_s, train_s, eval_s, total_s: t0.elapsed().as_secs_f64() };
        return Ok(RunSummary { leader: false, ..summary_of(loaded, &run_dir, &data, &state, &store, None, timings) });
    }

    let summary = summary_of(loaded, &run_dir, &data, &state, &store, eval, Timings { data_s, train_s, eval_s, total_s: t0.elapsed().as_secs_f64() });
    finish(&run_dir.dir, &summary)?;
    Ok(summary)
}

fn summary_of(loaded: &LoadedRecipe, run_dir: &RunDir, data: &RunData, state: &TrainState, store: &MediaStore, eval: Option<EvalOutcome>, timings: Timings) -> RunSummary {
    RunSummary {
        run_dir: run_dir.dir.clone(),
        recipe: loaded.path.display().to_string(),
        use_av: loaded.recipe.model.use_av,
        train_samples: data.pool.iter().filter(|s| s.split == "train").count(),
        audio_missing: store.audio_missing(),
        stages: state.reports.clone(),
        eval,
        best: state.best.clone(),
        feature_cache: store.cache_stats(),
        skipped: store.skipped(),
        timings,
        leader: true,
    }
}

/// The stages still to run (all of them for a new run), each checkpointed; the report is redrawn after each.
#[allow(clippy::too_many_arguments)]
fn train_stages(r: &Recipe, run: &mut RunDir, data: &RunData, model: &RunModel, store: &MediaStore, device: &Device, show_progress: bool, group: &Group) -> Result<TrainState, RunError> {
    let state = run.state.clone();
    if state.stage_index >= r.stages.len() {
        return Ok(state);
    }
    let validation = (r.validation.enabled && !r.stages.is_empty()).then(|| Validation { samples: data.split_of(r, &r.validation.split), labels: &data.labels });
    let dir = run.dir.clone();
    let mut ctx = TrainContext {
        model: &model.built.model,
        varmap: &model.varmap,
        tokenizer: &model.tokenizer,
        pool: &data.pool,
        pool_dataset: &data.pool_dataset,
        store,
        recipe: r,
        template: model.template.clone(),
        device,
        run_dir: &dir,
        log: &mut run.log,
        show_progress,
        validation,
        initial: model.initial.clone(),
        resume_from: run.found.as_ref().map(|f| f.dir.clone()),
        group,
        after_stage: &|| {
            if let Err(e) = crate::report::write_report(&dir) {
                tracing::warn!(error = %e, "run report not written");
            }
        },
    };
    Ok(train(&mut ctx, state)?)
}

/// After training: the best validation checkpoint's parameters when `validation.select_best`, and the LoRA
/// adapter in PEFT's layout (only when a stage trained it; an evaluation-only run has nothing new to export).
fn select_and_export(r: &Recipe, run_dir: &Path, model: &RunModel, best: Option<&BestCheckpoint>, device: &Device, leader: bool) -> Result<(), RunError> {
    if let (true, Some(best)) = (r.validation.select_best, best) {
        tracing::info!(checkpoint = %best.checkpoint, metric = %best.metric, value = best.value, "evaluating with the best validation checkpoint");
        model.load_checkpoint(&run_dir.join(&best.checkpoint), device)?;
    }
    if let (true, false, Some(lora)) = (leader, r.stages.is_empty(), &model.built.lora) {
        let params: Vec<(String, candle_core::Tensor)> =
            crate::train::optim::select(&model.varmap, &["llm.*.lora_*".to_string()]).into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let dir = run_dir.join("adapter");
        let n = crate::model::lora::save_peft(&dir, lora, &params, "llm.")?;
        tracing::info!(tensors = n, dir = %dir.display(), "LoRA adapter saved (PEFT format)");
    }
    Ok(())
}

/// The final evaluation over `eval.split` (its media decoded first, with a progress bar), sharded over
/// the ranks of a group: the outcome on rank 0, `None` on the others.
#[allow(clippy::too_many_arguments)]
fn evaluate_split(r: &Recipe, run_dir: &Path, data: &RunData, model: &RunModel, store: &MediaStore, device: &Device, show_progress: bool, group: &Group) -> Result<Option<EvalOutcome>, RunError> {
    let ctx = EvalContext {
        model: &model.built.model,
        tokenizer: &model.tokenizer,
        recipe: r,
        template: model.template.clone(),
        device,
        labels: &data.labels,
        show_progress,
        pool: &data.pool,
        store,
    };
    let req = EvalRequest { split: &r.eval.split, task: r.eval.task, limit: r.eval.limit, predictions: &run_dir.join("predictions.jsonl"), warm: Some("decode:eval") };
    let items = data.split_of(r, &r.eval.split);
    Ok(evaluate_in(&ctx, &items, &req, group)?)
}

/// The run's last records: skipped samples, `metrics.json`, the report.
fn finish(run_dir: &Path, summary: &RunSummary) -> Result<(), RunError> {
    if summary.audio_missing > 0 {
        tracing::warn!(count = summary.audio_missing, "samples without an audio stream were decoded as silence");
    }
    if !summary.skipped.is_empty() {
        let lines: String = summary.skipped.iter().filter_map(|x| serde_json::to_string(x).ok()).map(|l| l + "\n").collect();
        write_atomic(&run_dir.join("skipped.jsonl"), lines.as_bytes())?;
        tracing::warn!(count = summary.skipped.len(), list = %run_dir.join("skipped.jsonl").display(), "samples skipped");
    }
    write_atomic(&run_dir.join("metrics.json"), &serde_json::to_vec_pretty(summary)?)?;
    match crate::report::write_report(run_dir) {
        Ok(files) => tracing::info!(report = %files.html.display(), "run report"),
        Err(e) => tracing::warn!(error = %e, "run report not written"),
    }
    Ok(())
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
