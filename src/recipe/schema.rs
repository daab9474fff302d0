//! The recipe schema: every key a recipe may hold, with its default.
//!
//! Every struct denies unknown keys so a typo is an error, never a silently ignored option.

use serde::{Deserialize, Serialize};

use crate::media::FrameSampling;
use super::choices::{Distributed, EvalLayout, Family, InferencePrecision, InstructionSet, Modality, ProjectorKind, PromptTurn, RunDtype, Task, TranscriptSetting, ValidationMetric};

/// A whole run: data, model, prompt, training stages and evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Run name; the run directory is `<runs_dir>/<name>-<timestamp>`.
    pub name: String,
    /// Other recipe files this one builds on (paths relative to this file, `s3://`, `http(s)://` or
    /// `hf://owner/repo@revision/path.toml` URIs, optionally pinned: `{ uri = "...", sha256 = "..." }`);
    /// later entries and this file win. Resolved at load time, so the resolved recipe shows it empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extends: Vec<Extend>,
    /// Seed for data order, initialisation, dropout and sampling.
    pub seed: u64,
    pub runtime: Runtime,
    pub data: Data,
    pub model: Model,
    pub prompt: Prompt,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
    /// When and what to checkpoint during training.
    pub checkpoint: Checkpointing,
    /// Validation during training and best-checkpoint selection.
    pub validation: Validation,
    pub eval: Eval,
    /// S3 / HTTP access, retries and the local read-through cache of remote media.
    pub storage: crate::storage::StorageConfig,
    /// Optional processing between decoding and the encoders (face crops, peak frame).
    #[serde(skip_serializing_if = "FrontEnd::is_off")]
    pub front_end: FrontEnd,
    /// `emollama annotate`: which clips get pseudo-labels and where they go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotate: Option<Annotate>,
}

/// `[annotate]`: the clips `emollama annotate` labels with the recipe's model (the zero-shot one:
/// cues, caption, reasoning, label, confidence), written as a `jsonl` dataset with its card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Annotate {
    /// Splits of `data.dataset` to annotate (empty: every split of its card).
    pub splits: Vec<String>,
    /// Output directory (`manifest.jsonl`, `errors.jsonl`, the card `<name>.toml`, `annotate.json`,
    /// `media/`); relative to the working directory. `--out` overrides it.
    pub out: String,
    /// The annotated dataset's name (default `<data.dataset>-annotated`).
    pub name: String,
    /// At most this many clips per split (0 = all).
    pub limit: usize,
    /// The split the annotated clips get in the new dataset (empty: their own), e.g. `train` to train on
    /// pseudo-labels of a test split.
    pub split_as: String,
}

impl Default for Annotate {
    fn default() -> Self {
        Self { splits: Vec::new(), out: "annotations".into(), name: String::new(), limit: 0, split_as: String::new() }
    }
}

/// One `extends` entry: a path or URI, or a table with the URI and the sha256 its content must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Extend {
    Path(String),
    Pinned {
        uri: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
}

/// `[front_end]`: what happens to decoded frames before the encoders see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FrontEnd {
    /// `[front_end.face]`: detect, follow and crop the main face (eye-aligned) for the frame
    /// encoders' face views, score expressions, find the emotion peak frame. Off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face: Option<crate::media::face::FaceOptions>,
}

impl FrontEnd {
    pub fn is_off(&self) -> bool {
        self.face.is_none()
    }
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            name: "run".into(),
            extends: Vec::new(),
            seed: 0,
            runtime: Runtime::default(),
            data: Data::default(),
            model: Model::default(),
            prompt: Prompt::default(),
            stages: Vec::new(),
            checkpoint: Checkpointing::default(),
            validation: Validation::default(),
            eval: Eval::default(),
            storage: Default::default(),
            front_end: FrontEnd::default(),
            annotate: None,
        }
    }
}

