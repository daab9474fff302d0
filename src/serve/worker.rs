//! The one model instance: loaded on its own thread, which takes jobs from a bounded queue one at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::{PrivateDir, ServeConfig, ServeError};
use crate::model::generate::GenerateOptions;
use crate::predict::inputs::Clip;
use crate::predict::model::PredictModel;
use crate::predict::output::PredictionLine;
use crate::predict::{ChatAnswer, ClipOptions, Event, PredictOptions, Predictor, SpeechToText};
use crate::storage::Location;

/// What is loaded (`GET /v1/model`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// What `--model` named, as `predict` describes it.
    pub described: String,
    /// sha256 over the resolved recipe, the vocabulary and the parameters.
    pub fingerprint: String,
    pub recipe_name: String,
    /// The resolved recipe (TOML), as the model was built from it.
    pub recipe: String,
    pub llm: String,
    pub labels: Vec<String>,
    /// The modalities the model reads.
    pub modalities: Vec<&'static str>,
    pub face_front_end: bool,
    /// Whether the model's prompt carries a transcript.
    pub transcript_in_prompt: bool,
    pub speech_to_text: bool,
    pub task: String,
    pub max_new_tokens: usize,
    pub max_seconds: f64,
    pub max_upload_bytes: u64,
    pub url_fetching: bool,
}

/// A message from the worker about one prediction.
#[derive(Debug)]
pub enum Update {
    Event(Event),
    Done(Box<PredictionLine>),
}

/// A message from the worker about one chat completion.
#[derive(Debug)]
pub enum ChatUpdate {
    Token(String),
    Done(Result<ChatAnswer, String>),
}

pub enum Job {
    Predict {
        /// The request's private folder (deleted when the job is dropped) and the file in it.
        dir: PrivateDir,
        file: PathBuf,
        id: String,
        input: String,
        transcript: Option<String>,
        cancel: Arc<AtomicBool>,
        updates: UnboundedSender<Update>,
    },
    Chat {
        system: Option<String>,
        user: String,
        sampling: GenerateOptions,
        seed: u64,
        cancel: Arc<AtomicBool>,
        updates: UnboundedSender<ChatUpdate>,
    },
}

/// Starts the worker thread; returns the queue's sending end once the model is loaded.
pub fn start(config: &ServeConfig) -> Result<(std::sync::mpsc::SyncSender<Job>, ModelInfo), ServeError> {
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(config.queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ModelInfo, String>>();
    let config = config.clone();
    std::thread::Builder::new()
        .name("emollama-model".into())
        .spawn(move || run(config, jobs_rx, ready_tx))
        .map_err(|e| ServeError::Setup(format!("starting the model thread: {e}")))?;
    let info = ready_rx.recv().map_err(|_| ServeError::Model("the model thread stopped while loading".into()))?.map_err(ServeError::Model)?;
    Ok((jobs_tx, info))
}

fn run(config: ServeConfig, jobs: std::sync::mpsc::Receiver<Job>, ready: std::sync::mpsc::Sender<Result<ModelInfo, String>>) {
    let model = match PredictModel::open(&config.model, &config.sets) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let r = model.recipe();
    let asr = match crate::predict::load_asr(config.transcript, r.prompt.transcript.included(), config.asr_model.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let opts = PredictOptions {
        task: config.task,
        use_video: true,
        use_audio: true,
        batch: 1,
        max_seconds: config.max_seconds,
        transcript: config.transcript,
        asr: asr.as_ref().map(|a| a as &dyn SpeechToText),
        show_progress: false,
        caption: false,
    };
    let predictor = match Predictor::new(&model, &opts) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut modalities = Vec::new();
    if r.model.use_av && !model.built.views.is_empty() {
        modalities.push("video");
    }
    if r.model.use_av && !r.model.audio_encoder.is_empty() {
        modalities.push("audio");
    }
    let info = ModelInfo {
        described: model.described.clone(),
        fingerprint: model.fingerprint.clone(),
        recipe_name: r.name.clone(),
        recipe: toml::to_string(r).unwrap_or_default(),
        llm: r.model.llm.clone(),
        labels: model.labels.clone(),
        modalities,
        face_front_end: r.front_end.face.is_some(),
        transcript_in_prompt: r.prompt.transcript.included(),
        speech_to_text: asr.is_some(),
        task: format!("{:?}", config.task).to_lowercase(),
        max_new_tokens: r.eval.max_new_tokens,
        max_seconds: config.max_seconds,
        max_upload_bytes: config.max_upload_bytes,
        url_fetching: config.allow_url,
    };
    if ready.send(Ok(info)).is_err() {
        return;
    }
    // Until every sender (the server) is gone.
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Predict { dir, file, id, input, transcript, cancel, updates } => {
                if cancel.load(Ordering::Relaxed) || updates.is_closed() {
                    tracing::info!(clip = %id, "cancelled before it started");
                    continue;
                }
                let clip = Clip { id: id.clone(), media: Location::Local(file), transcript };
                let t = std::time::Instant::now();
                let mut on = |e: Event| !cancel.load(Ordering::Relaxed) && updates.send(Update::Event(e)).is_ok();
                let mut line = predictor.predict_clip(&clip, ClipOptions { check_extension: false, contact_sheet: true }, &mut on);
                // The client's name for its input, never the server's private path.
                line.input = input;
                tracing::info!(clip = %id, ok = line.ok, label = ?line.label, seconds = t.elapsed().as_secs_f64(), "predicted");
                let _ = updates.send(Update::Done(Box::new(line)));
                drop(dir);
            }
            Job::Chat { system, user, sampling, seed, cancel, updates } => {
                if cancel.load(Ordering::Relaxed) || updates.is_closed() {
                    continue;
                }
                let (mut ids, mut sent) = (Vec::new(), 0usize);
                let mut on_token = |id: u32| {
                    if cancel.load(Ordering::Relaxed) {
                        return false;
                    }
                    ids.push(id);
                    match predictor.decode(&ids) {
                        Ok(text) if text.len() > sent && text.is_char_boundary(sent) => {
                            let delta = text[sent..].to_string();
                            sent = text.len();
                            updates.send(ChatUpdate::Token(delta)).is_ok()
                        }
                        _ => true,
                    }
                };
                let answer = predictor.chat(system.as_deref(), &user, &sampling, seed, &mut on_token);
                let _ = updates.send(ChatUpdate::Done(answer));
            }
        }
    }
}
