//! The plan of a run (`emollama run RECIPE --dry-run`): what the recipe would train, how long and in
//! how much memory, from the recipe, the manifests and the dataset cards alone. No weights are read, no
//! data is touched, nothing is written.
//!
//! - Parameters: the model is built by the run's own constructors through the shape recorder
//!   ([`crate::model::shapes`]), so counts are exact; grouped by component with what each stage trains
//!   ([`params`]).
//! - Memory per dtype: exact for weights and optimiser state, an estimate for activations ([`memory`]).
//! - Tokens per sample: exact multimodal tokens, estimated text ([`tokens`]).
//! - Steps, samples, schedule, validations and checkpoints per stage ([`stages`]).

pub mod memory;
pub mod model;
pub mod params;
mod render;
pub mod stages;
pub mod tokens;

use serde::Serialize;

use self::memory::{DTYPES, MemoryEstimate, StageLoad};
use self::model::{EncoderInfo, ModelShapes};
use self::params::Component;
use self::stages::StageRun;
use self::tokens::{TaskInput, TaskTokens};
use crate::recipe::LoadedRecipe;
use crate::registry::{Registry, RegistryError};
use crate::validate::Deferred;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("recipe `{recipe}` is invalid:\n{}", errors.join("\n"))]
    Invalid { recipe: String, errors: Vec<String> },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("LLM `{llm}`: its weights are not on this machine and manifest `{manifest}` has no [config]: add the model's config.json values there so it can be planned without them")]
    NoLlmConfig { llm: String, manifest: String },
    #[error("building {component} with the shape recorder: {detail}")]
    Build { component: String, detail: String },
}

/// The LLM in a few numbers.
#[derive(Debug, Clone, Serialize)]
pub struct LlmSummary {
    pub name: String,
    pub config_from: String,
    pub pretrained: bool,
    pub model_type: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab_size: usize,
    pub template: String,
    /// `word_level` (token counts of known text are exact) or `subword` (estimated).
    pub tokenizer: String,
}

/// One stage: how it runs, what it trains, its sequences.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    #[serde(flatten)]
    pub run: StageRun,
    pub trainable_globs: Vec<String>,
    pub trainable_params: u64,
    pub frozen_params: u64,
    /// Modalities whose tokens the stage feeds.
    pub modalities: Vec<String>,
    pub transcript: bool,
    /// One entry per task of the stage.
    pub tokens: Vec<TaskTokens>,
}

/// Generation on a split: validation during training, or the final evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationPlan {
    pub dataset: String,
    pub split: String,
    /// Samples generated per pass (`limit` applied); `None` when the card does not give the split's size.
    pub samples: Option<u64>,
    pub task: String,
    pub metric: String,
    pub tokens: TaskTokens,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: String,
    pub file: String,
    pub device: String,
    pub runtime_dtype: String,
    /// Per part: LLM weights and activations (`runtime.dtype`), trainable masters, optimiser state, encoders.
    pub dtypes: serde_json::Value,
    pub llm: LlmSummary,
    /// `emotion_llama` or `plain`.
    pub layout: String,
    pub encoders: Vec<EncoderInfo>,
    pub projector: String,
    pub total_params: u64,
    pub components: Vec<Component>,
    pub stages: Vec<StagePlan>,
    pub validation: Option<GenerationPlan>,
    pub eval: Option<GenerationPlan>,
    /// Per stage, per dtype (`f32`, `bf16`, `f16`).
    pub memory: Vec<MemoryEstimate>,
    /// What a real run of this recipe would stop at or should know.
    pub warnings: Vec<String>,
    /// How the estimates are made.
    pub estimates: Vec<String>,
}