/// Where the run writes and how it uses the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// `cpu`, or `cuda` / `cuda:N` when built with the `cuda` feature.
    pub device: String,
    /// Worker threads for tensor code; 0 = all cores.
    pub threads: usize,
    /// Parent directory of run directories (relative paths are relative to the working directory).
    pub runs_dir: String,
    /// Cache for generated datasets and decoded media; empty = `$XDG_CACHE_HOME/emollama` or `~/.cache/emollama`.
    pub cache_dir: String,
    /// Show progress bars (they are hidden automatically when stderr is not a terminal).
    pub progress: bool,
    /// Weights and activations: `f32` (CPU default), `bf16` or `f16` (GPU; `f16` trains with dynamic
    /// loss scaling). The trainable parameters and optimiser state stay f32.
    pub dtype: RunDtype,
    /// Batches prepared ahead of the training step by the loader thread (0 = prepare in the step).
    pub prefetch: usize,
    /// `emollama run RECIPE` continues the newest interrupted run directory of the same recipe (same
    /// resolved recipe) instead of starting a new one.
    pub auto_resume: bool,
    /// Cache the outputs of frozen encoders (keyed by encoder, preprocessing and media content) under
    /// `<cache_dir>/features`, so each clip is decoded and encoded once across epochs, stages and runs.
    pub feature_cache: bool,
    /// Arithmetic of the frozen encoders' matmuls on the CPU (HuBERT, ViT-MAE, VideoMAE, EVA): `auto` (bf16 when
    /// the CPU has AMX or AVX512_BF16 and the build has oneDNN, else f32), `f32` or `bf16`. Activations
    /// stay f32 either way; the run records what was used in run_info.json.
    pub inference_precision: InferencePrecision,
    /// Training keeps only each LLM layer's input and recomputes the layer during the backward pass
    /// (one more forward pass of compute; the LLM's activations shrink to about one layer's). For a
    /// 7B LLM on a machine with little memory.
    pub activation_checkpointing: bool,
    /// Data-parallel training: `auto` (from the launcher: mpirun, torchrun, Slurm), `none`, `mpi` or `nccl`.
    pub distributed: Distributed,
    /// Seconds a rank waits for the others at a collective before the group stops with an error naming
    /// the ranks that did not arrive (a rank that died or hangs).
    pub distributed_timeout_s: f64,
}

impl Recipe {
    /// The task validation asks: `validation.task`, else `eval.task`.
    pub fn validation_task(&self) -> Task {
        self.validation.task.unwrap_or(self.eval.task)
    }
}

impl Runtime {
    /// The dtype of each part of the model on this run's device (`auto` resolved): what the plan and
    /// `run_info.json` report.
    pub fn part_dtypes(&self) -> serde_json::Value {
        let llm = format!("{:?}", self.dtype.resolve(self.device.starts_with("cuda"))).to_lowercase();
        serde_json::json!({
            "llm_weights": llm,
            "activations": llm,
            "trainable_master": "f32",
            "optimizer_state": "f32",
            "encoder_weight_matrices": llm,
            "encoder_other_weights": "f32",
            "encoder_activations": "f32",
        })
    }

    /// `inference_precision` resolved on this machine (`auto` → [`crate::accel::default_precision`]).
    pub fn resolved_inference_precision(&self) -> crate::accel::Precision {
        match self.inference_precision {
            InferencePrecision::F32 => crate::accel::Precision::F32,
            InferencePrecision::Bf16 => crate::accel::Precision::Bf16,
            InferencePrecision::Auto => crate::accel::default_precision(),
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            threads: 0,
            runs_dir: "runs".into(),
            cache_dir: String::new(),
            progress: true,
            dtype: RunDtype::F32,
            prefetch: 2,
            auto_resume: true,
            feature_cache: true,
            inference_precision: InferencePrecision::Auto,
            activation_checkpointing: false,
            distributed: Distributed::Auto,
            distributed_timeout_s: 300.0,
        }
    }
}

/// What to do with a sample whose media cannot be read.
/// `prompt.template`: the chat template, or `auto` for the LLM manifest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptTemplate {
    #[default]
    Auto,
    /// `[INST] ... [/INST]` (LLaMA-2-chat, Emotion-LLaMA).
    Llama2,
    /// `<|im_start|>user ...` (Qwen2, SmolLM2).
    Chatml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Skip,
    Fail,
}

