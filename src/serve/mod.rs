//! `emollama serve`: the `predict` pipeline behind an HTTP server, with a page to try a model on a clip.
//!
//! One model instance lives on one worker thread (`worker`); requests reach it through a bounded queue
//! (full: 429) and wait for it at most `timeout` (then 504, and the clip is cancelled at its next
//! step). Uploads are streamed into a private temporary folder (mode 0700) under a name the server
//! chooses, probed by content before they are queued, and deleted when their request is done; no path
//! from the client ever reaches the filesystem. The server binds to loopback by default and needs a
//! bearer token for any other address. Fetching a URL is off unless enabled, and then refuses any
//! address that is not public (checked again at connect time, redirects included).
//!
//! Endpoints: `GET /` (the page and its embedded assets), `GET /v1/health`, `GET /v1/model`,
//! `POST /v1/predict` (multipart `file` [+ `transcript`], or JSON `{"url", "transcript"}`; `?stream=true`
//! answers with server-sent events), `POST /v1/chat/completions` (OpenAI-compatible, text only).

mod api;
mod net;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::predict::{PredictTask, TranscriptMode};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--addr {addr}: {detail}")]
    Bind { addr: SocketAddr, detail: String },
    #[error("--model: {0}")]
    Model(String),
    #[error("{0}")]
    Setup(String),
}

/// What `emollama serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    /// `KEY=VALUE` overrides of the model's recipe.
    pub sets: Vec<String>,
    pub addr: SocketAddr,
    /// Largest accepted upload (or fetched file), bytes.
    pub max_upload_bytes: u64,
    /// Longer clips are refused (422).
    pub max_seconds: f64,
    /// Requests waiting for the model beyond the one it is working on; more get 429.
    pub queue: usize,
    /// Per request, from arrival to answer (504 after it).
    pub timeout: Duration,
    /// Required as `Authorization: Bearer …` on `/v1/*` (but `/v1/health`) when set; needed for any
    /// non-loopback address.
    pub token: Option<String>,
    /// `POST /v1/predict` with `{"url": …}`: off by default; public addresses only.
    pub allow_url: bool,
    pub task: PredictTask,
    pub transcript: TranscriptMode,
    /// Speech-to-text model folder (default: where `just fetch-models` puts Whisper tiny.en).
    pub asr_model: Option<PathBuf>,
    /// The folder the private upload folder is made in (default: the system's temporary folder).
    pub temp_root: Option<PathBuf>,
}

impl ServeConfig {
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            sets: Vec::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_upload_bytes: 200 * 1024 * 1024,
            max_seconds: 60.0,
            queue: 4,
            timeout: Duration::from_secs(300),
            token: None,
            allow_url: false,
            task: PredictTask::Both,
            transcript: TranscriptMode::Auto,
            asr_model: None,
            temp_root: None,
        }
    }

    /// Refuses what would be unsafe: another address than loopback without a token.
    pub fn check(&self) -> Result<(), ServeError> {
        if !self.addr.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(ServeError::Bind {
                addr: self.addr,
                detail: "not a loopback address: give a bearer token (--token or EMOLLAMA_SERVE_TOKEN) so that only its holders can use the model".into(),
            });
        }
        if self.queue == 0 || self.max_upload_bytes == 0 || self.max_seconds <= 0.0 || self.timeout.is_zero() {
            return Err(ServeError::Setup("--queue, --max-upload-mb, --max-seconds and --timeout must be positive".into()));
        }
        Ok(())
    }
}

/// A private folder for uploads (mode 0700), removed with everything in it when dropped.
pub(crate) struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub(crate) fn create(path: PathBuf) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove an upload folder");
        }
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    pub config: ServeConfig,
    pub model: worker::ModelInfo,
    pub jobs: std::sync::mpsc::SyncSender<worker::Job>,
    /// Requests queued or running.
    pub in_flight: AtomicUsize,
    pub uploads: PrivateDir,
    pub next_id: AtomicU64,
}

impl AppState {
    /// A new private folder for one request's upload.
    pub(crate) fn request_dir(&self) -> std::io::Result<PrivateDir> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        PrivateDir::create(self.uploads.path().join(format!("req-{n}")))
    }
}

/// Loads the model, binds, and serves until Ctrl-C (or SIGTERM). `on_listening` gets the bound address
/// (the port chosen when `addr` has port 0).
pub fn serve(config: ServeConfig, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    config.check()?;
    let root = config.temp_root.clone().unwrap_or_else(std::env::temp_dir);
    let uploads = PrivateDir::create(root.join(format!("emollama-serve-{}-{:016x}", std::process::id(), rand::random::<u64>())))
        .map_err(|e| ServeError::Setup(format!("creating the private upload folder under `{}`: {e}", root.display())))?;
    let (jobs, model) = worker::start(&config)?;
    tracing::info!(model = %model.described, labels = ?model.labels, "model loaded");
    let state = Arc::new(AppState { config: config.clone(), model, jobs, in_flight: AtomicUsize::new(0), uploads, next_id: AtomicU64::new(0) });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| ServeError::Setup(format!("the async runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr).await.map_err(|e| ServeError::Bind { addr: config.addr, detail: e.to_string() })?;
        let local = listener.local_addr().map_err(|e| ServeError::Bind { addr: config.addr, detail: e.to_string() })?;
        tracing::info!(addr = %local, "listening on http://{local}/");
        on_listening(local);
        let app = api::router(state.clone());
        axum::serve(listener, app).with_graceful_shutdown(shutdown()).await.map_err(|e| ServeError::Setup(format!("serving: {e}")))?;
        tracing::info!("stopped");
        Ok::<(), ServeError>(())
    })?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
