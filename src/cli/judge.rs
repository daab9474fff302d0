//! `emollama judge`: EMER clue and label overlap of predicted descriptions, by an LLM judge.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emollama::eval::judge::{self, HttpJudge, Judge, LocalJudge};
use emollama::registry::Registry;

/// Judge predicted emotion descriptions against true ones (EMER clue and label overlap, 1-10) with a
/// local LLM or an OpenAI-compatible endpoint.
#[derive(clap::Args)]
pub struct Args {
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
}

/// `local:NAME` (registry LLM or path), `openai` (OPENAI_BASE_URL) or an OpenAI-compatible base URL.
pub fn make_judge(spec: &str, model: &str, max_tokens: usize) -> Result<Box<dyn Judge>> {
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

impl Args {
    pub fn run(self) -> Result<()> {
        let truth: std::collections::HashMap<String, String> = judge::read_descriptions(&self.references)?.into_iter().collect();
        let mut pairs: Vec<(String, String, String)> = Vec::new();
        let mut unmatched = 0usize;
        for (name, pred) in judge::read_descriptions(&self.predictions)? {
            match truth.get(&name) {
                Some(t) => pairs.push((name, t.clone(), pred)),
                None => unmatched += 1,
            }
        }
        if pairs.is_empty() {
            bail!("no prediction in `{}` has a reference in `{}` (names must match)", self.predictions.display(), self.references.display());
        }
        if self.limit > 0 {
            pairs.truncate(self.limit);
        }
        let j = make_judge(&self.judge, &self.model, self.max_tokens)?;
        let bar = emollama::progress::bar(pairs.len() as u64, "judge", std::io::stderr().is_terminal());
        let report = judge::judge_pairs(j.as_ref(), &pairs, Some(&bar))?;
        bar.finish_and_clear();
        if let Some(path) = &self.out {
            let lines: String = report.items.iter().filter_map(|i| serde_json::to_string(i).ok()).map(|l| l + "\n").collect();
            std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
        }
        let summary = serde_json::json!({
            "judge": report.judge, "n": report.n, "unmatched_predictions": unmatched,
            "clue_overlap": report.clue_overlap, "label_overlap": report.label_overlap,
            "clue_unparsed": report.clue_unparsed, "label_unparsed": report.label_unparsed,
        });
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            let show = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            println!(
                "judge {}: {} pairs; clue overlap {} ({} unparsed); label overlap {} ({} unparsed)",
                report.judge,
                report.n,
                show(report.clue_overlap),
                report.clue_unparsed,
                show(report.label_overlap),
                report.label_unparsed
            );
        }
        Ok(())
    }
}