/// The dataset and how its media are decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Data {
    /// Dataset card name (a file `datasets/<name>.toml`).
    pub dataset: String,
    /// Options of the synthetic source (used when the card's source is `synth`).
    pub synth: crate::data::synth::SynthConfig,
    /// Frames given to the visual encoder.
    pub frames: FrameSampling,
    /// Frame size after scaling (pixels).
    pub width: u32,
    pub height: u32,
    /// Audio given to the audio encoder, in seconds (padded with silence or cut).
    pub audio_seconds: f32,
    /// Missing or unreadable media: skip the sample (and report it) or stop the run.
    pub on_error: OnError,
    /// Dataset roots overriding the cards' `root`, by dataset name: a path, `file://`, `s3://bucket/prefix`
    /// or `http(s)://` (e.g. `--set data.roots.synth=s3://team/synth`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roots: std::collections::BTreeMap<String, String>,
}

impl Default for Data {
    fn default() -> Self {
        Self {
            dataset: "synth".into(),
            synth: Default::default(),
            frames: FrameSampling::Uniform { n: 8 },
            width: 64,
            height: 64,
            audio_seconds: 2.0,
            on_error: OnError::Skip,
            roots: Default::default(),
        }
    }
}

/// Components, each by registry or plugin name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Model {
    /// The architecture family: `auto` (Emotion-LLaMA's when `global_encoder` is set, else `plain`),
    /// `plain`, `emotion_llama`, or `videollama2_av` (SigLIP `video_encoder` → STC connector, BEATs
    /// `audio_encoder` → `mlp` projector, tokens at `<video>`). Switching families is this key and the
    /// encoder/LLM names.
    pub family: Family,
    /// LLM plugin (`plugins/llms/<name>.toml`).
    pub llm: String,
    /// Visual encoder plugin (`plugins/encoders/<name>.toml`); empty = no visual tokens.
    pub video_encoder: String,
    /// Audio encoder plugin (`plugins/encoders/<name>.toml`); empty = no audio tokens.
    pub audio_encoder: String,
    /// Emotion-LLaMA's layout: the global encoder (EVA ViT-g) plugin. When set, the model takes
    /// Emotion-LLaMA's four frozen encoders (`global_encoder`, `local_encoder`, `temporal_encoder`,
    /// `audio_encoder`) and token layout; `video_encoder` must then be empty.
    pub global_encoder: String,
    /// The local (face, per frame, averaged) encoder, e.g. ViT-MAE; empty = none.
    pub local_encoder: String,
    /// The temporal (clip) encoder, e.g. VideoMAE; empty = none.
    pub temporal_encoder: String,
    /// The frame the global encoder sees: `first` (Emotion-LLaMA's code), `middle`, or `peak` (the
    /// emotion peak frame the paper describes; needs `[front_end.face]`).
    pub global_frame: crate::media::GlobalFrame,
    /// Projector architecture from the registry (`linear` or `mlp`).
    pub projector: ProjectorKind,
    /// Feed the projected audio and visual tokens to the LLM. `false` gives the text-only ablation:
    /// the placeholders stay empty, so the model sees only the prompt and transcript.
    pub use_av: bool,
    /// LoRA adapters on the LLM (PEFT field names), e.g.
    /// `{ r = 64, lora_alpha = 16.0, lora_dropout = 0.05, target_modules = ["q_proj", "v_proj"] }`;
    /// train them with `trainable = ["llm.*.lora_*", "projector.*"]`. The adapter is saved in PEFT format
    /// under the run's `adapter/`. (Dropout is recorded but not applied yet.)
    pub lora: Option<crate::model::lora::LoraConfig>,
}

impl Model {
    /// The family, `auto` resolved.
    pub fn family(&self) -> Family {
        match self.family {
            Family::Auto if !self.global_encoder.is_empty() => Family::EmotionLlama,
            Family::Auto => Family::Plain,
            f => f,
        }
    }
}

impl Default for Model {
    fn default() -> Self {
        Self {
            family: Family::Auto,
            llm: "tiny-llama".into(),
            video_encoder: "tiny-cnn-frames".into(),
            audio_encoder: "tiny-wave-audio".into(),
            global_encoder: String::new(),
            local_encoder: String::new(),
            temporal_encoder: String::new(),
            global_frame: crate::media::GlobalFrame::First,
            projector: ProjectorKind::Linear,
            use_av: true,
            lora: None,
        }
    }
}

