//! The `emollama` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use emollama::media::{self, FrameSampling};
use emollama::recipe::{LoadedRecipe, load_recipe};
use emollama::registry::Registry;

mod cli_data;

#[derive(Parser)]
#[command(name = "emollama", version, about = "Multimodal emotion recognition and reasoning with LLMs, end to end from raw video")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recipe: data, training stages, evaluation; writes runs/<name>-<timestamp>/.
    Run {
        /// The recipe (optional with `--resume RUN_DIR`, which uses the run's saved recipe).
        recipe: Option<PathBuf>,
        /// Override a recipe key, e.g. `--set model.use_av=false` (repeatable; highest priority).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Hide progress bars.
        #[arg(long)]
        no_progress: bool,
        /// Continue an interrupted run from its newest checkpoint: the newest one of this recipe, or
        /// the given run directory.
        #[arg(long, value_name = "RUN_DIR", num_args = 0..=1, default_missing_value = "", conflicts_with = "fresh")]
        resume: Option<String>,
        /// Start a new run directory even if an interrupted run of this recipe exists.
        #[arg(long)]
        fresh: bool,
        /// Print the plan (parameters trainable and frozen per stage, memory per dtype, tokens per
        /// sample, steps per stage) and exit: nothing is loaded, downloaded or written.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: the plan as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Check or show recipes.
    Recipe {
        #[command(subcommand)]
        command: RecipeCommand,
    },
    /// List the registries (architectures, plugins, datasets, tasks, metrics).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Chat with an LLM (a registry name such as `smollm2-135m-instruct`, an HF model directory or a .gguf
    /// file): prints one answer per --prompt, batched.
    Generate {
        #[arg(long)]
        llm: String,
        /// A user message (repeat for a batch).
        #[arg(long, required = true)]
        prompt: Vec<String>,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// Greedy decoding (default: sampling with --temperature and --top-p).
        #[arg(long)]
        greedy: bool,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 0.9)]
        top_p: f64,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Use the prompt as is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// Replace the model's default system prompt.
        #[arg(long)]
        system: Option<String>,
        /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Dequantize GGUF weights to f32 instead of running the quantized matmuls.
        #[arg(long)]
        dequantize: bool,
        /// Write the first generated position's logits (prompts x vocab, f32) to this safetensors file.
        #[arg(long)]
        logits_out: Option<PathBuf>,
    },
    /// Merge a PEFT LoRA adapter into its base LLM and write an HF model directory (config.json +
    /// model.safetensors, f32) that transformers and `--llm PATH` load without peft.
    Merge {
        #[arg(long)]
        llm: String,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Features of a frozen encoder (HuBERT, ViT-MAE, VideoMAE, EVA ViT-g) for a media file, a folder,
    /// a recipe's dataset, or a safetensors file of preprocessed input; resumable.
    Extract {
        /// A registered encoder (`emollama registry list`), a manifest .toml, or an HF model directory.
        #[arg(long)]
        encoder: String,
        /// A media file, a folder of them, a recipe .toml (its dataset), or a .safetensors file holding
        /// `input_values` (batch, samples) or `pixel_values` (batch, [frames,] 3, H, W). Files and folders
        /// may be remote: s3://bucket/prefix, http(s)://.
        #[arg(long)]
        input: String,
        /// Output .safetensors file (or a folder with --format npy).
        #[arg(long)]
        out: PathBuf,
        /// none | mean | cls | mean_patch | merge4 (default: the manifest's). `none` writes every hidden
        /// state as `hidden_states.N`.
        #[arg(long)]
        pooling: Option<String>,
        /// Hidden states summed into the feature, e.g. `-1` or `-4,-3,-2,-1` (default: the manifest's).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        layers: Option<Vec<i64>>,
        /// Run audio in chunks of this many seconds (MERBench: 10); 0 = whole utterance.
        #[arg(long)]
        chunk_seconds: Option<f64>,
        /// safetensors (one file) or npy (a folder of per-sample .npy files, MERTools style).
        #[arg(long, default_value = "safetensors")]
        format: String,
        /// Frames for visual encoders: `uniform:N`, `first`, `fps:F`, `segments:SxC` (default: the manifest's).
        #[arg(long)]
        frames: Option<String>,
        /// Resample audio that is not at the encoder's rate or not mono (otherwise an error).
        #[arg(long)]
        resample: bool,
        /// Seed of random weights (encoders whose manifest says `source = "random"`).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Hide the progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Write a run directory's report: report/{loss,lr,validation}.png and report.html (runs write it
    /// after each stage; this redraws it, e.g. for an interrupted run).
    Report {
        /// The run directory (holding log.jsonl, and metrics.json once the run has finished).
        run_dir: PathBuf,
    },
    /// Print a media file's streams, duration, frame count and the frames a sampling would pick.
    /// Score existing predictions against labels, without a model: MER CSVs (`name, discrete, valence` or
    /// `name, openset`) or a run's predictions.jsonl.
    Score {
        /// Predictions: a MER submission CSV or predictions.jsonl.
        #[arg(long)]
        predictions: PathBuf,
        /// Labels: a MER CSV in the same format.
        #[arg(long)]
        labels: PathBuf,
        /// Metrics to report (default: every one the files allow), e.g. `weighted_f1,accuracy,uar`.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// One JSON object keyed by metric name.
        #[arg(long)]
        json: bool,
        /// Group MER-OV synonyms with a judge (`local:NAME` or an OpenAI-compatible URL), as the reference
        /// does with GPT-3.5; default: exact words.
        #[arg(long)]
        judge: Option<String>,
        /// Model name sent to an HTTP judge.
        #[arg(long, default_value = "gpt-3.5-turbo")]
        judge_model: String,
        /// Also write a report here: metrics.json, confusion.png, per_class.csv, index.html.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Evaluate a model over a split without training: the recipe's model with the parameters of a run
    /// directory (its best checkpoint), a checkpoint directory or a .safetensors file; writes a run
    /// directory with metrics.json, predictions.jsonl and report.html.
    Eval {
        recipe: PathBuf,
        /// Parameters to evaluate (default: the recipe's `eval.checkpoint`; none = zero-shot, the model as
        /// the recipe builds it).
        #[arg(long)]
        checkpoint: Option<String>,
        /// Split to evaluate (default: the recipe's `eval.split`).
        #[arg(long)]
        split: Option<String>,
        /// At most this many samples.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[arg(long)]
        no_progress: bool,
    },
    /// Judge predicted emotion descriptions against true ones (EMER clue and label overlap, 1-10) with a
    /// local LLM or an OpenAI-compatible endpoint.
    Judge {
        /// True descriptions: CSV (`name, reason`; EMER `names, reasons`) or predictions.jsonl.
        #[arg(long)]
        references: PathBuf,
        /// Predicted descriptions, same formats (a run's predictions.jsonl: `id`, `text`).
        #[arg(long)]
        predictions: PathBuf,
        /// `local:NAME` (an LLM from the registry, or a path) or an OpenAI-compatible base URL
        /// (`http://127.0.0.1:8000/v1`; key from OPENAI_API_KEY). `openai` = OPENAI_BASE_URL.
        #[arg(long, default_value = "local:smollm2-135m-instruct")]
        judge: String,
        /// Model name sent to an HTTP endpoint.
        #[arg(long, default_value = "gpt-3.5-turbo")]
        model: String,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Judge at most this many pairs (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Per-pair replies and scores as JSON lines.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Inspect and pre-fetch datasets (local, S3, HTTP) and export MER submission CSVs.
    Data {
        #[command(subcommand)]
        command: cli_data::DataCommand,
    },
    Probe {
        /// A media file: a path, file://, s3://bucket/key or http(s):// URL (fetched into the cache).
        file: String,
        /// Take the sampling from this recipe's `data.frames`.
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// Sampling: `uniform:N`, `first`, `fps:F` or `segments:SxC` (default: uniform:8, or the recipe's).
        #[arg(long)]
        frames: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Run the face front end on the sampled frames (the recipe's `[front_end.face]` options, else
        /// the defaults) and write a contact sheet PNG: to this path, or `<file stem>.faces.png`.
        /// With `--json`, print per sampled frame the timestamp, boxes, keypoints, scores and crop.
        #[arg(long, num_args = 0..=1, value_name = "PNG")]
        faces: Option<Option<PathBuf>>,
    },
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// Load and validate a recipe; exits non-zero with every problem found.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Print the fully resolved recipe as TOML.
    Show {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// List every registry and its names.
    List {
        /// Project root holding plugins/ and datasets/ (default: found from the working directory).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    emollama::accel::init_process();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The registries found from the recipe's location, after validating the (possibly adjusted) recipe.
fn checked_registry(loaded: &LoadedRecipe, path: &Path) -> Result<Registry> {
    let start = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let registry = Registry::discover(start)?;
    let errors = emollama::validate::validate(loaded, &registry);
    if !errors.is_empty() {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        bail!("recipe `{}` is invalid:\n{}", path.display(), text.join("\n"));
    }
    Ok(registry)
}

/// Loads, then validates against the registries found from the recipe's location.
fn load_checked(path: &Path, sets: &[String]) -> Result<(LoadedRecipe, Registry)> {
    let loaded = load_recipe(path, sets).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = checked_registry(&loaded, path)?;
    Ok((loaded, registry))
}

/// `run --dry-run`: the recipe's plan; no run directory is created. Checks only a real run needs (data
/// sources not in this build, init checkpoints not there yet) become warnings in the plan.
fn print_plan(path: &Path, sets: &[String], json: bool) -> Result<()> {
    let loaded = load_recipe(path, sets).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let registry = Registry::discover(start)?;
    let plan = emollama::plan::plan(&loaded, &registry)?;
    let text = if json { serde_json::to_string_pretty(&plan)? + "\n" } else { plan.render() };
    // Written, not printed: a closed pipe (`| head`) is an error, not a panic.
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()).context("writing the plan")?;
    Ok(())
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { recipe, sets, no_progress, resume, fresh, dry_run, json } => {
            let mode = match &resume {
                Some(d) if d.is_empty() => emollama::run::Resume::Latest,
                Some(d) => emollama::run::Resume::Dir(PathBuf::from(d)),
                None if fresh => emollama::run::Resume::Fresh,
                None => emollama::run::Resume::Auto,
            };
            let recipe = match (recipe, &mode) {
                (Some(r), _) => r,
                (None, emollama::run::Resume::Dir(d)) => d.join("recipe.resolved.toml"),
                (None, _) => bail!("name a recipe: `emollama run RECIPE` (or `emollama run --resume RUN_DIR`)"),
            };
            if dry_run {
                return print_plan(&recipe, &sets, json);
            }
            let (loaded, registry) = load_checked(&recipe, &sets)?;
            if loaded.recipe.runtime.threads > 0 {
                // SAFETY: set before any worker thread exists (tensor thread pools start lazily).
                unsafe { std::env::set_var("RAYON_NUM_THREADS", loaded.recipe.runtime.threads.to_string()) };
            }
            let show = loaded.recipe.runtime.progress && !no_progress && std::io::stderr().is_terminal();
            let summary = emollama::run::run_with(&loaded, &registry, show, &mode).with_context(|| format!("running `{}`", recipe.display()))?;
            println!("{}", emollama::run::summary_table(&summary));
            Ok(())
        }
        Command::Recipe { command: RecipeCommand::Check { recipe, sets } } => {
            let (loaded, _) = load_checked(&recipe, &sets)?;
            println!("ok: `{}` ({} stage(s), files: {})", recipe.display(), loaded.recipe.stages.len(), loaded.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            Ok(())
        }
        Command::Recipe { command: RecipeCommand::Show { recipe, sets } } => {
            let (loaded, _) = load_checked(&recipe, &sets)?;
            print!("{}", loaded.to_toml().map_err(|e| anyhow::anyhow!("{e}"))?);
            Ok(())
        }
        Command::Registry { command: RegistryCommand::List { root } } => {
            let registry = match root {
                Some(r) => Registry::load(&r)?,
                None => Registry::discover(Path::new("."))?,
            };
            println!("project root: {}", registry.root.display());
            for (kind, names) in registry.listing() {
                println!("{kind:>22}: {}", if names.is_empty() { "(none)".to_string() } else { names.join(", ") });
            }
            Ok(())
        }
        Command::Generate { llm, prompt, max_new_tokens, greedy, temperature, top_p, repetition_penalty, seed, raw, system, adapter, dequantize, logits_out } => {
            let registry = Registry::discover(Path::new("."))?;
            let mut chat = emollama::model::chat::ChatModel::load(&registry, &llm, adapter.as_deref(), !dequantize)?;
            if let Some(s) = system {
                chat.template.system = Some(s);
            }
            let ids = prompt.iter().map(|p| chat.prompt_ids(p, raw)).collect::<std::result::Result<Vec<_>, _>>()?;
            if let Some(path) = &logits_out {
                let logits = chat.first_step_logits(&ids)?;
                logits.save_safetensors("logits", path).with_context(|| format!("writing --logits-out `{}`", path.display()))?;
            }
            let opts = emollama::model::generate::GenerateOptions {
                max_new_tokens,
                temperature: if greedy { 0.0 } else { temperature },
                top_p,
                repetition_penalty,
                stop_tokens: Vec::new(),
            };
            let t0 = std::time::Instant::now();
            let generated = chat.generate_ids(&ids, &opts, seed)?;
            let secs = t0.elapsed().as_secs_f64();
            let tokens: usize = generated.iter().map(Vec::len).sum();
            let answers = generated.iter().map(|g| chat.tokenizer.decode(g)).collect::<std::result::Result<Vec<_>, _>>()?;
            for (i, a) in answers.iter().enumerate() {
                if answers.len() > 1 {
                    println!("[{i}] {a}");
                } else {
                    println!("{a}");
                }
            }
            tracing::info!(llm = %chat.spec.name, weights = %chat.spec.describe(), tokens, seconds = format!("{secs:.2}"), "generated");
            Ok(())
        }
        Command::Merge { llm, adapter, out } => {
            let registry = Registry::discover(Path::new("."))?;
            let spec = emollama::model::llm_load::LlmSpec::resolve(&registry, &llm)?;
            let model = spec.build_with_adapter(Some(&adapter), false, &candle_core::Device::Cpu)?;
            let n = model.export_merged(&out).with_context(|| format!("writing the merged model to `{}`", out.display()))?;
            // The tokenizer travels with the model: copied, or rebuilt from GGUF metadata.
            if let Some(t) = spec.tokenizer_json() {
                std::fs::copy(&t, out.join("tokenizer.json")).with_context(|| format!("copying `{}`", t.display()))?;
            } else if let Ok(Some(tok)) = spec.tokenizer() {
                tok.save(&out.join("tokenizer.json"))?;
            }
            println!("merged {} into {} tensors: {}", adapter.display(), n, out.display());
            Ok(())
        }
        Command::Extract { encoder, input, out, pooling, layers, chunk_seconds, format, frames, resample, seed, no_progress } => {
            extract_command(ExtractArgs { encoder, input, out, pooling, layers, chunk_seconds, format, frames, resample, seed, show_progress: !no_progress && std::io::stderr().is_terminal() })
        }
        Command::Report { run_dir } => {
            let files = emollama::report::write_report(&run_dir)?;
            for path in files.paths() {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Data { command } => cli_data::dispatch(command),
        Command::Eval { recipe, checkpoint, split, limit, sets, no_progress } => {
            let mut loaded = load_recipe(&recipe, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
            let r = &mut loaded.recipe;
            r.stages.clear();
            r.eval.enabled = true;
            r.name = format!("{}-eval", r.name);
            if let Some(c) = checkpoint {
                r.eval.checkpoint = c;
            }
            if r.eval.checkpoint.is_empty() {
                // Zero-shot: pretrained weights as the recipe names them, trainable parts freshly initialised.
                tracing::warn!("no --checkpoint: evaluating the model as the recipe builds it (pretrained weights, untrained projectors and adapters)");
            }
            if let Some(s) = split {
                r.eval.split = s;
            }
            if let Some(l) = limit {
                r.eval.limit = l;
            }
            let registry = checked_registry(&loaded, &recipe)?;
            let show = loaded.recipe.runtime.progress && !no_progress && std::io::stderr().is_terminal();
            let summary = emollama::run::run_with(&loaded, &registry, show, &emollama::run::Resume::Fresh).with_context(|| format!("evaluating with `{}`", recipe.display()))?;
            println!("{}", emollama::run::summary_table(&summary));
            Ok(())
        }
        Command::Judge { references, predictions, judge, model, max_tokens, limit, out, json } => judge_command(&references, &predictions, &judge, &model, max_tokens, limit, out.as_deref(), json),
        Command::Score { predictions, labels, metrics, json, judge, judge_model, report } => {
            use emollama::eval::score;
            let truth = score::read_rows(&labels)?;
            let pred = score::read_rows(&predictions)?;
            let scores = match judge {
                None => score::score(&truth, &pred, &metrics)?,
                Some(spec) => {
                    let j = make_judge(&spec, &judge_model, 256)?;
                    let grouping = emollama::eval::judge::JudgeGrouping::new(j.as_ref());
                    let mut s = score::score_with(&truth, &pred, &metrics, &grouping)?;
                    if let Some(e) = grouping.failed.borrow().as_ref() {
                        bail!("the judge failed while grouping synonyms: {e}");
                    }
                    s.insert("ov_grouping_unparsed".into(), serde_json::json!(grouping.unparsed.get()));
                    s.insert("ov_grouping_judge".into(), serde_json::json!(j.name()));
                    s
                }
            };
            let text = if json {
                serde_json::to_string_pretty(&scores)? + "\n"
            } else {
                let mut t = comfy_table::Table::new();
                t.set_header(vec!["metric", "value"]);
                for (k, v) in scores.iter().filter(|(_, v)| !v.is_array() && !v.is_object()) {
                    let shown = match v.as_f64() {
                        Some(x) if !v.is_u64() => format!("{x:.4}"),
                        _ => v.to_string(),
                    };
                    t.add_row(vec![k.clone(), shown]);
                }
                format!("{t}\n")
            };
            if let Some(dir) = &report {
                let title = format!("{} scored against {}", predictions.display(), labels.display());
                let files = emollama::report::evaluation::write_evaluation_report(dir, &title, &scores)?;
                tracing::info!(report = %dir.join("index.html").display(), files = files.len(), "evaluation report");
            }
            std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()).context("writing scores")?;
            Ok(())
        }
        Command::Probe { file, recipe, frames, json, faces } => {
            let recipe = match recipe {
                Some(r) => Some(load_recipe(&r, &[]).map_err(|e| anyhow::anyhow!("{e}"))?.recipe),
                None => None,
            };
            let sampling = match (frames, &recipe) {
                (Some(spec), _) => parse_sampling(&spec)?,
                (None, Some(r)) => r.data.frames.clone(),
                (None, None) => FrameSampling::Uniform { n: 8 },
            };
            media::init();
            let storage = emollama::storage::Storage::new(Default::default(), &emollama::run::cache_root(""))?;
            let uri = file;
            let file = storage.local(&emollama::storage::Location::parse(&uri)?)?;
            if let Some(out) = faces {
                return probe_faces(&file, &uri, &sampling, recipe.as_ref(), out, json);
            }
            let info = media::probe(&file)?;
            let picked = media::probe::sampled_frame_times(&file, &sampling).ok();
            if json {
                let v = serde_json::json!({"probe": info, "sampling": sampling, "targets_s": info.sample_times(&sampling), "picked_s": picked});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", info.render_text());
                println!("sampling {sampling:?}");
                println!("  target times (s): {}", fmt_times(&info.sample_times(&sampling)));
                if let Some(p) = picked {
                    println!("  picked frames (s): {}", fmt_times(&p));
                }
            }
            Ok(())
        }
    }
}

/// `probe --faces`: the face front end on the sampled frames; a contact sheet PNG, and JSON or a table.
fn probe_faces(file: &Path, uri: &str, sampling: &FrameSampling, recipe: Option<&emollama::recipe::Recipe>, out: Option<PathBuf>, json: bool) -> Result<()> {
    use emollama::face::{CropSource, FER_LABELS, FaceFrontEnd};
    let opts = recipe.and_then(|r| r.front_end.face.clone()).unwrap_or_default();
    let (crop_w, crop_h) = recipe.map(|r| (r.data.width as usize, r.data.height as usize)).unwrap_or((224, 224));
    let fe = FaceFrontEnd::new(&opts)?;
    let (w, h) = fe.detect_size_of(file)?;
    let video = media::decode_video(file, sampling, w, h)?;
    let clip = fe.process(&video, crop_w, crop_h).with_context(|| format!("face front end on `{uri}`"))?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.faces.png", file.file_stem().and_then(|s| s.to_str()).unwrap_or("probe"))));
    let png = emollama::face::sheet::contact_sheet(&video, &clip, &format!("{uri}: {} of {} sampled frames with a face", clip.faces_found(), clip.frames.len()))?;
    std::fs::write(&out, png).with_context(|| format!("writing the contact sheet `{}`", out.display()))?;
    if json {
        let frames: Vec<serde_json::Value> = clip
            .frames
            .iter()
            .map(|f| {
                serde_json::json!({
                    "timestamp_s": f.timestamp_s,
                    "detections": f.detections,
                    "main": f.main,
                    "crop": f.crop,
                    "window": f.window,
                    "expression": f.expression.map(|p| FER_LABELS.iter().zip(p).map(|(l, v)| (l.to_string(), v)).collect::<std::collections::BTreeMap<_, _>>()),
                })
            })
            .collect();
        let v = serde_json::json!({"file": uri, "frame_size": [w, h], "crop_size": [crop_w, crop_h], "options": opts, "peak": clip.peak, "frames": frames, "contact_sheet": out});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{uri}: frames decoded at {w}x{h}, crops {crop_w}x{crop_h}");
        for (i, f) in clip.frames.iter().enumerate() {
            let main = f.main.and_then(|m| f.detections.get(m));
            let face = match main {
                Some(d) => format!("face {:.0},{:.0}-{:.0},{:.0} score {:.3}", d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.score),
                None => match f.crop {
                    CropSource::Nearest(j) => format!("no face (window of #{j})"),
                    CropSource::Dropped(j) => format!("no face (dropped, repeats #{j})"),
                    _ => "no face (full frame)".to_string(),
                },
            };
            let expr = f.expression.map(|p| {
                let (label, v) = emollama::face::expression::top(&p);
                format!("  {label} {v:.2}")
            });
            let peak = if clip.peak == Some(i) { "  <- peak" } else { "" };
            println!("  #{i:<2} t={:7.3}s  {} detection(s)  {face}{}{peak}", f.timestamp_s, f.detections.len(), expr.unwrap_or_default());
        }
        println!("contact sheet: {}", out.display());
    }
    Ok(())
}

/// `local:NAME` (registry LLM or path), `openai` (OPENAI_BASE_URL) or an OpenAI-compatible base URL.
fn make_judge(spec: &str, model: &str, max_tokens: usize) -> Result<Box<dyn emollama::eval::judge::Judge>> {
    use emollama::eval::judge::{HttpJudge, LocalJudge};
    if let Some(name) = spec.strip_prefix("local:") {
        let registry = Registry::discover(Path::new("."))?;
        return Ok(Box::new(LocalJudge::new(emollama::model::chat::ChatModel::load(&registry, name, None, true)?, max_tokens)));
    }
    let base_url = if spec == "openai" { std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into()) } else { spec.to_string() };
    if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
        bail!("--judge `{spec}`: expected local:NAME, openai, or an http(s):// base URL");
    }
    Ok(Box::new(HttpJudge { base_url, api_key: std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty()), model: model.to_string(), max_tokens, timeout_s: 300 }))
}

#[allow(clippy::too_many_arguments)]
fn judge_command(references: &Path, predictions: &Path, judge: &str, model: &str, max_tokens: usize, limit: usize, out: Option<&Path>, json: bool) -> Result<()> {
    use emollama::eval::judge;
    let truth: std::collections::HashMap<String, String> = judge::read_descriptions(references)?.into_iter().collect();
    let mut pairs: Vec<(String, String, String)> = Vec::new();
    let mut unmatched = 0usize;
    for (name, pred) in judge::read_descriptions(predictions)? {
        match truth.get(&name) {
            Some(t) => pairs.push((name, t.clone(), pred)),
            None => unmatched += 1,
        }
    }
    if pairs.is_empty() {
        bail!("no prediction in `{}` has a reference in `{}` (names must match)", predictions.display(), references.display());
    }
    if limit > 0 {
        pairs.truncate(limit);
    }
    let j = make_judge(judge, model, max_tokens)?;
    let bar = emollama::progress::bar(pairs.len() as u64, "judge", std::io::stderr().is_terminal());
    let report = judge::judge_pairs(j.as_ref(), &pairs, Some(&bar))?;
    bar.finish_and_clear();
    if let Some(path) = out {
        let lines: String = report.items.iter().filter_map(|i| serde_json::to_string(i).ok()).map(|l| l + "\n").collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = serde_json::json!({
        "judge": report.judge, "n": report.n, "unmatched_predictions": unmatched,
        "clue_overlap": report.clue_overlap, "label_overlap": report.label_overlap,
        "clue_unparsed": report.clue_unparsed, "label_unparsed": report.label_unparsed,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let show = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!("judge {}: {} pairs; clue overlap {} ({} unparsed); label overlap {} ({} unparsed)", report.judge, report.n, show(report.clue_overlap), report.clue_unparsed, show(report.label_overlap), report.label_unparsed);
    }
    Ok(())
}

struct ExtractArgs {
    encoder: String,
    input: String,
    out: PathBuf,
    pooling: Option<String>,
    layers: Option<Vec<i64>>,
    chunk_seconds: Option<f64>,
    format: String,
    frames: Option<String>,
    resample: bool,
    seed: u64,
    show_progress: bool,
}

fn extract_command(a: ExtractArgs) -> Result<()> {
    use emollama::extract::{self, ExtractOptions, Format};
    use emollama::model::encoders::FrozenEncoder;
    use emollama::model::encoders::features::Pooling;
    let registry = Registry::discover(Path::new(".")).ok();
    let (manifest_path, manifest) = extract::resolve_encoder(registry.as_ref(), &a.encoder)?;
    let mut spec = manifest.features.clone();
    if let Some(p) = &a.pooling {
        spec.pooling = Pooling::from_name(p).with_context(|| format!("--pooling `{p}`: expected one of {}", Pooling::NAMES.join(", ")))?;
    }
    if let Some(l) = a.layers {
        spec.layers = l;
    }
    if let Some(c) = a.chunk_seconds {
        if !c.is_finite() || c < 0.0 {
            bail!("--chunk-seconds {c}: expected a number of seconds >= 0");
        }
        spec.chunk_seconds = (c > 0.0).then_some(c);
    }
    let format = Format::from_name(&a.format).with_context(|| format!("--format `{}`: expected safetensors or npy", a.format))?;
    let frames = a.frames.as_deref().map(parse_sampling).transpose()?;
    let mut m = manifest.clone();
    m.features = spec.clone();
    let t0 = std::time::Instant::now();
    let enc = FrozenEncoder::load(&manifest_path, &m, a.seed, &candle_core::Device::Cpu)?;
    tracing::info!(encoder = %enc.name, architecture = %enc.architecture, seconds = format!("{:.1}", t0.elapsed().as_secs_f64()), "encoder loaded");
    let opts = ExtractOptions { spec, format, out: a.out.clone(), frames, resample: a.resample, frame_batch: 8, show_progress: a.show_progress };
    let storage = emollama::storage::Storage::new(Default::default(), &emollama::run::cache_root(""))?;
    if a.input.ends_with(".safetensors") {
        if format != Format::Safetensors {
            bail!("--format npy is for media inputs; a preprocessed tensor file gives one safetensors file");
        }
        let input = storage.local(&emollama::storage::Location::parse(&a.input)?)?;
        let n = extract::extract_tensor_file(&enc, &input, &opts)?;
        println!("{n} tensors from `{}` -> {}", a.input, a.out.display());
        return Ok(());
    }
    let items = extract::list_inputs_at(&a.input, &storage, a.show_progress)?;
    let s = extract::extract_items(&enc, &items, &opts)?;
    println!("{} samples extracted, {} already done; {} tensors in {}", s.extracted, s.skipped_done, s.keys, s.out.display());
    Ok(())
}

fn fmt_times(t: &[f64]) -> String {
    t.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
}

/// `uniform:N`, `first`, `fps:F`, `segments:SxC`.
fn parse_sampling(spec: &str) -> Result<FrameSampling> {
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match kind {
        "first" => FrameSampling::First,
        "uniform" => FrameSampling::Uniform { n: arg.parse().with_context(|| format!("--frames `{spec}`: expected uniform:N with N a count"))? },
        "segments" => {
            let parsed = arg.split_once('x').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            let (segments, consecutive) = parsed.with_context(|| format!("--frames `{spec}`: expected segments:SxC, e.g. segments:8x2"))?;
            FrameSampling::Segments { segments, consecutive }
        }
        "fps" => FrameSampling::Fps { fps: arg.parse().with_context(|| format!("--frames `{spec}`: expected fps:F with F frames per second"))?, max_frames: None },
        _ => bail!("--frames `{spec}`: expected `uniform:N`, `first`, `fps:F` or `segments:SxC`"),
    })
}
