//! The stage loop: a mixture stream of (sample, task) batches prepared ahead on a loader thread,
//! forward, loss on answer tokens, gradient accumulation, clipped AdamW step, validation, checkpoints.
//! Every random choice (data order, instructions, dropout) derives from the recipe seed and a state
//! that checkpoints hold, so a run killed and resumed ends with the same parameters as one that was not.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use crate::feed::batch;
pub use super::checkpoint::StageReport;
use super::checkpoint::{self, BestCheckpoint, TrainState};
use crate::feed::inputs::{BatchMedia, InputError, MediaStore};
use super::optim::{self, GroupedAdamW};
use super::sampler::{Component, DataState, MixtureSampler, mix};
use super::schedule::lr_at;
use crate::data::Sample;
use crate::eval::runner::{EvalContext, EvalOutcome, EvalRequest, evaluate_in};
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
    #[error("stage `{stage}`: {source}")]
    Input { stage: String, source: Box<InputError> },
    #[error("writing `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("validation: {0}")]
    Validation(Box<crate::eval::runner::EvalError>),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
}

impl From<crate::eval::runner::EvalError> for TrainError {
    fn from(e: crate::eval::runner::EvalError) -> Self {
        Self::Validation(Box::new(e))
    }
}

/// The samples and settings validation uses.
pub struct Validation<'a> {
    pub samples: Vec<usize>,
    pub labels: &'a [String],
}

/// Everything the stages need besides their own settings.
pub struct TrainContext<'a> {
    pub model: &'a EmotionModel,
    pub varmap: &'a VarMap,
    pub tokenizer: &'a TextTokenizer,
    /// Every loaded sample (all datasets and splits); indices refer to it.
    pub pool: &'a [Sample],
    /// The dataset card name of each pool sample.
    pub pool_dataset: &'a [String],
    pub store: &'a MediaStore<'a>,
    pub recipe: &'a Recipe,
    pub template: ChatTemplate,
    pub device: &'a Device,
    pub run_dir: &'a Path,
    pub log: &'a mut std::fs::File,
    pub show_progress: bool,
    pub validation: Option<Validation<'a>>,
    /// Initial values of parameters that a stage with `init = "none"` resets.
    pub initial: HashMap<String, Tensor>,
    /// The checkpoint a resume continues from (its optimiser state is loaded for the stage in progress).
    pub resume_from: Option<PathBuf>,
    /// Called after each stage's checkpoint is written (the run redraws its report there).
    pub after_stage: &'a dyn Fn(),
    /// The data-parallel group (one process: a group of one). Each rank trains on its shard of every
    /// global batch; gradients are summed over the ranks before clipping and the step; only rank 0
    /// writes checkpoints, validation results and the log.
    pub group: &'a crate::dist::Group,
}

/// One prepared micro-batch and the data state after it.
struct Prepared {
    prompts: Vec<TokenizedPrompt>,
    media: BatchMedia,
    state: DataState,
    epoch: f64,
}

/// The learning-rate steps of `stage` over `components`.
pub fn stage_steps(stage: &Stage, components: &[Component]) -> usize {
    if stage.epochs > 0.0 {
        let pairs: usize = components.iter().map(|c| c.pairs.len()).sum();
        let per_step = (stage.batch_size * stage.grad_accum.max(1)).max(1);
        ((stage.epochs * pairs as f64) / per_step as f64).ceil().max(1.0) as usize
    } else {
        stage.steps
    }
}