/// Plans `loaded` against `registry`.
pub fn plan(loaded: &LoadedRecipe, registry: &Registry) -> Result<Plan, PlanError> {
    let r = &loaded.recipe;
    let (errors, deferred) = crate::validate::validate_for_plan(loaded, registry);
    if !errors.is_empty() {
        return Err(PlanError::Invalid { recipe: loaded.path.display().to_string(), errors: errors.iter().map(|e| e.to_string()).collect() });
    }
    let shapes = model::shapes(r, registry)?;
    let components = params::components(&shapes, &r.stages);
    let total_params: u64 = components.iter().map(|c| c.params).sum();
    let runs = stages::stage_runs(r, registry);
    let mut warnings = deferred_warnings(&deferred);
    warnings.extend(shapes.warnings.iter().cloned());
    let mut stage_plans = Vec::with_capacity(runs.len());
    let mut memory = Vec::new();
    for (k, (stage, run)) in r.stages.iter().zip(runs).enumerate() {
        let trainable: u64 = components.iter().map(|c| c.trainable[k]).sum();
        if trainable == 0 {
            warnings.push(format!("stage `{}`: `trainable` {:?} matches no parameter that can train; a run stops here", stage.name, stage.trainable));
        }
        if run.steps.is_none() {
            warnings.push(format!("stage `{}`: steps {}", stage.name, run.steps_from));
        }
        let tokens = stage_tokens(loaded, registry, &shapes, stage);
        let seq_len = tokens.iter().map(|t| t.total).max().unwrap_or(0);
        // Frozen encoders keep their weight matrices in the run's dtype and the rest (norms, biases,
        // convolutions, position embeddings) in f32, as `FrozenEncoder::load_in` does; trainable encoders
        // are f32 masters.
        let frozen_f32: u64 = shapes
            .params
            .iter()
            .filter(|(n, d)| n.starts_with("encoder.") && !stage.trainable.iter().any(|g| crate::train::optim::glob_match(g, n)) && !(d.len() == 2 && n.ends_with(".weight")))
            .map(|(_, d)| d.iter().product::<usize>() as u64)
            .sum();
        let load = StageLoad {
            stage: &stage.name,
            trainable,
            frozen: total_params - trainable - frozen_f32,
            frozen_f32,
            batch_size: stage.batch_size,
            seq_len,
            checkpointing: r.runtime.activation_checkpointing,
        };
        memory.extend(DTYPES.iter().map(|d| memory::estimate(&shapes.llm.config, &load, d)));
        stage_plans.push(StagePlan {
            run,
            trainable_globs: stage.trainable.clone(),
            trainable_params: trainable,
            frozen_params: total_params - trainable,
            modalities: crate::recipe::Modality::ALL.iter().filter(|m| stage.uses(**m)).map(|m| m.to_string()).collect(),
            transcript: stage.transcript.unwrap_or(r.prompt.transcript.included()),
            tokens,
        });
    }
    let c = &shapes.llm.config;
    let llm = LlmSummary {
        name: shapes.llm.name.clone(),
        config_from: shapes.llm.config_from.clone(),
        pretrained: shapes.llm.pretrained,
        model_type: c.model_type.clone(),
        layers: c.num_hidden_layers,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        heads: c.num_attention_heads,
        kv_heads: c.kv_heads(),
        vocab_size: c.vocab_size,
        template: format!("{:?}", shapes.llm.template.kind).to_lowercase(),
        tokenizer: if shapes.llm.word_level { "word_level".into() } else { "subword".into() },
    };
    let validation = r.validation.enabled.then(|| {
        generation(loaded, registry, &shapes, &r.validation.split, r.validation_task(), r.validation.metric.name(), r.validation.limit)
    });
    let eval = r.eval.enabled.then(|| generation(loaded, registry, &shapes, &r.eval.split, r.eval.task, &r.eval.metrics.join(", "), r.eval.limit));
    Ok(Plan {
        recipe: r.name.clone(),
        file: loaded.path.display().to_string(),
        device: r.runtime.device.clone(),
        runtime_dtype: match r.runtime.dtype {
            crate::recipe::RunDtype::Auto => format!("auto ({} on this machine)", r.runtime.part_dtypes()["activations"].as_str().unwrap_or("?")),
            d => d.to_string(),
        },
        dtypes: r.runtime.part_dtypes(),
        llm,
        layout: shapes.layout.to_string(),
        encoders: shapes.encoders.clone(),
        projector: r.model.projector.to_string(),
        total_params,
        components,
        stages: stage_plans,
        validation,
        eval,
        memory,
        warnings,
        estimates: estimate_notes(shapes.llm.word_level),
    })
}

impl Plan {
    /// The plan as readable tables.
    pub fn render(&self) -> String {
        render::render(self)
    }
}

/// Warnings for the checks only a run needs, one per dataset or stage.
fn deferred_warnings(deferred: &[Deferred]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for d in deferred {
        match d {
            Deferred::SourceFormat { key, dataset, source } => {
                if seen.insert(dataset.clone()) {
                    out.push(format!(
                        "dataset `{dataset}` ({key}): source format `{source}` is not in this build. The plan needs no samples; `emollama run` without --dry-run stops here"
                    ));
                }
            }
            Deferred::NoRoot { key, dataset } => {
                if seen.insert(dataset.clone()) {
                    out.push(format!(
                        "dataset `{dataset}` ({key}): no root yet; set `data.roots.{dataset}` (or `root` in datasets/{dataset}.toml) to your licensed copy. The plan needs no samples; `emollama run` without --dry-run stops here"
                    ));
                }
            }
            Deferred::InitMissing { key, stage, path } => out.push(format!(
                "stage `{stage}` ({key}): init checkpoint `{path}` does not exist (yet); `emollama run` without --dry-run stops here until it does"
            )),
        }
    }
    out
}