/// Chat template and instruction wording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prompt {
    /// `auto` (the LLM manifest's), `llama2` (`[INST] ... [/INST]`, Emotion-LLaMA's) or `chatml`.
    pub template: PromptTemplate,
    /// Include "The person in video says: ..." with the transcript: `true` (the dataset's), `false`, or
    /// `"asr"` (speech-to-text of each clip's audio with Whisper tiny.en, cached per clip).
    pub transcript: TranscriptSetting,
    /// Describe each clip's face and voice in words before the transcript line ("Face: sad for the first
    /// 2.0 s, then happy ... Voice: a low, monotone voice ..."; `crate::data::cues`): the expression
    /// timeline from `[front_end.face]` (its defaults when absent) and voice measurements, cached per clip.
    /// What the zero-shot model reads (`recipes/zero_shot.toml`).
    pub cues: bool,
    /// The user turn's layout: `auto` (the family's), `emotion_llama`, `videollama2`, or `text` (no media
    /// tokens; needs `model.use_av = false`).
    pub turn: PromptTurn,
    /// Default instruction pools: `emollama` (6 labels, with the `description` task) or `emotion_llama`
    /// (the reference's pools verbatim: the 9-label emotion prompt, the 5 reason prompts).
    pub instruction_set: InstructionSet,
    /// Instruction pools by task name, overriding the set's; a random entry is drawn per sample in
    /// training, the first in evaluation.
    pub instructions: std::collections::BTreeMap<String, Vec<String>>,
    /// Token layout at evaluation: `training` (visual tokens at `<VideoHere>`, pooled ones at
    /// `<FeatureHere>`, one BOS, as trained) or `reference` (Emotion-LLaMA's `eval_emotion.py`: every
    /// multimodal token at `<VideoHere>`, `<FeatureHere>` left as text, a literal `<s>` after BOS).
    pub eval_layout: EvalLayout,
}


fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Emotion-LLaMA's pools (`first_face.py`), verbatim.
const EMOTION_LLAMA_EMOTION: [&str; 1] =
    ["Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt."];
const EMOTION_LLAMA_REASON: [&str; 5] = [
    "Please analyze all the clues in the video and reason out the emotional label of the person in the video.",
    "What is the emotional state of the person in the video? Please tell me the reason.",
    "What are the facial expressions and vocal tone used in the video? What is the intended meaning behind his words? Which emotion does this reflect?",
    "Please integrate information from various modalities to infer the emotional category of the person in the video.",
    "Could you describe the emotion-related features of the individual in the video? What emotional category do they fall into?",
];

static POOLS: std::sync::LazyLock<std::collections::BTreeMap<(&'static str, &'static str), Vec<String>>> = std::sync::LazyLock::new(|| {
    let mut m = std::collections::BTreeMap::new();
    m.insert(("emollama", "emotion"), strings(&["Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise."]));
    m.insert(("emollama", "description"), strings(&["Please describe the facial expression and the tone of voice in the video.", "What are the facial expressions and vocal tone used in the video?"]));
    let reason = strings(&[EMOTION_LLAMA_REASON[0], EMOTION_LLAMA_REASON[1], EMOTION_LLAMA_REASON[3]]);
    m.insert(("emollama", "reason"), reason.clone());
    m.insert(("emollama", "reason_v2"), reason);
    m.insert(("emotion_llama", "emotion"), strings(&EMOTION_LLAMA_EMOTION));
    m.insert(("emotion_llama", "reason"), strings(&EMOTION_LLAMA_REASON));
    m.insert(("emotion_llama", "reason_v2"), strings(&EMOTION_LLAMA_REASON));
    m.insert(("emotion_llama", "description"), strings(&["Please describe the details of the expression and tone the video."]));
    m
});

impl Prompt {
    /// The instruction pool of `task`: the recipe's, else the instruction set's.
    pub fn instructions_for(&self, task: Task) -> &[String] {
        let task = task.name();
        match self.instructions.get(task) {
            Some(pool) if !pool.is_empty() => pool,
            _ => POOLS.iter().find(|((set, t), _)| *set == self.instruction_set.name() && *t == task).map(|(_, v)| v.as_slice()).unwrap_or(&[]),
        }
    }
}

impl Default for Prompt {
    fn default() -> Self {
        Self {
            template: PromptTemplate::Auto,
            transcript: TranscriptSetting::Dataset,
            cues: false,
            turn: PromptTurn::Auto,
            instruction_set: InstructionSet::Emollama,
            instructions: Default::default(),
            eval_layout: EvalLayout::Training,
        }
    }
}