/// The stage's mixture over the pool: per dataset entry, its (sample, task) pairs and instruction pools.
pub fn components(ctx: &TrainContext, stage: &Stage) -> Result<Vec<Component>, TrainError> {
    let r = ctx.recipe;
    let entries = if stage.data.is_empty() { vec![crate::recipe::StageData::default()] } else { stage.data.clone() };
    let mut out = Vec::with_capacity(entries.len());
    for d in entries {
        let dataset = if d.dataset.is_empty() { r.data.dataset.clone() } else { d.dataset.clone() };
        let tasks = if d.tasks.is_empty() { stage.tasks.clone() } else { d.tasks.clone() };
        let pairs: Vec<(usize, crate::recipe::Task)> = (0..ctx.pool.len())
            .filter(|&i| ctx.pool_dataset[i] == dataset && ctx.pool[i].split == d.split)
            .flat_map(|i| tasks.iter().filter(move |t| batch::answer_for(&ctx.pool[i], **t).is_some()).map(move |t| (i, *t)))
            .collect();
        if pairs.is_empty() {
            return Err(TrainError::Stage {
                stage: stage.name.clone(),
                message: format!("dataset `{dataset}` split `{}` has no sample with an answer for tasks {tasks:?}", d.split),
            });
        }
        let instructions = tasks
            .iter()
            .map(|t| {
                let pool = d.instructions.get(t.name()).filter(|p| !p.is_empty()).cloned().unwrap_or_else(|| r.prompt.instructions_for(*t).to_vec());
                (*t, pool)
            })
            .collect();
        out.push(Component { name: dataset, pairs, weight: d.weight, instructions });
    }
    Ok(out)
}

/// The parameters a checkpoint holds at stage `k`: everything any stage up to `k` trains.
fn checkpointed_vars(varmap: &VarMap, stages: &[Stage], k: usize) -> Vec<(String, Var)> {
    let globs: Vec<String> = stages[..=k.min(stages.len().saturating_sub(1))].iter().flat_map(|s| s.trainable.iter().cloned()).collect();
    optim::select(varmap, &globs)
}

fn tensors_of(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
}

