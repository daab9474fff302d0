//! Evaluation over a split: generate, extract labels, score.

use std::io::Write;
use std::path::Path;

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dist::Group;

use super::extract::extract_label;
use super::metrics::{Report, classification_report};
use crate::data::Sample;
use crate::model::generate::{GenerateOptions, generate_one};
use crate::model::multimodal::EmotionModel;
use crate::model::prompt::ChatTemplate;
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::Recipe;
use crate::feed::batch;
use crate::feed::inputs::{InputError, MediaStore};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("evaluation: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("evaluation: {0}")]
    Tokenizer(#[from] crate::model::tokenizer::TokenizerError),
    #[error("writing `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("evaluation: split `{split}` has no labelled samples")]
    Empty { split: String },
    #[error("evaluation: {0}")]
    Input(#[from] InputError),
    #[error("evaluation: {0}")]
    Dist(#[from] crate::dist::DistError),
}

/// One line of `predictions.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub label: String,
    pub prediction: String,
    pub unparsed: bool,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalOutcome {
    pub split: String,
    pub task: String,
    pub unparsed: usize,
    #[serde(flatten)]
    pub report: Report,
}

pub struct EvalContext<'a> {
    pub model: &'a EmotionModel,
    pub tokenizer: &'a TextTokenizer,
    pub recipe: &'a Recipe,
    pub template: ChatTemplate,
    pub device: &'a Device,
    pub labels: &'a [String],
    pub show_progress: bool,
    /// The run's samples (indices refer to them) and where their media come from.
    pub pool: &'a [Sample],
    pub store: &'a MediaStore<'a>,
}

/// What to evaluate: the split's name (for the report), the task asked, a sample limit (0 = all) and
/// where the predictions go.
pub struct EvalRequest<'a> {
    pub split: &'a str,
    pub task: crate::recipe::Task,
    pub limit: usize,
    pub predictions: &'a Path,
    /// Decode (or encode into the feature cache) each rank's samples first, with this progress label.
    pub warm: Option<&'a str>,
}

/// Generates an answer for each of the pool samples `items`, writes the predictions (JSON lines),
/// returns the scores. A sample whose text names no label is predicted as the string `unparsed` (always
/// wrong) and flagged.
pub fn evaluate(ctx: &EvalContext, items: &[usize], req: &EvalRequest) -> Result<EvalOutcome, EvalError> {
    evaluate_in(ctx, items, req, &Group::single())?.ok_or_else(|| EvalError::Empty { split: req.split.to_string() })
}

/// [`evaluate`] over a data-parallel group: each rank generates its shard (every `world`-th sample,
/// decoding it first when `req.warm`), rank 0 gathers the predictions in the samples' order, writes them
/// and scores them (`Some` there, `None` on the other ranks).
pub fn evaluate_in(ctx: &EvalContext, items: &[usize], req: &EvalRequest, group: &Group) -> Result<Option<EvalOutcome>, EvalError> {
    let labelled: Vec<usize> = items.iter().copied().filter(|&i| ctx.pool[i].label.is_some()).collect();
    let take = if req.limit > 0 { req.limit.min(labelled.len()) } else { labelled.len() };
    if take == 0 {
        return Err(EvalError::Empty { split: req.split.to_string() });
    }
    let mine = group.shard(&labelled[..take]);
    if let Some(label) = req.warm {
        ctx.store.warm(ctx.pool, &mine, ctx.device, label, ctx.show_progress)?;
    }
    let predicted = predict_shard(ctx, &mine, req.task)?;
    let Some(shards) = group.gather(&predicted, &format!("the {} predictions", req.split))? else { return Ok(None) };
    // Unreadable under `on_error = "skip"`: reported with the skipped samples, not scored.
    let predictions: Vec<Prediction> = crate::dist::interleave(shards).into_iter().flatten().collect();
    write_and_score(ctx, &predictions, req).map(Some)
}

/// The prediction for each of `items` (`None`: its media could not be read and `on_error` skips it).
fn predict_shard(ctx: &EvalContext, items: &[usize], task: crate::recipe::Task) -> Result<Vec<Option<Prediction>>, EvalError> {
    let e = &ctx.recipe.eval;
    let pool = ctx.recipe.prompt.instructions_for(task);
    let instruction = pool.first().map(String::as_str).unwrap_or("");
    let labels: Vec<&str> = ctx.labels.iter().map(String::as_str).collect();
    let bar = crate::progress::bar(items.len() as u64, "evaluate", ctx.show_progress);
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.recipe.seed);
    let opts = GenerateOptions::greedy(e.max_new_tokens);
    let by_scores = e.label_extraction == crate::recipe::LabelExtraction::Scores;
    let candidates = if by_scores { ctx.labels.iter().map(|l| ctx.tokenizer.encode(&crate::model::prompt::normalise_answer(l))).collect::<Result<Vec<_>, _>>()? } else { Vec::new() };
    // Contextual calibration: the classes' log-likelihoods after the content-free prompt, once.
    let content_free = if by_scores && e.calibrate {
        let text = batch::content_free_text(ctx.recipe, task, instruction, &ctx.template);
        let prompt = batch::tokenize_eval(ctx.tokenizer, &text, ctx.recipe.prompt.eval_layout)?;
        Some(crate::model::class_scores::candidate_log_likelihoods(ctx.model, &prompt, None, &candidates)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(items.len());
    for &i in items {
        bar.inc(1);
        let sample = &ctx.pool[i];
        let text = batch::prompt_text(sample, task, instruction, &ctx.template, ctx.recipe.prompt.transcript.included());
        let prompt = batch::tokenize_eval(ctx.tokenizer, &text, ctx.recipe.prompt.eval_layout)?;
        let media = match ctx.store.batch(ctx.pool, &[i], ctx.device) {
            Ok((media, _)) => media,
            Err(InputError::EmptyBatch(_)) => {
                out.push(None);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mm = media.tokens(ctx.model, true, true, false)?;
        let (label, generated) = if by_scores {
            // The most likely class word; the text lists every class's probability.
            let mut ll = crate::model::class_scores::candidate_log_likelihoods(ctx.model, &prompt, mm.as_ref(), &candidates)?;
            if let Some(cf) = &content_free {
                ll = crate::model::class_scores::calibrate(&ll, cf);
            }
            let p = crate::model::class_scores::probabilities(&ll);
            let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, _)| ctx.labels[k].clone());
            (best, labels.iter().zip(&p).map(|(l, v)| format!("{l} {v:.3}")).collect::<Vec<_>>().join(", "))
        } else {
            let ids = generate_one(ctx.model, &prompt, mm.as_ref(), &opts, &mut rng)?;
            let generated = ctx.tokenizer.decode(&ids)?;
            (extract_label(&generated, &labels, e.label_extraction), generated)
        };
        out.push(Some(Prediction {
            id: sample.id.clone(),
            label: sample.label.clone().unwrap_or_default(),
            unparsed: label.is_none(),
            prediction: label.unwrap_or_else(|| "unparsed".to_string()),
            text: generated,
        }));
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Writes `predictions` as JSON lines to `req.predictions` and scores them.
fn write_and_score(ctx: &EvalContext, predictions: &[Prediction], req: &EvalRequest) -> Result<EvalOutcome, EvalError> {
    if predictions.is_empty() {
        return Err(EvalError::Empty { split: req.split.to_string() });
    }
    let path = req.predictions.to_path_buf();
    let io = |source| EvalError::Io { path: path.display().to_string(), source };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    for p in predictions {
        serde_json::to_writer(&mut out, p).map_err(|err| io(std::io::Error::other(err)))?;
        writeln!(out).map_err(io)?;
    }
    out.flush().map_err(io)?;
    let truth: Vec<String> = predictions.iter().map(|p| p.label.clone()).collect();
    let pred: Vec<String> = predictions.iter().map(|p| p.prediction.clone()).collect();
    let labels: Vec<&str> = ctx.labels.iter().map(String::as_str).collect();
    let unparsed = predictions.iter().filter(|p| p.unparsed).count();
    Ok(EvalOutcome { split: req.split.to_string(), task: req.task.to_string(), unparsed, report: classification_report(&truth, &pred, &labels) })
}