/// Learning-rate schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    /// Cosine from `lr` to `min_lr` over the steps after the warm-up.
    Cosine,
    Linear,
    /// Emotion-LLaMA's (LAVIS `linear_warmup_cosine_lr`, reference §2.2): warm-up from `warmup_start_lr`
    /// to `lr` as `start + (lr - start) * step / warmup_steps`, then
    /// `min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * step / steps))` with `step` counted from the stage start.
    ReferenceCosine,
}

/// How answer-token losses are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReduction {
    /// Mean over all answer tokens of the batch (Emotion-LLaMA / HF `reduction='mean'`): long answers
    /// dominate, a one-word label answer weighs little.
    TokenMean,
    /// Mean over samples of each sample's token mean: a label answer weighs as much as a description.
    SampleMean,
}

/// One dataset in a stage's mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageData {
    /// Dataset card name; empty = the recipe's `data.dataset`.
    pub dataset: String,
    pub split: String,
    /// Relative sampling weight: each draw picks this dataset with probability weight / sum of weights.
    pub weight: f64,
    /// Task pool for this dataset; empty = the stage's `tasks`.
    pub tasks: Vec<Task>,
    /// Instruction pools by task for this dataset; tasks not named use `prompt.instructions`.
    pub instructions: std::collections::BTreeMap<String, Vec<String>>,
}

impl Stage {
    /// Whether the stage feeds modality `m` to the LLM (no `modalities` = every one).
    pub fn uses(&self, m: Modality) -> bool {
        self.modalities.is_empty() || self.modalities.contains(&m)
    }
}

impl Default for StageData {
    fn default() -> Self {
        Self { dataset: String::new(), split: "train".into(), weight: 1.0, tasks: Vec::new(), instructions: Default::default() }
    }
}

/// Where a stage's trainable parameters start.
pub const STAGE_INITS: [&str; 2] = ["previous", "none"];

/// One training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// `previous` (the weights as the previous stage left them; the built model for the first stage),
    /// `none` (this stage's trainable parameters reset to their initial values), or a checkpoint: a
    /// `.safetensors` file of parameters or a checkpoint directory of an earlier run
    /// (`runs/x/checkpoints/best`).
    pub init: String,
    /// Dataset mixture (`[[stage.data]]`); empty = the recipe's dataset, `train` split, the stage's tasks.
    pub data: Vec<StageData>,
    /// Tasks drawn per sample: `emotion` (label word), `description` (coarse cues), `reason` (fine reasoning ending in the label).
    pub tasks: Vec<Task>,
    /// Optimiser steps (ignored when `epochs` > 0).
    pub steps: usize,
    /// Passes over the mixture's (sample, task) pairs; > 0 sets the steps from the data size.
    pub epochs: f64,
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Forward/backward passes summed per optimiser step (effective batch = batch_size × grad_accum).
    pub grad_accum: usize,
    /// Validate every N optimiser steps (0 = `validation.every`); always at the stage end.
    pub eval_every: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Final learning rate of the cosine / linear decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// First learning rate of a `reference_cosine` warm-up (Emotion-LLaMA: 1e-6).
    pub warmup_start_lr: f64,
    pub lr_schedule: LrSchedule,
    /// AdamW weight decay, applied to matrices only (not biases or norms).
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 = off.
    pub grad_clip: f64,
    /// Globs over parameter names that this stage trains (`projector.*`, `llm.*`, `encoder.audio.*`).
    pub trainable: Vec<String>,
    /// Modalities whose tokens this stage feeds (`video`, `audio`); empty = all the model has. A visual
    /// warm-up stage (`["video"]`) teaches the LLM to read the visual tokens before the easier audio cue
    /// is available to it; without it a from-scratch LLM learns to ignore the slower visual pathway.
    pub modalities: Vec<Modality>,
    /// Override `prompt.transcript` for this stage.
    pub transcript: Option<bool>,
    /// Learning-rate factors by parameter glob, e.g. `{ "encoder.*" = 5.0 }` (first matching glob in sorted
    /// order; others use 1).
    pub lr_scale: std::collections::BTreeMap<String, f64>,
    /// Averaging of the answer-token loss.
    pub loss: LossReduction,
    /// Write a `log.jsonl` line every N optimiser steps (and at the last step of the stage).
    pub log_every: usize,
}

