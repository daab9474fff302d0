//! `emollama serve`: a model behind an HTTP server, with a page to try it on a clip.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use emollama::predict::{PredictTask, TranscriptMode};
use emollama::serve::{ServeConfig, serve};

/// Serves the `predict` pipeline over HTTP: a page (upload or drop a clip; progress, the contact sheet,
/// the label with its class probabilities and the reasoning streamed token by token) and a JSON API
/// (`POST /v1/predict`, `GET /v1/health`, `GET /v1/model`, OpenAI-compatible `POST /v1/chat/completions`).
/// One model instance answers one request at a time; up to --queue more wait, the rest get 429.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory, a checkpoint, an imported model's directory or a recipe (as `predict --model`).
    #[arg(long)]
    model: PathBuf,
    /// Where to listen. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Required as `Authorization: Bearer <token>` on the API (not on the page or /v1/health).
    #[arg(long, env = "EMOLLAMA_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest upload (or fetched file), in MB.
    #[arg(long, default_value_t = 200)]
    max_upload_mb: u64,
    /// Longest clip, in seconds.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Requests that may wait for the model; more get 429.
    #[arg(long, default_value_t = 4)]
    queue: usize,
    /// Seconds a request may take from arrival to answer (then 504).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Let `POST /v1/predict` fetch `{"url": …}` (public addresses only).
    #[arg(long)]
    allow_url: bool,
    /// emotion (class scores), reason (generated reasoning and its label), or both.
    #[arg(long, value_enum, default_value = "both")]
    task: PredictTask,
    /// Where transcripts come from when the client gives none: auto, asr (required), none.
    #[arg(long, value_enum, default_value = "auto")]
    transcript: TranscriptMode,
    /// The speech-to-text model's folder (default: Whisper tiny.en where `just fetch-models` puts it).
    #[arg(long)]
    asr_model: Option<PathBuf>,
    /// Overrides of the model's recipe, e.g. `--set runtime.device=cuda`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let mut config = ServeConfig::new(self.model);
        config.sets = self.sets;
        config.addr = self.addr;
        config.token = self.token.filter(|t| !t.is_empty());
        config.max_upload_bytes = self.max_upload_mb.saturating_mul(1024 * 1024);
        config.max_seconds = self.max_seconds;
        config.queue = self.queue;
        config.timeout = Duration::from_secs(self.timeout);
        config.allow_url = self.allow_url;
        config.task = self.task;
        config.transcript = self.transcript;
        config.asr_model = self.asr_model;
        serve(config, |addr| {
            // On stdout, for scripts and tests that start the server on port 0.
            println!("listening on http://{addr}/");
        })?;
        Ok(())
    }
}
