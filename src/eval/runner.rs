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
use crate::data::loader::DecodedMedia;
use crate::model::generate::{GenerateOptions, generate_one};
use crate::model::multimodal::EmotionModel;
use crate::model::prompt::ChatTemplate;
use crate::model::tokenizer::TextTokenizer;
use crate::recipe::Recipe;
use crate::train::batch::{self, MediaLayout};

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
    pub layout: MediaLayout,
    pub device: &'a Device,
    pub labels: &'a [String],
    pub show_progress: bool,
}

/// Generates an answer for each sample, writes `predictions.jsonl` into `out_dir`, returns the scores.
/// A sample whose text names no label is predicted as the string `unparsed` (always wrong) and flagged.
pub fn evaluate(ctx: &EvalContext, samples: &[(Sample, DecodedMedia)], out_dir: &Path) -> Result<EvalOutcome, EvalError> {
    let e = &ctx.recipe.eval;
    let labelled: Vec<&(Sample, DecodedMedia)> = samples.iter().filter(|(s, _)| s.label.is_some()).collect();
    let take = if e.limit > 0 { e.limit.min(labelled.len()) } else { labelled.len() };
    if take == 0 {
        return Err(EvalError::Empty { split: e.split.clone() });
    }
    let pool = ctx.recipe.prompt.instructions_for(&e.task);
    let instruction = pool.first().map(String::as_str).unwrap_or("");
    let labels: Vec<&str> = ctx.labels.iter().map(String::as_str).collect();
    let path = out_dir.join("predictions.jsonl");
    let io = |source| EvalError::Io { path: path.display().to_string(), source };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    let bar = crate::progress::bar(take as u64, "evaluate", ctx.show_progress);
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.recipe.seed);
    let opts = GenerateOptions::greedy(e.max_new_tokens);
    let (mut truth, mut pred, mut unparsed) = (Vec::new(), Vec::new(), 0);
    for (sample, media) in labelled.into_iter().take(take) {
        let text = batch::prompt_text(sample, &e.task, instruction, &ctx.template, ctx.recipe.prompt.transcript);
        let prompt = match ctx.recipe.prompt.eval_layout.as_str() {
            "reference" => batch::tokenize_reference_eval(ctx.tokenizer, &text)?,
            _ => batch::tokenize(ctx.tokenizer, &text, None)?,
        };
        let mm = if ctx.recipe.model.use_av {
            ctx.model.encode(&batch::media_batch(&[media], &ctx.layout, ctx.device)?)?
        } else {
            None
        };
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
    Ok(EvalOutcome { split: e.split.clone(), task: e.task.clone(), unparsed, report: classification_report(&truth, &pred, &labels) })
}
