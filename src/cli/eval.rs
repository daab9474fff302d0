//! `emollama eval`: evaluate given parameters over a split, without training.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Evaluate a model over a split without training: the recipe's model with the parameters of a run
/// directory (its best checkpoint), a checkpoint directory or a .safetensors file; writes a run
/// directory with metrics.json, predictions.jsonl and report.html.
#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    /// Parameters to evaluate (default: the recipe's `eval.checkpoint`; none = zero-shot, the model as
    /// the recipe builds it).
    #[arg(long)]
    checkpoint: Option<String>,
    /// Split to evaluate (default: the recipe's `eval.split`).
    #[arg(long)]
    split: Option<String>,
    /// At most this many samples.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let mut loaded = super::load(&self.recipe, &self.sets)?;
        let r = &mut loaded.recipe;
        r.stages.clear();
        r.eval.enabled = true;
        r.name = format!("{}-eval", r.name);
        if let Some(c) = self.checkpoint {
            r.eval.checkpoint = c;
        }
        if r.eval.checkpoint.is_empty() {
            // Zero-shot: pretrained weights as the recipe names them, trainable parts freshly initialised.
            tracing::warn!("no --checkpoint: evaluating the model as the recipe builds it (pretrained weights, untrained projectors and adapters)");
        }
        if let Some(s) = self.split {
            r.eval.split = s;
        }
        if let Some(l) = self.limit {
            r.eval.limit = l;
        }
        let registry = super::checked_registry(&loaded, &self.recipe)?;
        let show = super::show_progress(loaded.recipe.runtime.progress, self.no_progress);
        let summary = emollama::run::run(&loaded, &registry, show, &emollama::run::Resume::Fresh).with_context(|| format!("evaluating with `{}`", self.recipe.display()))?;
        println!("{}", emollama::run::summary_table(&summary));
        Ok(())
    }
}