impl Default for Stage {
    fn default() -> Self {
        Self {
            name: "stage".into(),
            init: "previous".into(),
            data: Vec::new(),
            tasks: vec![Task::Emotion],
            steps: 100,
            epochs: 0.0,
            batch_size: 16,
            grad_accum: 1,
            eval_every: 0,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 10,
            warmup_start_lr: 0.0,
            lr_schedule: LrSchedule::Cosine,
            weight_decay: 0.05,
            grad_clip: 1.0,
            trainable: vec!["*".into()],
            modalities: Vec::new(),
            transcript: None,
            lr_scale: Default::default(),
            loss: LossReduction::TokenMean,
            log_every: 1,
        }
    }
}

/// Checkpoints during training: `checkpoints/step-NNNNNN/` (trainable parameters, optimiser moments,
/// schedule, data-order position and RNG state), written atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checkpointing {
    /// Write a checkpoint every N optimiser steps (0 = only at each stage end).
    pub every: usize,
    /// Keep the newest K step checkpoints (the best one is kept apart); at least 1.
    pub keep_last: usize,
}

impl Default for Checkpointing {
    fn default() -> Self {
        Self { every: 100, keep_last: 2 }
    }
}

/// Validation during training: generation on a split, scored by one metric; the best evaluation point's
/// parameters are kept as `checkpoints/best/` and named in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Validation {
    pub enabled: bool,
    pub split: String,
    /// Task asked; none (or `""`, as earlier runs' resolved recipes wrote it) = `eval.task`.
    #[serde(deserialize_with = "empty_task_is_none", skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// `weighted_f1`, `accuracy` or `macro_f1` (higher is better).
    pub metric: ValidationMetric,
    /// Validate every N optimiser steps of every stage (0 = at stage ends only); `stage.eval_every` overrides.
    pub every: usize,
    /// Validate on at most this many samples (0 = all).
    pub limit: usize,
    /// Early stopping: end a stage after this many validations without improvement (0 = never).
    pub patience: usize,
    /// Evaluate the final test split with the best checkpoint (not the last weights).
    pub select_best: bool,
}


/// `validation.task = ""` reads as no task (the eval task).
fn empty_task_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Task>, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() {
        return Ok(None);
    }
    Task::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&name)).map(Some)
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            enabled: false,
            split: "val".into(),
            task: None,
            metric: ValidationMetric::WeightedF1,
            every: 0,
            limit: 0,
            patience: 0,
            select_best: true,
        }
    }
}

/// How text becomes a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelExtraction {
    /// Emotion-LLaMA's rule: the last whitespace token; anything outside the label set counts as neutral.
    Reference,
    /// The label word nearest the end of the text (punctuation stripped); none found = unparsed.
    NearestEnd,
    /// No text: the class word the LLM finds most likely after the prompt (the class scores of `predict`),
    /// so every sample gets a label. Where text must be read (a generated reasoning), as `nearest_end`.
    Scores,
}

/// Evaluation after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Eval {
    /// Run evaluation at the end of the run.
    pub enabled: bool,
    pub split: String,
    /// Task whose instruction is asked (`emotion` or `reason`).
    pub task: Task,
    pub max_new_tokens: usize,
    pub label_extraction: LabelExtraction,
    /// Class scores (`label_extraction = "scores"`, `predict`'s scores after the emotion question) with
    /// contextual calibration: each class word's log-likelihood minus its log-likelihood when the clip's
    /// words (cues, transcript) are replaced by "N/A". Text-only models (`model.use_av = false`).
    pub calibrate: bool,
    /// Metric names from the registry.
    pub metrics: Vec<String>,
    /// Evaluate at most this many samples (0 = all).
    pub limit: usize,
    /// Parameters to evaluate instead of training's: a run directory (its best checkpoint, else its newest
    /// step checkpoint), a checkpoint directory, or a `.safetensors` file. A vocabulary built from the corpus
    /// is read from the run directory's `tokenizer.json`. Empty = the run's own parameters.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub checkpoint: String,
}

impl Default for Eval {
    fn default() -> Self {
        Self {
            enabled: true,
            split: "test".into(),
            task: Task::Reason,
            max_new_tokens: 40,
            label_extraction: LabelExtraction::NearestEnd,
            calibrate: false,
            metrics: vec!["weighted_f1".into(), "accuracy".into(), "macro_f1".into(), "confusion_matrix".into()],
            limit: 0,
            checkpoint: String::new(),
        }
    }
}
