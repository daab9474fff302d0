//! `emollama score`: metrics of existing predictions against labels, without a model.

use std::path::PathBuf;

use anyhow::{Result, bail};
use emollama::eval::score;

/// Score existing predictions against labels, without a model: MER CSVs (`name, discrete, valence` or
/// `name, openset`) or a run's predictions.jsonl.
#[derive(clap::Args)]
pub struct Args {
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
}

impl Args {
    pub fn run(self) -> Result<()> {
        let truth = score::read_rows(&self.labels)?;
        let pred = score::read_rows(&self.predictions)?;
        let scores = match &self.judge {
            None => score::score(&truth, &pred, &self.metrics)?,
            Some(spec) => {
                let j = super::judge::make_judge(spec, &self.judge_model, 256)?;
                let grouping = emollama::eval::judge::JudgeGrouping::new(j.as_ref());
                let mut s = score::score_with(&truth, &pred, &self.metrics, &grouping)?;
                if let Some(e) = grouping.failed.borrow().as_ref() {
                    bail!("the judge failed while grouping synonyms: {e}");
                }
                s.insert("ov_grouping_unparsed".into(), serde_json::json!(grouping.unparsed.get()));
                s.insert("ov_grouping_judge".into(), serde_json::json!(j.name()));
                s
            }
        };
        let text = if self.json {
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
        if let Some(dir) = &self.report {
            let title = format!("{} scored against {}", self.predictions.display(), self.labels.display());
            let files = emollama::report::evaluation::write_evaluation_report(dir, &title, &scores)?;
            tracing::info!(report = %dir.join("index.html").display(), files = files.len(), "evaluation report");
        }
        super::write_stdout(&text, "scores")
    }
}