/// The multimodal tokens a stage feeds.
fn multimodal(shapes: &ModelShapes, use_av: bool, video: bool, audio: bool) -> (usize, usize) {
    if use_av { shapes.tokens.with(video, audio) } else { (0, 0) }
}

/// One entry per task of the stage (the longest sequence when the task appears in several datasets).
fn stage_tokens(loaded: &LoadedRecipe, registry: &Registry, shapes: &ModelShapes, stage: &crate::recipe::Stage) -> Vec<TaskTokens> {
    let r = &loaded.recipe;
    let mm = multimodal(shapes, r.model.use_av, stage.uses(crate::recipe::Modality::Video), stage.uses(crate::recipe::Modality::Audio));
    let entries = if stage.data.is_empty() { vec![crate::recipe::StageData::default()] } else { stage.data.clone() };
    let mut out: Vec<TaskTokens> = Vec::new();
    for d in &entries {
        let dataset = if d.dataset.is_empty() { &r.data.dataset } else { &d.dataset };
        let labels = registry.dataset(dataset).map(|(_, c)| c.labels.clone()).unwrap_or_default();
        let tasks = if d.tasks.is_empty() { &stage.tasks } else { &d.tasks };
        for task in tasks {
            let instructions = d.instructions.get(task.name()).filter(|p| !p.is_empty()).map(Vec::as_slice).unwrap_or_else(|| r.prompt.instructions_for(*task));
            let input = TaskInput {
                task: task.name(),
                instructions,
                transcript: stage.transcript.unwrap_or(r.prompt.transcript.included()),
                labels: &labels,
                multimodal: mm,
                generate: None,
                reference_layout: false,
            };
            let t = tokens::task_tokens(&shapes.llm, &input);
            match out.iter_mut().find(|o| o.task == t.task) {
                Some(o) if o.total < t.total => *o = t,
                Some(_) => {}
                None => out.push(t),
            }
        }
    }
    out
}

/// Validation or evaluation: the first instruction of the task (as evaluation asks), the generation
/// budget `eval.max_new_tokens`.
fn generation(loaded: &LoadedRecipe, registry: &Registry, shapes: &ModelShapes, split: &str, task: crate::recipe::Task, metric: &str, limit: usize) -> GenerationPlan {
    let r = &loaded.recipe;
    let card = registry.dataset(&r.data.dataset).ok().map(|(_, c)| c);
    let labels = card.map(|c| c.labels.clone()).unwrap_or_default();
    let samples = card.and_then(|c| stages::split_samples(r, c, split)).map(|n| if limit > 0 { n.min(limit as u64) } else { n });
    let first: Vec<String> = r.prompt.instructions_for(task).iter().take(1).cloned().collect();
    let input = TaskInput {
        task: task.name(),
        instructions: &first,
        transcript: r.prompt.transcript.included(),
        labels: &labels,
        multimodal: multimodal(shapes, r.model.use_av, true, true),
        generate: Some(r.eval.max_new_tokens),
        reference_layout: r.prompt.eval_layout == crate::recipe::EvalLayout::Reference,
    };
    GenerationPlan {
        dataset: r.data.dataset.clone(),
        split: split.to_string(),
        samples,
        task: task.to_string(),
        metric: metric.to_string(),
        tokens: tokens::task_tokens(&shapes.llm, &input),
    }
}

fn estimate_notes(word_level: bool) -> Vec<String> {
    let text = if word_level {
        "text tokens of known text (template, instruction scaffold, instructions, labels): exact for the word-level vocabulary (split as `\\w+|[^\\w\\s]+`)".to_string()
    } else {
        format!(
            "text tokens of known text (template, instruction scaffold, instructions, labels): estimated without the tokenizer, one token per {} characters begun of a word and one per punctuation character",
            tokens::SUBWORD_CHARS
        )
    };
    vec![
        text,
        format!(
            "unknown text at 4 tokens per 3 words: a transcript allowance of {} words; free-text answers up to {} words (the normalise_answer cap); the longest label word for `emotion`; plus EOS",
            tokens::TRANSCRIPT_WORDS,
            tokens::ANSWER_WORDS
        ),
        "memory: frozen weights at the dtype (the encoders' norms, biases, convolutions and position embeddings in f32); trainable weights, gradients and AdamW moments in f32 (16 bytes per parameter); activations (estimate) b*T*L*(10h + 4i + 2aT)*bytes + b*T*V*8 (+ V*h*4 for the f32 loss head in bf16 / f16) for the stage's longest sequence T and micro-batch b (with runtime.activation_checkpointing: b*T*L*h*bytes + 2*b*T*(10h + 4i + 2aT)*bytes in place of the layers' term); frozen encoders' activations (no gradient) not included".into(),
    ]
}
