//! Each stage as the trainer will run it: data mixture, steps, samples, learning-rate schedule,
//! validations and checkpoints, from the recipe and the dataset cards' `num_samples` alone.

use serde::Serialize;

use crate::recipe::{LrSchedule, Recipe, Stage};
use crate::registry::Registry;
use crate::train::schedule::lr_at;

/// One dataset of a stage's mixture.
#[derive(Debug, Clone, Serialize)]
pub struct MixtureEntry {
    pub dataset: String,
    pub split: String,
    pub weight: f64,
    pub tasks: Vec<String>,
    /// The card's source format.
    pub source: String,
    /// Samples of the split (the card's `num_samples`); `None` when the card does not say.
    pub samples: Option<u64>,
    /// Passes over this split's clips in the stage: its share of the draws (weight / sum of weights)
    /// over its samples.
    pub passes: Option<f64>,
}

/// A stage's learning-rate schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub kind: LrSchedule,
    pub summary: String,
    /// (optimiser step, learning rate) at the start, the end of the warm-up, the middle and the last step.
    pub points: Vec<(usize, f64)>,
}

/// How long a stage runs and on what.
#[derive(Debug, Clone, Serialize)]
pub struct StageRun {
    pub name: String,
    pub init: String,
    pub data: Vec<MixtureEntry>,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Samples per optimiser step (batch_size × grad_accum).
    pub samples_per_step: usize,
    /// Optimiser steps; `None` when `epochs` needs a sample count no card gives.
    pub steps: Option<usize>,
    /// How `steps` was found (or why it could not be).
    pub steps_from: String,
    pub samples_seen: Option<u64>,
    pub schedule: Option<Schedule>,
    pub weight_decay: f64,
    pub grad_clip: f64,
    /// Validations in the stage (periodic and at the stage end); `None` without validation.
    pub validations: Option<usize>,
    /// Step checkpoints written during the stage, plus the one at its end.
    pub checkpoints: Option<usize>,
}

/// Samples of `split`: the card's `num_samples`, or for the generated dataset the recipe's
/// `data.synth` sizes.
pub fn split_samples(recipe: &Recipe, card: &crate::data::DatasetCard, split: &str) -> Option<u64> {
    let synth = &recipe.data.synth;
    match (card.num_samples.get(split), card.source.as_str(), split) {
        (Some(n), _, _) => Some(*n),
        (None, "synth", "train") => Some(synth.train as u64),
        (None, "synth", "val") => Some(synth.val as u64),
        (None, "synth", "test") => Some(synth.test as u64),
        _ => None,
    }
}

/// The stages in order.
pub fn stage_runs(recipe: &Recipe, registry: &Registry) -> Vec<StageRun> {
    let mut global = Some(0usize);
    recipe
        .stages
        .iter()
        .map(|s| {
            let run = stage_run(recipe, registry, s, global);
            global = global.zip(run.steps).map(|(g, n)| g + n);
            run
        })
        .collect()
}

fn stage_run(recipe: &Recipe, registry: &Registry, stage: &Stage, global_start: Option<usize>) -> StageRun {
    let entries = if stage.data.is_empty() { vec![crate::recipe::StageData::default()] } else { stage.data.clone() };
    let mut data: Vec<MixtureEntry> = entries
        .iter()
        .map(|d| {
            let dataset = if d.dataset.is_empty() { recipe.data.dataset.clone() } else { d.dataset.clone() };
            let card = registry.dataset(&dataset).ok().map(|(_, c)| c);
            MixtureEntry {
                samples: card.and_then(|c| split_samples(recipe, c, &d.split)),
                source: card.map(|c| c.source.clone()).unwrap_or_default(),
                dataset,
                split: d.split.clone(),
                weight: d.weight,
                tasks: if d.tasks.is_empty() { &stage.tasks } else { &d.tasks }.iter().map(|t| t.to_string()).collect(),
                passes: None,
            }
        })
        .collect();
    let per_step = stage.batch_size.max(1) * stage.grad_accum.max(1);
    let (steps, steps_from) = steps_of(stage, &data, per_step);
    let samples_seen = steps.map(|n| (n * per_step) as u64);
    let total_weight: f64 = data.iter().map(|d| d.weight).sum();
    for d in &mut data {
        d.passes = samples_seen.zip(d.samples).filter(|(_, n)| *n > 0).map(|(seen, n)| seen as f64 * d.weight / total_weight / n as f64);
    }
    let validations = steps.filter(|_| recipe.validation.enabled).map(|n| {
        let every = if stage.eval_every > 0 { stage.eval_every } else { recipe.validation.every };
        n.checked_div(every).map_or(1, |q| q + usize::from(!n.is_multiple_of(every)))
    });
    // Step checkpoints fall on multiples of the run's global step (not the stage's), never on a stage's
    // last step, which gets its own boundary checkpoint.
    let checkpoints = global_start.zip(steps).map(|(g0, n)| {
        let every = recipe.checkpoint.every;
        let within = match ((g0 + n).saturating_sub(1).checked_div(every), g0.checked_div(every)) {
            (Some(last), Some(before)) if n > 0 => last - before,
            _ => 0,
        };
        within + 1
    });
    StageRun {
        name: stage.name.clone(),
        init: stage.init.clone(),
        data,
        batch_size: stage.batch_size,
        grad_accum: stage.grad_accum,
        samples_per_step: per_step,
        steps,
        steps_from,
        samples_seen,
        schedule: steps.map(|n| schedule(stage, n)),
        weight_decay: stage.weight_decay,
        grad_clip: stage.grad_clip,
        validations,
        checkpoints,
    }
}

