//! The stage loop: seeded batches of (sample, task), forward, loss on answer tokens, clipped AdamW step.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::batch::{self, MediaLayout};
use super::optim::{self, GroupedAdamW};
use super::schedule::lr_at;
use crate::data::Sample;
use crate::data::loader::DecodedMedia;
use crate::model::multimodal::{EmotionModel, TokenizedPrompt};
use crate::model::prompt::ChatTemplate;
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::{Recipe, Stage};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("stage `{stage}`: {message}")]
    Stage { stage: String, message: String },
    #[error("stage `{stage}` step {step}: {source}")]
    Candle { stage: String, step: usize, source: candle_core::Error },
    #[error("writing `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What a stage did, for the summary and `metrics.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    pub name: String,
    pub steps: usize,
    pub trainable_params: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub seconds: f64,
    pub checkpoint: String,
}

/// Everything a stage needs besides its own settings.
pub struct TrainContext<'a> {
    pub model: &'a EmotionModel,
    pub varmap: &'a VarMap,
    pub tokenizer: &'a TextTokenizer,
    pub train: &'a [(Sample, DecodedMedia)],
    pub recipe: &'a Recipe,
    pub template: ChatTemplate,
    pub layout: MediaLayout,
    pub device: &'a Device,
    pub log: &'a mut std::fs::File,
    pub checkpoints: &'a Path,
    pub show_progress: bool,
}

pub fn train_stage(ctx: &mut TrainContext, stage: &Stage, index: usize) -> Result<StageReport, TrainError> {
    let name = stage.name.clone();
    let fail = |message: String| TrainError::Stage { stage: name.clone(), message };
    let candle = |step: usize| {
        let name = name.clone();
        move |source: candle_core::Error| TrainError::Candle { stage: name.clone(), step, source }
    };
    let vars = optim::select(ctx.varmap, &stage.trainable);
    if vars.is_empty() {
        return Err(fail(format!("`trainable` {:?} matches no parameter", stage.trainable)));
    }
    let trainable_params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    // Usable (sample, task) pairs: a sample joins a task only if it has that task's answer.
    let pairs: Vec<(usize, String)> = ctx
        .train
        .iter()
        .enumerate()
        .flat_map(|(i, (s, _))| stage.tasks.iter().filter(|t| batch::answer_for(s, t).is_some()).map(move |t| (i, t.clone())))
        .collect();
    if pairs.is_empty() {
        return Err(fail(format!("no training sample has an answer for tasks {:?}", stage.tasks)));
    }
    let uses = |m: &str| stage.modalities.is_empty() || stage.modalities.iter().any(|x| x == m);
    let (use_video, use_audio) = (uses("video"), uses("audio"));
    let mut opt = GroupedAdamW::new(&vars, stage.lr, stage.weight_decay, &stage.lr_scale).map_err(candle(0))?;
    let stage_seed = ctx.recipe.seed ^ ((index as u64 + 1) * 0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(stage_seed);
    // LoRA dropout masks follow the run's seed, per stage, like the data order.
    ctx.model.llm.reseed_dropout(stage_seed.rotate_left(17));
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut rng);
    let mut cursor = 0;
    let bar = crate::progress::bar(stage.steps as u64, &format!("train:{}", stage.name), ctx.show_progress);
    let start = Instant::now();
    let (mut first_loss, mut last_loss, mut smoothed) = (f64::NAN, f64::NAN, f64::NAN);
    for step in 0..stage.steps {
        let lr = lr_at(stage, step);
        opt.set_lr(lr);
        let mut prompts: Vec<TokenizedPrompt> = Vec::with_capacity(stage.batch_size);
        let mut media: Vec<&DecodedMedia> = Vec::with_capacity(stage.batch_size);
        for _ in 0..stage.batch_size {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            let (si, task) = &pairs[order[cursor]];
            cursor += 1;
            let (sample, decoded) = &ctx.train[*si];
            let pool = ctx.recipe.prompt.instructions_for(task);
            let instruction = if pool.is_empty() { "" } else { pool[rng.random_range(0..pool.len())].as_str() };
            let text = batch::prompt_text(sample, task, instruction, &ctx.template, stage.transcript.unwrap_or(ctx.recipe.prompt.transcript));
            let answer = batch::answer_for(sample, task);
            prompts.push(batch::tokenize(ctx.tokenizer, &text, answer.as_deref()).map_err(|e| fail(e.to_string()))?);
            media.push(decoded);
        }
        let loss = (|| -> candle_core::Result<(f64, optim::GradNorms)> {
            let mm = if ctx.recipe.model.use_av {
                ctx.model.encode_modalities(&batch::media_batch(&media, &ctx.layout, ctx.device)?, use_video, use_audio)?
            } else {
                None
            };
            let inputs = ctx.model.build_inputs(&prompts, mm.as_ref(), true)?;
            let loss = ctx.model.loss(&inputs, stage.loss)?;
            let value = loss.to_scalar::<f32>()? as f64;
            let mut grads = loss.backward()?;
            let norm = opt.step(&mut grads, stage.grad_clip)?;
            Ok((value, norm))
        })()
        .map_err(candle(step))?;
        let (value, (grad_norm, group_norms)) = loss;
        if !value.is_finite() {
            return Err(fail(format!("loss became {value} at step {step}; lower `lr` or enable `grad_clip`")));
        }
        if step == 0 {
            first_loss = value;
            smoothed = value;
        }
        smoothed = 0.9 * smoothed + 0.1 * value;
        last_loss = value;
        bar.set_message(format!("loss {smoothed:.4} lr {lr:.2e}"));
        bar.inc(1);
        if step % stage.log_every.max(1) == 0 || step + 1 == stage.steps {
            let line = serde_json::json!({
                "stage": stage.name, "step": step + 1, "loss": value, "lr": lr, "grad_norm": grad_norm, "grad_norms": group_norms,
                "elapsed_s": start.elapsed().as_secs_f64(),
            });
            writeln!(ctx.log, "{line}").map_err(|source| TrainError::Io { path: "log.jsonl".into(), source })?;
            tracing::debug!(stage = %stage.name, step = step + 1, loss = value, lr, "train");
        }
    }
    bar.finish_and_clear();
    let checkpoint = ctx.checkpoints.join(format!("{:02}-{}.safetensors", index + 1, stage.name));
    save_params(&vars, &checkpoint)?;
    Ok(StageReport {
        name: stage.name.clone(),
        steps: stage.steps,
        trainable_params,
        first_loss,
        final_loss: last_loss,
        seconds: start.elapsed().as_secs_f64(),
        checkpoint: checkpoint.display().to_string(),
    })
}

/// Writes the given parameters as safetensors, atomically (temp file, fsync, rename).
pub fn save_params(vars: &[(String, candle_core::Var)], path: &Path) -> Result<(), TrainError> {
    let io = |source| TrainError::Io { path: path.display().to_string(), source };
    let tensors: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| TrainError::Io { path: tmp.display().to_string(), source: std::io::Error::other(e.to_string()) })?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
