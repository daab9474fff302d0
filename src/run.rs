//! A whole run: data → model → stages → evaluation, into `runs/<name>-<timestamp>/`.
//!
//! The run directory holds `recipe.resolved.toml`, `tokenizer.json`, `log.jsonl` (step, stage, loss, lr),
//! `metrics.json`, `predictions.jsonl` and `checkpoints/` (safetensors of each stage's trained parameters).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use serde::Serialize;

use crate::data::loader::{self, DecodeSpec, DecodedMedia, Skipped};
use crate::data::{Sample, source};
use crate::eval::runner::{EvalContext, EvalOutcome, evaluate};
use crate::model::build::{BuildError, build_model};
use crate::model::llm_load::LlmSpec;
use crate::model::prompt::{ChatTemplate, Template};
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::LoadedRecipe;
use crate::registry::Registry;
use crate::train::batch::{self, MediaLayout};
use crate::train::trainer::{StageReport, TrainContext, train_stage};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
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
    pub skipped: Vec<Skipped>,
    pub timings: Timings,
}

/// The cache root: the recipe's `runtime.cache_dir`, else `$XDG_CACHE_HOME/emollama`, else `~/.cache/emollama`.
pub fn cache_root(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("emollama");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/emollama"),
        None => PathBuf::from(".cache/emollama"),
    }
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

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Texts the word-level tokenizer must cover: every prompt shape, instruction, label and training answer.
fn tokenizer_corpus(loaded: &LoadedRecipe, train: &[(Sample, DecodedMedia)], labels: &[String], template: &ChatTemplate) -> Vec<String> {
    let r = &loaded.recipe;
    let mut tasks: BTreeSet<&str> = r.stages.iter().flat_map(|s| s.tasks.iter().map(String::as_str)).collect();
    tasks.insert(r.eval.task.as_str());
    let mut corpus: Vec<String> = labels.to_vec();
    for (sample, _) in train {
        for task in &tasks {
            for instruction in r.prompt.instructions_for(task) {
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

/// Runs the recipe end to end. `show_progress` controls progress bars.
pub fn run(loaded: &LoadedRecipe, registry: &Registry, show_progress: bool) -> Result<RunSummary, RunError> {
    let t0 = Instant::now();
    let r = &loaded.recipe;
    let run_dir = create_run_dir(Path::new(&r.runtime.runs_dir), &r.name)?;
    tracing::info!(dir = %run_dir.display(), "run directory");
    write_atomic(&run_dir.join("recipe.resolved.toml"), loaded.to_toml()?.as_bytes())?;
    let checkpoints = run_dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).map_err(io(&checkpoints))?;
    let log_path = run_dir.join("log.jsonl");
    let mut log = std::fs::File::create(&log_path).map_err(io(&log_path))?;

    // Data.
    let (_, card) = registry.dataset(&r.data.dataset)?;
    let cache = cache_root(&r.runtime.cache_dir);
    let samples = source::load_samples(card, &r.data.synth, &cache, show_progress)?;
    let wanted = |s: &Sample| (!r.stages.is_empty() && s.split == "train") || (r.eval.enabled && s.split == r.eval.split);
    let threads = if r.runtime.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { r.runtime.threads };
    let spec = DecodeSpec {
        sampling: r.data.frames.clone(),
        width: r.data.width,
        height: r.data.height,
        audio_len: (r.data.audio_seconds * crate::media::AUDIO_SAMPLE_RATE as f32).round() as usize,
        on_error: r.data.on_error,
        threads,
        show_progress,
    };
    let (decoded, skipped) = loader::decode_all(samples.into_iter().filter(wanted).collect(), &spec)?;
    if !skipped.is_empty() {
        tracing::warn!(count = skipped.len(), "samples skipped (see metrics.json)");
    }
    let audio_missing = decoded.iter().filter(|(_, m)| m.audio_missing).count();
    if audio_missing > 0 {
        tracing::warn!(count = audio_missing, "samples without an audio stream are decoded as silence");
    }
    let (train, eval_set): (Vec<_>, Vec<_>) = decoded.into_iter().partition(|(s, _)| s.split == "train");
    let data_s = t0.elapsed().as_secs_f64();

    // Model.
    let mut llm = LlmSpec::resolve(registry, &r.model.llm).map_err(|e| BuildError::from(Box::new(e)))?;
    let kind = match r.prompt.template.as_str() {
        "auto" => llm.template,
        name => Template::from_name(name).ok_or_else(|| RunError::Other(format!("unknown template `{name}`")))?,
    };
    let template = llm.chat_template(kind);
    tracing::info!(llm = %llm.name, weights = %llm.describe(), template = ?kind, "LLM");
    let tokenizer = match llm.tokenizer().map_err(|e| BuildError::from(Box::new(e)))? {
        Some(t) => t,
        None => {
            let corpus = tokenizer_corpus(loaded, &train, &card.labels, &template);
            TextTokenizer::from_corpus(corpus.iter().map(String::as_str))?
        }
    };
    tokenizer.save(&run_dir.join("tokenizer.json"))?;
    if llm.config.vocab_size == 0 {
        llm.config.vocab_size = tokenizer.vocab_size();
    }
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let built = build_model(r, registry, &llm, &tokenizer, &varmap, r.seed, &device)?;
    let layout = MediaLayout { width: r.data.width as usize, height: r.data.height as usize, mean: built.pixel_mean, std: built.pixel_std };
    tracing::info!(vocab = tokenizer.vocab_size(), train = train.len(), eval = eval_set.len(), "model built");

    // Stages.
    let t_train = Instant::now();
    let mut stages = Vec::new();
    for (i, stage) in r.stages.iter().enumerate() {
        let mut ctx = TrainContext {
            model: &built.model,
            varmap: &varmap,
            tokenizer: &tokenizer,
            train: &train,
            recipe: r,
            template: template.clone(),
            layout: layout.clone(),
            device: &device,
            log: &mut log,
            checkpoints: &checkpoints,
            show_progress,
        };
        let report = train_stage(&mut ctx, stage, i)?;
        tracing::info!(stage = %report.name, loss = report.final_loss, seconds = report.seconds, "stage done");
        stages.push(report);
    }
    let train_s = t_train.elapsed().as_secs_f64();
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
            layout,
            device: &device,
            labels: &card.labels,
            show_progress,
        };
        Some(evaluate(&ctx, &eval_set, &run_dir)?)
    } else {
        None
    };
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        recipe: loaded.path.display().to_string(),
        use_av: r.model.use_av,
        train_samples: train.len(),
        audio_missing,
        stages,
        eval,
        skipped,
        timings: Timings { data_s, train_s, eval_s: t_eval.elapsed().as_secs_f64(), total_s: t0.elapsed().as_secs_f64() },
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| RunError::Other(e.to_string()))?;
    write_atomic(&run_dir.join("metrics.json"), &json)?;
    Ok(summary)
}

/// The end-of-run table.
pub fn summary_table(s: &RunSummary) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["what", "value"]);
    for st in &s.stages {
        t.add_row(vec![format!("stage {}", st.name), format!("{} steps, loss {:.3} → {:.3}, {:.0} s", st.steps, st.first_loss, st.final_loss, st.seconds)]);
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
