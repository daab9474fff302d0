//! `emollama predict`: a model applied to a user's videos or audio files, one JSON line per clip.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use emollama::predict::{self, PredictOptions, PredictTask, TranscriptMode};

/// The emotion, the class probabilities and the reasoning for each clip of a file, a folder, a
/// manifest (`.csv`: `path[,transcript][,id]`; `.jsonl`: `path`/`file`, `transcript`, `id`) or a
/// remote folder (s3://, http(s)://), through the same pipeline as the model's runs. Resumable with
/// --out: clips finished before (same file, model and options) are skipped. Exit status: 0 every clip
/// done, 3 some clips failed (each has an error line), 1 nothing could run.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its best checkpoint), a checkpoint directory or .safetensors file inside one,
    /// an imported model's directory (`emollama import`), or a recipe.
    #[arg(long)]
    model: PathBuf,
    /// A video or audio file, a folder of them (a `clip.txt` beside `clip.mp4` is its transcript), a
    /// .csv / .jsonl manifest; local or s3:// / http(s)://.
    #[arg(long)]
    input: String,
    /// Output JSON lines (resumable); without it, lines go to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// emotion (class scores), reason (generated reasoning and its label), or both.
    #[arg(long, value_enum, default_value = "both")]
    task: PredictTask,
    /// Which modalities to feed: audio, video or audio,video (each only where the file has it).
    #[arg(long, value_delimiter = ',', default_value = "audio,video")]
    modalities: Vec<ModalityArg>,
    /// Clips fetched and decoded in parallel ahead of the model.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Longer clips get an error line instead of being decoded.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Where transcripts come from when the input gives none: auto (speech-to-text when the model's
    /// prompt carries a transcript and a speech model is installed), asr (required), none.
    #[arg(long, value_enum, default_value = "auto")]
    transcript: TranscriptMode,
    /// The speech-to-text model's folder (default: Whisper tiny.en where `just fetch-models` puts it).
    #[arg(long)]
    asr_model: Option<PathBuf>,
    /// Overrides of the model's recipe, e.g. `--set runtime.device=cuda`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModalityArg {
    Audio,
    Video,
}

impl Args {
    /// Runs and maps the outcome to the exit status.
    pub fn run_with_status(self) -> ExitCode {
        super::batch_status(self.run())
    }

    /// The number of clips that failed.
    fn run(self) -> Result<usize> {
        let show_progress = super::show_progress(true, self.no_progress);
        let model = predict::model::PredictModel::open(&self.model, &self.sets)?;
        let r = model.recipe();
        let storage = emollama::storage::Storage::new(r.storage.clone(), &emollama::storage::cache_root(&r.runtime.cache_dir))?;
        let clips = predict::inputs::list_clips(&self.input, &storage)?;
        // Speech-to-text: required with --transcript asr, used by `auto` when the model's prompt carries
        // a transcript and the model is installed.
        let asr = predict::load_asr(self.transcript, r.prompt.transcript.included(), self.asr_model.as_deref()).map_err(anyhow::Error::msg)?;
        let opts = PredictOptions {
            task: self.task,
            use_video: self.modalities.contains(&ModalityArg::Video),
            use_audio: self.modalities.contains(&ModalityArg::Audio),
            batch: self.batch.max(1),
            max_seconds: self.max_seconds,
            transcript: self.transcript,
            asr: asr.as_ref().map(|a| a as &dyn predict::SpeechToText),
            show_progress,
            caption: false,
        };
        let mut sink = predict::output::LineSink::open(self.out.as_deref())?;
        tracing::info!(clips = clips.len(), finished_before = sink.finished_before(), model = %model.described, "predicting");
        let summary = predict::predict(&model, &clips, &opts, &mut sink)?;
        eprintln!("{}", summary.table());
        Ok(summary.failed.len())
    }
}