/// Sets `vars` from `tensors` (every var must be present, with its shape).
pub fn assign(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>, origin: &str) -> Result<(), String> {
    for (name, var) in vars {
        let t = tensors.get(name).ok_or_else(|| format!("`{origin}` has no parameter `{name}`"))?;
        if t.dims() != var.dims() {
            return Err(format!("`{origin}`: parameter `{name}` has shape {:?}, the model {:?}", t.dims(), var.dims()));
        }
        var.set(&t.to_dtype(var.dtype()).and_then(|t| t.to_device(var.device())).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Loads a stage's `init` checkpoint (a `.safetensors` file or a checkpoint directory) into the
/// parameters it names, which must all exist in the model with their shapes.
fn load_init(varmap: &VarMap, path: &Path, device: &Device) -> Result<usize, String> {
    let file = if path.is_dir() { path.join("params.safetensors") } else { path.to_path_buf() };
    let tensors = candle_core::safetensors::load(&file, device).map_err(|e| format!("`{}`: {e}", file.display()))?;
    let all = optim::select(varmap, &["*".to_string()]);
    let names: BTreeSet<&String> = all.iter().map(|(n, _)| n).collect();
    if let Some(unknown) = tensors.keys().find(|k| !names.contains(k)) {
        return Err(format!("`{}` holds `{unknown}`, which this model does not have (a checkpoint of another configuration?)", file.display()));
    }
    let vars: Vec<(String, Var)> = all.into_iter().filter(|(n, _)| tensors.contains_key(n)).collect();
    assign(&vars, &tensors, &file.display().to_string())?;
    Ok(vars.len())
}

/// Sums gradients of micro-batches.
/// Adds the parameters' gradients of one backward pass to `total`. Only the parameters' entries are kept:
/// the rest of a backward pass's store (every intermediate tensor's gradient) is dropped here.
fn accumulate(total: &mut Option<GradStore>, grads: GradStore, vars: &[(String, Var)]) -> candle_core::Result<()> {
    let t = total.get_or_insert_with(GradStore::default);
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let sum = match t.get(v.as_tensor()) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            t.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// Runs the stages from `state` (a fresh state, or one loaded from a checkpoint) to the end.
pub fn train(ctx: &mut TrainContext, mut state: TrainState) -> Result<TrainState, TrainError> {
    let stages = ctx.recipe.stages.clone();
    let ckpt_root = ctx.run_dir.join("checkpoints");
    while state.stage_index < stages.len() {
        let k = state.stage_index;
        let stage = &stages[k];
        let fail = |message: String| TrainError::Stage { stage: stage.name.clone(), message };
        let vars = optim::select(ctx.varmap, &stage.trainable);
        if vars.is_empty() {
            return Err(fail(format!("`trainable` {:?} matches no parameter", stage.trainable)));
        }
        let saved = checkpointed_vars(ctx.varmap, &stages, k);
        let comps = components(ctx, stage)?;
        let steps = stage_steps(stage, &comps);
        let stage_seed = mix(&[ctx.recipe.seed, k as u64 + 1]);
        let mut sampler = MixtureSampler::new(comps, stage_seed);
        let mut opt = GroupedAdamW::new(&vars, stage.lr, stage.weight_decay, &stage.lr_scale).map_err(|e| fail(e.to_string()))?;
        if state.step == 0 {
            match stage.init.as_str() {
                "previous" => {}
                "none" => {
                    let reset: Vec<(String, Var)> = vars.iter().filter(|(n, _)| ctx.initial.contains_key(n)).cloned().collect();
                    assign(&reset, &ctx.initial, "the initial parameters").map_err(fail)?;
                    tracing::info!(stage = %stage.name, params = reset.len(), "init: trainable parameters reset to their initial values");
                }
                path => {
                    let n = load_init(ctx.varmap, Path::new(path), ctx.device).map_err(fail)?;
                    tracing::info!(stage = %stage.name, params = n, from = path, "init from checkpoint");
                }
            }
            state.loss = Default::default();
        } else {
            let data = state.data.as_ref().ok_or_else(|| fail("the checkpoint has no data-stream state".into()))?;
            sampler.restore(data).map_err(fail)?;
            let dir = ctx.resume_from.clone().ok_or_else(|| fail("resuming mid-stage needs the checkpoint directory".into()))?;
            let moments = checkpoint::load_tensors(&dir, true, ctx.device)?;
            opt.load_state(&moments, state.optimizer_t).map_err(fail)?;
            tracing::info!(stage = %stage.name, step = state.step, "resumed mid-stage");
        }
        let stopped_early = run_steps(ctx, stage, k, steps, &mut sampler, &mut opt, &vars, &saved, &mut state)?;
        // Stage end: export, report, boundary checkpoint (parameters only; the next stage starts fresh).
        let export = ctx.run_dir.join("checkpoints").join(format!("{:02}-{}.safetensors", k + 1, stage.name));
        let leader = ctx.group.is_leader();
        if leader {
            save_params(&vars, &export)?;
        }
        state.reports.push(StageReport {
            name: stage.name.clone(),
            steps: state.step,
            trainable_params: vars.iter().map(|(_, v)| v.elem_count()).sum(),
            first_loss: state.loss.first.unwrap_or(f64::NAN),
            final_loss: state.loss.last.unwrap_or(f64::NAN),
            seconds: state.loss.seconds,
            checkpoint: export.display().to_string(),
            stopped_early,
        });
        // In a group every rank records what it trained: the ranks must agree bit for bit.
        if ctx.group.is_distributed() {
            let line = serde_json::json!({ "kind": "stage_end", "stage": stage.name, "stage_index": k, "global_step": state.global_step, "rank": ctx.group.rank, "params_sha256": params_sha256(&vars).map_err(|source| TrainError::Candle { stage: stage.name.clone(), step: state.step, source })? });
            writeln!(ctx.log, "{line}").map_err(|source| TrainError::Io { path: "log.jsonl".into(), source })?;
        }
        state.stage_index += 1;
        state.step = 0;
        state.optimizer_t = 0;
        state.data = None;
        state.evals_since_best = 0;
        if leader {
            let name = checkpoint::step_name(state.global_step);
            checkpoint::write(&ckpt_root, &name, &tensors_of(&saved), None, &state)?;
            checkpoint::prune(&ckpt_root, ctx.recipe.checkpoint.keep_last, best_name(&state).as_deref())?;
            (ctx.after_stage)();
        }
        tracing::info!(stage = %stage.name, loss = state.loss.last, seconds = state.loss.seconds, "stage done");
    }
    Ok(state)
}

fn best_name(state: &TrainState) -> Option<String> {
    state.best.as_ref().and_then(|b| Path::new(&b.checkpoint).file_name().map(|n| n.to_string_lossy().to_string()))
}

/// The optimiser steps of one stage from `state.step`; returns whether early stopping ended it.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    ctx: &mut TrainContext,
    stage: &Stage,
    k: usize,
    steps: usize,
    sampler: &mut MixtureSampler,
    opt: &mut GroupedAdamW,
    vars: &[(String, Var)],
    saved: &[(String, Var)],
    state: &mut TrainState,
) -> Result<bool, TrainError> {
    let stage_seed = mix(&[ctx.recipe.seed, k as u64 + 1]);
    let accum = stage.grad_accum.max(1);
    let (use_video, use_audio) = (stage.uses(crate::recipe::Modality::Video), stage.uses(crate::recipe::Modality::Audio));
    let transcript = stage.transcript.unwrap_or(ctx.recipe.prompt.transcript.included());
    let every = if stage.eval_every > 0 { stage.eval_every } else { ctx.recipe.validation.every };
    let ckpt_root = ctx.run_dir.join("checkpoints");
    let bar = crate::progress::bar(steps as u64, &format!("train:{}", stage.name), ctx.show_progress);
    bar.set_position(state.step as u64);
    let start = Instant::now();
    let seconds_before = state.loss.seconds;
    let first = state.step;
    let (pool, store, tokenizer, device) = (ctx.pool, ctx.store, ctx.tokenizer, ctx.device);
    let template = ctx.template.clone();
    let stage_name = stage.name.clone();
    let batch_size = stage.batch_size;
    let shard = (ctx.group.rank, ctx.group.world);
    let depth = ctx.recipe.runtime.prefetch;
    let mut stopped_early = false;
    // f16 (GPU) trains with dynamic loss scaling; the scaler's state is checkpointed with the rest.
    let mut scaler = (ctx.recipe.runtime.dtype == crate::recipe::RunDtype::F16).then(|| state.loss_scaler.clone().unwrap_or_default());
    std::thread::scope(|scope| -> Result<(), TrainError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, TrainError>>(depth);
        let producer_sampler = &mut *sampler;
        scope.spawn(move || {
            for _ in 0..(steps - first) * accum {
                let r = prepare(producer_sampler, batch_size, shard, pool, store, tokenizer, &template, transcript, device, &stage_name);
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    break;
                }
            }
        });
        for step in first..steps {
            let lr = lr_at(stage, step);
            opt.set_lr(lr);
            let micro = MicroBatches { stage, step, accum, seed: stage_seed, scale: scaler.as_ref().map_or(1.0, |s| s.scale), use_video, use_audio, group: ctx.group };
            let (grads, value, last_state, epoch) = micro.run(ctx.model, &rx, vars)?;
            if !value.is_finite() {
                return Err(TrainError::Stage { stage: stage.name.clone(), message: format!("loss became {value} at step {step}; lower `lr` or enable `grad_clip`") });
            }
            let Some(mut grads) = grads else {
                return Err(TrainError::Stage { stage: stage.name.clone(), message: "no gradients (empty batch)".into() });
            };
            let candle = |source| TrainError::Candle { stage: stage.name.clone(), step, source };
            if ctx.group.is_distributed() {
                all_reduce_grads(ctx.group, &mut grads, vars, &format!("the gradients of stage `{}` step {}", stage.name, step + 1))?;
            }
            let apply = match &mut scaler {
                Some(s) => {
                    let finite = optim::unscale(&mut grads, vars, s.scale).map_err(candle)?;
                    let ok = s.update(finite);
                    if !ok {
                        tracing::warn!(stage = %stage.name, step = step + 1, scale = s.scale, "f16 gradients overflowed: step skipped, loss scale halved");
                    }
                    state.loss_scaler = Some(s.clone());
                    ok
                }
                None => true,
            };
            let (grad_norm, group_norms) = if apply { opt.step(&grads, stage.grad_clip).map_err(candle)? } else { (f64::NAN, Default::default()) };
            state.loss.first.get_or_insert(value);
            let smoothed = state.loss.smoothed.map_or(value, |s| 0.9 * s + 0.1 * value);
            state.loss.smoothed = Some(smoothed);
            state.loss.last = Some(value);
            state.loss.seconds = seconds_before + start.elapsed().as_secs_f64();
            state.step = step + 1;
            state.global_step += 1;
            state.optimizer_t = opt.steps_taken();
            state.data = last_state;
            bar.set_message(format!("loss {smoothed:.4} lr {lr:.2e}"));
            bar.inc(1);
            if step % stage.log_every.max(1) == 0 || step + 1 == steps {
                let line = serde_json::json!({
                    "kind": "train", "stage": stage.name, "stage_index": k, "step": step + 1, "global_step": state.global_step,
                    "epoch": epoch, "loss": value, "lr": lr, "grad_norm": grad_norm, "grad_norms": group_norms,
                    "elapsed_s": state.loss.seconds,
                });
                writeln!(ctx.log, "{line}").map_err(|source| TrainError::Io { path: "log.jsonl".into(), source })?;
                tracing::debug!(stage = %stage.name, step = step + 1, loss = value, lr, "train");
            }
            let last = step + 1 == steps;
            if ctx.validation.is_some() && (last || (every > 0 && (step + 1).is_multiple_of(every))) {
                // Every rank validates its shard, rank 0 scores the whole; every rank follows its
                // early-stopping decision.
                let mut stop = false;
                validate(ctx, stage, k, saved, state)?;
                if ctx.group.is_leader() {
                    let patience = ctx.recipe.validation.patience;
                    stop = patience > 0 && state.evals_since_best >= patience && !last;
                }
                if ctx.group.is_distributed() {
                    stop = ctx.group.broadcast(&stop, "the early-stopping decision")?;
                }
                if stop {
                    tracing::info!(stage = %stage.name, step = step + 1, "early stopping: no validation improvement");
                    stopped_early = true;
                    break;
                }
            }
            let every_ckpt = ctx.recipe.checkpoint.every;
            if ctx.group.is_leader() && !last && every_ckpt > 0 && state.global_step.is_multiple_of(every_ckpt) {
                let name = checkpoint::step_name(state.global_step);
                checkpoint::write(&ckpt_root, &name, &tensors_of(saved), Some(&opt.state_tensors()), state)?;
                checkpoint::prune(&ckpt_root, ctx.recipe.checkpoint.keep_last, best_name(state).as_deref())?;
            }
        }
        drop(rx);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(stopped_early)
}

/// The micro-batches of one optimiser step.
struct MicroBatches<'s> {
    stage: &'s Stage,
    step: usize,
    accum: usize,
    seed: u64,
    /// The f16 loss scale (1 otherwise).
    scale: f64,
    use_video: bool,
    use_audio: bool,
    group: &'s crate::dist::Group,
}

impl MicroBatches<'_> {
    /// Forward, loss and backward of each micro-batch the loader sends, gradients summed (each loss
    /// scaled by `scale / accum`). Returns the gradients, the mean loss, and the data state and epoch
    /// after the last micro-batch.
    fn run(
        &self,
        model: &EmotionModel,
        rx: &std::sync::mpsc::Receiver<Result<Prepared, TrainError>>,
        vars: &[(String, Var)],
    ) -> Result<(Option<GradStore>, f64, Option<DataState>, f64), TrainError> {
        let (stage, step) = (self.stage, self.step);
        let candle = |source| TrainError::Candle { stage: stage.name.clone(), step, source };
        let mut grads: Option<GradStore> = None;
        let (mut loss_sum, mut last_state, mut epoch) = (0.0, None, 0.0);
        for micro in 0..self.accum {
            let prepared = rx.recv().map_err(|_| TrainError::Stage { stage: stage.name.clone(), message: "the data loader stopped".into() })??;
            model.reseed_dropout(mix(&[self.seed, step as u64, micro as u64]));
            let mm = prepared.media.tokens(model, self.use_video, self.use_audio, true).map_err(candle)?;
            let inputs = model.build_inputs(&prepared.prompts, mm.as_ref(), true).map_err(candle)?;
            let loss = model.loss(&inputs, stage.loss).map_err(candle)?;
            let local = loss.to_scalar::<f32>().map_err(candle)? as f64;
            // This rank's share of the global batch's loss: its answer tokens (token_mean) or samples
            // (sample_mean) over the whole group's, so the summed gradients equal one process's over the
            // whole batch. One process: a share of exactly 1.
            let weight = match stage.loss {
                crate::recipe::LossReduction::TokenMean => inputs.targets.len(),
                crate::recipe::LossReduction::SampleMean => prompts_len(&prepared),
            } as f64;
            let share = if self.group.is_distributed() {
                let sums = self.group.sum_f64(&[weight, local * weight], &format!("the loss weights of stage `{}` step {}", stage.name, step + 1))?;
                loss_sum += sums[1] / sums[0];
                weight / sums[0]
            } else {
                loss_sum += local;
                1.0
            };
            let factor = self.scale * share / self.accum as f64;
            let scaled = if factor != 1.0 { (loss * factor).map_err(candle)? } else { loss };
            accumulate(&mut grads, model.llm.backward(&scaled).map_err(candle)?, vars).map_err(candle)?;
            last_state = Some(prepared.state);
            epoch = prepared.epoch;
        }
        Ok((grads, loss_sum / self.accum as f64, last_state, epoch))
    }
}

/// sha256 over the parameters' values (f32 bytes, in name order).
fn params_sha256(vars: &[(String, Var)]) -> candle_core::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, v) in vars {
        h.update(name.as_bytes());
        for x in v.as_tensor().to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            h.update(x.to_le_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn prompts_len(p: &Prepared) -> usize {
    p.prompts.len()
}

/// Sums the parameters' gradients over the ranks (a parameter without a gradient on this rank takes
/// part as zeros, so every rank sends the same layout).
fn all_reduce_grads(group: &crate::dist::Group, grads: &mut GradStore, vars: &[(String, Var)], what: &str) -> Result<(), TrainError> {
    let candle = |e: candle_core::Error| TrainError::Dist(e.into());
    let local: Vec<Tensor> = vars
        .iter()
        .map(|(_, v)| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()
        .map_err(candle)?;
    let summed = group.all_reduce_sum(&local, what)?;
    for ((_, v), g) in vars.iter().zip(summed) {
        grads.insert(v.as_tensor(), g);
    }
    Ok(())
}

/// Draws one micro-batch and prepares its prompts and media (on the loader thread).
#[allow(clippy::too_many_arguments)]
fn prepare(
    sampler: &mut MixtureSampler,
    batch_size: usize,
    (rank, world): (usize, usize),
    pool: &[Sample],
    store: &MediaStore,
    tokenizer: &TextTokenizer,
    template: &ChatTemplate,
    transcript: bool,
    device: &Device,
    stage: &str,
) -> Result<Prepared, TrainError> {
    let fail = |message: String| TrainError::Stage { stage: stage.to_string(), message };
    let draws = sampler.next_shard(batch_size, rank, world);
    let idx: Vec<usize> = draws.iter().map(|d| d.sample).collect();
    let (media, kept) = store.batch(pool, &idx, device).map_err(|source| TrainError::Input { stage: stage.to_string(), source: Box::new(source) })?;
    let mut prompts = Vec::with_capacity(kept.len());
    for &j in &kept {
        let d = &draws[j];
        let sample = &pool[d.sample];
        let text = batch::prompt_text(sample, d.task, &d.instruction, template, transcript);
        let answer = batch::answer_for(sample, d.task);
        prompts.push(batch::tokenize(tokenizer, &text, answer.as_deref()).map_err(|e| fail(e.to_string()))?);
    }
    Ok(Prepared { prompts, media, state: sampler.state(), epoch: sampler.epoch_progress() })
}

/// Scores the validation split (sharded over the ranks), logs it, and keeps the parameters as `best-*`
/// when they improve (rank 0; the other ranks only generate their shard).
fn validate(ctx: &mut TrainContext, stage: &Stage, k: usize, saved: &[(String, Var)], state: &mut TrainState) -> Result<(), TrainError> {
    let Some(v) = &ctx.validation else { return Ok(()) };
    let r = ctx.recipe;
    let Some(outcome) = run_validation(ctx, v, r.validation_task())? else { return Ok(()) };
    let value = metric_value(&outcome, r.validation.metric);
    let improved = state.best.as_ref().is_none_or(|b| value > b.value);
    let ckpt_root = ctx.run_dir.join("checkpoints");
    if improved {
        let name = format!("best-{:06}", state.global_step);
        let best = BestCheckpoint {
            stage: stage.name.clone(),
            stage_index: k,
            step: state.step,
            global_step: state.global_step,
            metric: r.validation.metric.to_string(),
            value,
            checkpoint: format!("checkpoints/{name}"),
        };
        state.best = Some(best);
        state.evals_since_best = 0;
        checkpoint::write(&ckpt_root, &name, &tensors_of(saved), None, state)?;
        checkpoint::prune(&ckpt_root, usize::MAX, Some(&name))?;
    } else {
        state.evals_since_best += 1;
    }
    let line = serde_json::json!({
        "kind": "validation", "stage": stage.name, "stage_index": k, "step": state.step, "global_step": state.global_step,
        "metric": r.validation.metric, "value": value, "accuracy": outcome.report.accuracy, "weighted_f1": outcome.report.weighted_f1,
        "n": outcome.report.n, "improved": improved, "checkpoint": state.best.as_ref().map(|b| b.checkpoint.clone()),
    });
    writeln!(ctx.log, "{line}").map_err(|source| TrainError::Io { path: "log.jsonl".into(), source })?;
    tracing::info!(stage = %stage.name, step = state.step, metric = %r.validation.metric, value, improved, "validation");
    Ok(())
}

fn run_validation(ctx: &TrainContext, v: &Validation, task: crate::recipe::Task) -> Result<Option<EvalOutcome>, TrainError> {
    let r = ctx.recipe;
    let ectx = EvalContext {
        model: ctx.model,
        tokenizer: ctx.tokenizer,
        recipe: r,
        template: ctx.template.clone(),
        device: ctx.device,
        labels: v.labels,
        show_progress: false,
        pool: ctx.pool,
        store: ctx.store,
    };
    // Decoded clips stay in memory: decode the validation clips in parallel once, not one by one.
    let warm = matches!(ctx.store, MediaStore::Decoded(_)).then_some("decode:val");
    let req = EvalRequest { split: &r.validation.split, task, limit: r.validation.limit, predictions: &ctx.run_dir.join("validation_predictions.jsonl"), warm };
    Ok(evaluate_in(&ectx, &v.samples, &req, ctx.group)?)
}

/// The named metric of an evaluation (higher is better).
pub fn metric_value(e: &EvalOutcome, metric: crate::recipe::ValidationMetric) -> f64 {
    use crate::recipe::ValidationMetric;
    match metric {
        ValidationMetric::Accuracy => e.report.accuracy,
        ValidationMetric::MacroF1 => e.report.macro_f1,
        ValidationMetric::WeightedF1 => e.report.weighted_f1,
    }
}

/// Writes the given parameters as safetensors, atomically (temp file, fsync, rename).
pub fn save_params(vars: &[(String, Var)], path: &Path) -> Result<(), TrainError> {
    let tensors = tensors_of(vars);
    crate::storage::write_atomic_with(path, |tmp| candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other))
        .map_err(|e| TrainError::Io { path: path.display().to_string(), source: e.source })
}
