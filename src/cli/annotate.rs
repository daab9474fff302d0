//! `emollama annotate`: pseudo-labels for a dataset's clips, as a `jsonl` dataset with its card.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use emollama::predict::{PredictOptions, PredictTask, TranscriptMode};

/// Annotate the clips of the recipe's dataset with its model (e.g. recipes/annotate_synth.toml: the
/// zero-shot model): per clip the face and voice cues, the transcript, a coarse caption, a reasoning, the
/// label and its confidence, written as a `jsonl` dataset (manifest.jsonl, media/, errors.jsonl) with its
/// card. Resumable: a rerun into the same directory keeps the clips annotated before. Exit status: 0 every
/// clip annotated, 3 some failed (listed in errors.jsonl), 1 nothing could run.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe with an `[annotate]` table (or `zero-shot`'s recipe plus --set annotate.splits=...).
    recipe: PathBuf,
    /// The output directory (default: the recipe's `annotate.out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The speech-to-text model's folder, for clips without a transcript (default: Whisper tiny.en).
    #[arg(long)]
    asr_model: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    pub fn run_with_status(self) -> ExitCode {
        super::batch_status(self.run())
    }

    fn run(self) -> Result<usize> {
        let show_progress = super::show_progress(true, self.no_progress);
        let model = emollama::predict::model::PredictModel::open(&self.recipe, &self.sets)?;
        let r = model.recipe();
        let Some(settings) = r.annotate.clone() else {
            bail!("recipe `{}` has no [annotate] table: add one (splits, out, name, limit), or `--set annotate.out=DIR`", self.recipe.display());
        };
        let out = self.out.clone().unwrap_or_else(|| PathBuf::from(&settings.out));
        let samples = emollama::annotate::source_samples(&model, &settings, show_progress)?;
        // Speech-to-text for the clips without a transcript, when the prompt carries one.
        let needed = r.prompt.transcript.included() && samples.iter().any(|s| s.transcript.is_none());
        let asr = emollama::predict::load_asr(TranscriptMode::Auto, needed, self.asr_model.as_deref()).map_err(anyhow::Error::msg)?;
        let opts = PredictOptions {
            task: PredictTask::Both,
            use_video: true,
            use_audio: true,
            batch: 1,
            max_seconds: 600.0,
            transcript: TranscriptMode::Auto,
            asr: asr.as_ref().map(|a| a as &dyn emollama::predict::SpeechToText),
            show_progress,
            caption: true,
        };
        tracing::info!(clips = samples.len(), out = %out.display(), model = %model.described, "annotating");
        let summary = emollama::annotate::annotate(&model, &samples, &settings, &out, &opts)?;
        eprintln!("{}", summary.table());
        Ok(summary.failed.len())
    }
}