/// The trainer's rule ([`crate::train::trainer::stage_steps`]): `steps`, or with `epochs` > 0,
/// ceil(epochs × (sample, task) pairs / (batch_size × grad_accum)), every sample counted with every
/// task of its entry.
fn steps_of(stage: &Stage, data: &[MixtureEntry], per_step: usize) -> (Option<usize>, String) {
    if stage.epochs <= 0.0 {
        return (Some(stage.steps), format!("steps = {}", stage.steps));
    }
    let unknown: Vec<String> = data.iter().filter(|d| d.samples.is_none()).map(|d| format!("`{}` split `{}`", d.dataset, d.split)).collect();
    if !unknown.is_empty() {
        return (None, format!("unknown: epochs = {} needs the sample count of {} (no `num_samples` in the dataset card)", stage.epochs, unknown.join(", ")));
    }
    let pairs: u64 = data.iter().map(|d| d.samples.unwrap_or(0) * d.tasks.len() as u64).sum();
    let steps = ((stage.epochs * pairs as f64) / per_step as f64).ceil().max(1.0) as usize;
    (Some(steps), format!("epochs {} x {pairs} (sample, task) pairs / {per_step} per step", stage.epochs))
}

fn schedule(stage: &Stage, steps: usize) -> Schedule {
    let s = Stage { steps, ..stage.clone() };
    let mut at: Vec<usize> = vec![0, stage.warmup_steps.min(steps.saturating_sub(1)), steps / 2, steps.saturating_sub(1)];
    at.dedup();
    let (lr, min, w, w0) = (stage.lr, stage.min_lr, stage.warmup_steps, stage.warmup_start_lr);
    // The plain schedules warm up as lr·(step + 1)/warmup_steps; the reference one from warmup_start_lr.
    let warmup = if w > 0 { format!("linear warm-up to {lr:e} over {w} steps, then ") } else { String::new() };
    let summary = match stage.lr_schedule {
        LrSchedule::ReferenceCosine if lr == min && lr == w0 => format!("constant {lr:e} (reference_cosine with warmup_start_lr = lr = min_lr)"),
        LrSchedule::ReferenceCosine if w > 0 => {
            format!("warm-up {w0:e} -> {lr:e} over {w} steps, then cosine {lr:e} -> {min:e} over the stage's {steps} steps (LAVIS linear_warmup_cosine_lr)")
        }
        LrSchedule::ReferenceCosine => format!("cosine {lr:e} -> {min:e} over the stage's {steps} steps (LAVIS linear_warmup_cosine_lr)"),
        LrSchedule::Cosine => format!("{warmup}cosine to {min:e} over {} steps", steps.saturating_sub(w)),
        LrSchedule::Linear => format!("{warmup}linear to {min:e} over {} steps", steps.saturating_sub(w)),
        LrSchedule::Constant => format!("{warmup}constant {lr:e}"),
    };
    Schedule { kind: stage.lr_schedule, summary, points: at.into_iter().map(|t| (t, lr_at(&s, t))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::sampler::Component;

    /// The plan's step count is the trainer's for the same pairs.
    #[test]
    fn epochs_give_the_trainers_steps() {
        let stage = Stage { epochs: 1.5, batch_size: 3, grad_accum: 2, tasks: vec![crate::recipe::Task::Emotion, crate::recipe::Task::Reason], ..Stage::default() };
        let entry = |n: u64| MixtureEntry { dataset: "d".into(), split: "train".into(), weight: 1.0, tasks: stage.tasks.iter().map(|t| t.to_string()).collect(), source: "x".into(), samples: Some(n), passes: None };
        let (steps, _) = steps_of(&stage, &[entry(7), entry(10)], 6);
        let comp = |n: usize| Component { name: "d".into(), pairs: vec![(0, crate::recipe::Task::Emotion); n * 2], weight: 1.0, instructions: Default::default() };
        assert_eq!(steps, Some(crate::train::trainer::stage_steps(&stage, &[comp(7), comp(10)])));
        let unknown = MixtureEntry { samples: None, ..entry(1) };
        assert_eq!(steps_of(&stage, &[unknown], 6).0, None);
    }
}
