//! Evaluation over a split: generate, extract labels, score.

use std::io::Write;
use std::path::Path;

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

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
}

/// One line of `predictions.jsonl`.
#[derive(Debug, Clone, Serialize)]
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
}

/// Generates an answer for each of the pool samples `items`, writes the predictions (JSON lines),
/// returns the scores. A sample whose text names no label is predicted as the string `unparsed` (always
/// wrong) and flagged.
pub fn evaluate(ctx: &EvalContext, items: &[usize], req: &EvalRequest) -> Result<EvalOutcome, EvalError> {
    let e = &ctx.recipe.eval;
    let labelled: Vec<usize> = items.iter().copied().filter(|&i| ctx.pool[i].label.is_some()).collect();
    let take = if req.limit > 0 { req.limit.min(labelled.len()) } else { labelled.len() };
    if take == 0 {
        return Err(EvalError::Empty { split: req.split.to_string() });
    }
    let pool = ctx.recipe.prompt.instructions_for(req.task);
    let instruction = pool.first().map(String::as_str).unwrap_or("");
    let labels: Vec<&str> = ctx.labels.iter().map(String::as_str).collect();
    let path = req.predictions.to_path_buf();
    let io = |source| EvalError::Io { path: path.display().to_string(), source };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    let bar = crate::progress::bar(take as u64, "evaluate", ctx.show_progress);
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.recipe.seed);
    let opts = GenerateOptions::greedy(e.max_new_tokens);
    let (mut truth, mut pred, mut unparsed) = (Vec::new(), Vec::new(), 0);
    for i in labelled.into_iter().take(take) {
        let sample = &ctx.pool[i];
        let text = batch::prompt_text(sample, req.task, instruction, &ctx.template, ctx.recipe.prompt.transcript.included());
        let prompt = batch::tokenize_eval(ctx.tokenizer, &text, ctx.recipe.prompt.eval_layout)?;
        let media = match ctx.store.batch(ctx.pool, &[i], ctx.device) {
            Ok((media, _)) => media,
            // Unreadable under `on_error = "skip"`: reported with the skipped samples, not scored.
            Err(InputError::EmptyBatch(_)) => {
                bar.inc(1);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mm = media.tokens(ctx.model, true, true)?;
        let ids = generate_one(ctx.model, &prompt, mm.as_ref(), &opts, &mut rng)?;
        let generated = ctx.tokenizer.decode(&ids)?;
        let label = extract_label(&generated, &labels, e.label_extraction);
        let flagged = label.is_none();
        unparsed += flagged as usize;
        let p = Prediction {
            id: sample.id.clone(),
            label: sample.label.clone().unwrap_or_default(),
            prediction: label.unwrap_or_else(|| "unparsed".to_string()),
            unparsed: flagged,
            text: generated,
        };
        serde_json::to_writer(&mut out, &p).map_err(|err| io(std::io::Error::other(err)))?;
        writeln!(out).map_err(io)?;
        truth.push(p.label);
        pred.push(p.prediction);
        bar.inc(1);
    }
    out.flush().map_err(io)?;
    bar.finish_and_clear();
    if truth.is_empty() {
        return Err(EvalError::Empty { split: req.split.to_string() });
    }
    Ok(EvalOutcome { split: req.split.to_string(), task: req.task.to_string(), unparsed, report: classification_report(&truth, &pred, &labels) })
}
