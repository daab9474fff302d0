//! The routes: the page and its assets, and the JSON API.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::worker::{ChatUpdate, Job, Update};
use super::{AppState, PrivateDir, net};
use crate::model::generate::GenerateOptions;
use crate::predict::Event;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// JSON bodies (a URL, a chat) are small.
const JSON_LIMIT: usize = 1024 * 1024;
/// Room for the multipart framing and a transcript around the file.
const MULTIPART_SLACK: usize = 256 * 1024;
const TRANSCRIPT_LIMIT: usize = 20_000;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX).saturating_add(MULTIPART_SLACK);
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/assets/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/v1/health", get(health))
        .route("/v1/model", get(model))
        .route("/v1/predict", post(predict))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route: see GET /v1/model, POST /v1/predict, POST /v1/chat/completions") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An error answer: `{"error": {"message", "status"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::info!(status = self.status.as_u16(), message = %self.message, "request refused");
        let body = serde_json::json!({"error": {"message": self.message, "status": self.status.as_u16()}});
        let mut r = (self.status, axum::Json(body)).into_response();
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            StatusCode::UNAUTHORIZED => {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        r
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

fn with_page_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    );
    r
}

async fn index() -> Response {
    with_page_headers(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response())
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    with_page_headers(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

/// With a token configured: `Authorization: Bearer <token>`, compared in constant time.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = s.config.token.as_deref().filter(|t| !t.is_empty()) else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same { Ok(()) } else { Err(ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required: `Authorization: Bearer <token>` (the server's --token)")) }
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "in_flight": s.in_flight.load(Ordering::Relaxed),
        "queue": s.config.queue,
    }))
    .into_response()
}

async fn model(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    Ok(axum::Json(&s.model).into_response())
}

/// Counts a request as queued or running until dropped.
struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a slot (the running request or a queued one), or 429 when all are taken.
fn admit(s: &Arc<AppState>) -> Result<InFlight, ApiError> {
    let before = s.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight(s.clone());
    if before > s.config.queue {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "the model is busy and its queue is full: try again shortly"));
    }
    Ok(guard)
}

#[derive(Deserialize, Default)]
struct PredictQuery {
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlBody {
    url: String,
    #[serde(default)]
    transcript: Option<String>,
}

/// The clip's id (for the line): the client's file name reduced to safe characters; never a path.
fn clip_id(name: Option<&str>) -> String {
    let stem = name.map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n)).map(|n| n.rsplit_once('.').map(|(a, _)| a).unwrap_or(n)).unwrap_or("");
    let id: String = stem.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(64).collect();
    if id.is_empty() { "upload".into() } else { id }
}

fn clean_transcript(t: String) -> Result<Option<String>, ApiError> {
    if t.len() > TRANSCRIPT_LIMIT {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the transcript is over {TRANSCRIPT_LIMIT} bytes")));
    }
    let t = t.trim();
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// A received clip, in its request's private folder.
struct Received {
    dir: PrivateDir,
    file: std::path::PathBuf,
    id: String,
    input: String,
    transcript: Option<String>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let text = e.body_text();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, format!("the upload is larger than the limit ({text}); see --max-upload-mb"))
    } else {
        ApiError::new(if status.is_client_error() { status } else { StatusCode::BAD_REQUEST }, format!("malformed multipart body: {text}"))
    }
}

async fn receive_multipart(s: &Arc<AppState>, req: Request) -> Result<Received, ApiError> {
    let mut mp = Multipart::from_request(req, s).await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed multipart body: {}", e.body_text())))?;
    let dir = s.request_dir().map_err(|e| internal("creating the upload folder", e))?;
    // The server's own name: nothing the client sends reaches the filesystem.
    let file = dir.path().join("clip");
    let limit = s.config.max_upload_bytes;
    let (mut got, mut transcript, mut name) = (false, None, None);
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or_default().to_string();
        match field_name.as_str() {
            "file" => {
                if got {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "more than one `file` field: send one clip per request"));
                }
                name = field.file_name().map(str::to_string);
                let mut out = tokio::fs::File::create(&file).await.map_err(|e| internal("writing the upload", e))?;
                let mut total = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    total += chunk.len() as u64;
                    if total > limit {
                        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the upload is larger than the limit of {limit} bytes (--max-upload-mb)")));
                    }
                    out.write_all(&chunk).await.map_err(|e| internal("writing the upload", e))?;
                }
                out.flush().await.map_err(|e| internal("writing the upload", e))?;
                if total == 0 {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "the `file` field is empty"));
                }
                got = true;
            }
            "transcript" => {
                // Read with a bound: a huge text field must not fill the memory.
                let mut t = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    t.extend_from_slice(&chunk);
                    if t.len() > TRANSCRIPT_LIMIT {
                        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the transcript is over {TRANSCRIPT_LIMIT} bytes")));
                    }
                }
                let t = String::from_utf8(t).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the transcript is not UTF-8 text"))?;
                transcript = clean_transcript(t)?;
            }
            other => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("unknown multipart field `{other}`: expected `file` and optionally `transcript`"))),
        }
    }
    if !got {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no `file` field: send the clip as multipart/form-data field `file`"));
    }
    let id = clip_id(name.as_deref());
    Ok(Received { dir, file, input: format!("upload:{id}"), id, transcript })
}

async fn receive_url(s: &Arc<AppState>, req: Request) -> Result<Received, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), JSON_LIMIT).await.map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the JSON body: {e}")))?;
    let body: UrlBody = serde_json::from_slice(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the JSON body: {e} (expected {{\"url\": \"https://…\", \"transcript\": \"…\"}})")))?;
    if !s.config.allow_url {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "fetching URLs is off on this server (start it with --allow-url); upload the file instead"));
    }
    let transcript = body.transcript.map(clean_transcript).transpose()?.flatten();
    let dir = s.request_dir().map_err(|e| internal("creating the upload folder", e))?;
    let file = dir.path().join("clip");
    let (url, dest, limit, timeout) = (body.url.clone(), file.clone(), s.config.max_upload_bytes, s.config.timeout);
    tokio::task::spawn_blocking(move || net::fetch(&url, &dest, limit, timeout))
        .await
        .map_err(|e| internal("the download task", e))?
        .map_err(|e| {
            let status = match &e {
                net::FetchError::Invalid { .. } => StatusCode::BAD_REQUEST,
                net::FetchError::Refused { .. } => StatusCode::FORBIDDEN,
                net::FetchError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                net::FetchError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            };
            ApiError::new(status, e.to_string())
        })?;
    let id = clip_id(url::Url::parse(&body.url).ok().and_then(|u| u.path_segments().and_then(|mut p| p.next_back().map(str::to_string))).as_deref());
    Ok(Received { dir, file, id, input: body.url, transcript })
}

/// Probes the received file by its content: a media file with a video or audio stream, within the
/// duration limit.
async fn probe(s: &AppState, file: &std::path::Path) -> Result<(), ApiError> {
    let path = file.to_path_buf();
    let info = tokio::task::spawn_blocking(move || crate::media::probe(&path)).await.map_err(|e| internal("the probe task", e))?;
    let info = info.map_err(|e| {
        let e = e.to_string().replace(&file.display().to_string(), "the upload");
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("not a readable video or audio file (its content was probed): {e}"))
    })?;
    if info.video_stream.is_none() && info.audio_stream.is_none() {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the file has neither a video nor an audio stream"));
    }
    if info.duration_s > s.config.max_seconds {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("the clip is {:.1} s long, over the limit of {} s (--max-seconds)", info.duration_s, s.config.max_seconds)));
    }
    Ok(())
}

fn queue_error(e: std::sync::mpsc::TrySendError<Job>) -> ApiError {
    match e {
        std::sync::mpsc::TrySendError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "the model is busy and its queue is full: try again shortly"),
        std::sync::mpsc::TrySendError::Disconnected(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model thread has stopped"),
    }
}

async fn predict(State(s): State<Arc<AppState>>, Query(q): Query<PredictQuery>, req: Request) -> Result<Response, ApiError> {
    let deadline = Instant::now() + s.config.timeout;
    authorize(&s, req.headers())?;
    // Counted from arrival: with every slot (the running request and the queue) taken, refused before
    // the body is read, so uploads in progress are bounded too (disk: (queue + 1) × the upload limit).
    let guard = admit(&s)?;
    // Refused before reading a byte when the client announces too much.
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > s.config.max_upload_bytes.saturating_add(MULTIPART_SLACK as u64)) {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the upload is larger than the limit of {} bytes (--max-upload-mb)", s.config.max_upload_bytes)));
    }
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let received = if ctype.starts_with("multipart/form-data") {
        receive_multipart(&s, req).await?
    } else if ctype.starts_with("application/json") {
        receive_url(&s, req).await?
    } else {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data (field `file`, optional `transcript`) or application/json ({\"url\": …})"));
    };
    probe(&s, &received.file).await?;
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let Received { dir, file, id, input, transcript } = received;
    s.jobs.try_send(Job::Predict { dir, file, id, input, transcript, cancel: cancel.clone(), updates: tx }).map_err(queue_error)?;
    if q.stream {
        return Ok(stream_prediction(rx, deadline, cancel, guard).into_response());
    }
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Update::Event(_))) => {}
            Ok(Some(Update::Done(line))) => {
                drop(guard);
                let status = if line.ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
                return Ok((status, axum::Json(line)).into_response());
            }
            Ok(None) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model thread stopped")),
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {} s (--timeout)", s.config.timeout.as_secs())));
            }
        }
    }
}

fn sse_json(name: &str, v: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().event(name).json_data(v).unwrap_or_else(|e| SseEvent::default().event("error").data(format!("{{\"status\":500,\"message\":\"serializing: {e}\"}}")))
}

fn sse_error(status: StatusCode, message: &str) -> SseEvent {
    sse_json("error", &serde_json::json!({"status": status.as_u16(), "message": message}))
}

/// Server-sent events: `stage`, `sheet`, `token`, then `result` (the line) or `error`.
fn stream_prediction(rx: tokio::sync::mpsc::UnboundedReceiver<Update>, deadline: Instant, cancel: Arc<AtomicBool>, guard: InFlight) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures::stream::unfold(Some((rx, guard)), move |st| {
        let cancel = cancel.clone();
        async move {
            let (mut rx, guard) = st?;
            let event = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Update::Event(Event::Stage { stage, detail }))) => sse_json("stage", &serde_json::json!({"stage": stage, "detail": detail})),
                Ok(Some(Update::Event(Event::Token(text)))) => sse_json("token", &serde_json::json!({"text": text})),
                Ok(Some(Update::Event(Event::ContactSheet(png)))) => {
                    let data = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png));
                    sse_json("sheet", &serde_json::json!({"png": data}))
                }
                Ok(Some(Update::Done(line))) => return Some((Ok(sse_json("result", &line)), None)),
                Ok(None) => return Some((Ok(sse_error(StatusCode::SERVICE_UNAVAILABLE, "the model thread stopped")), None)),
                Err(_) => {
                    cancel.store(true, Ordering::Relaxed);
                    return Some((Ok(sse_error(StatusCode::GATEWAY_TIMEOUT, "no answer within the server's --timeout")), None));
                }
            };
            Some((Ok(event), Some((rx, guard))))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: ChatContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl ChatContent {
    fn text(&self) -> Result<String, ApiError> {
        match self {
            Self::Text(t) => Ok(t.clone()),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("content part of type `{kind}`: this endpoint is text only (use POST /v1/predict for clips)"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("\n")),
        }
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

const CHAT_MAX_TOKENS: usize = 1024;

/// OpenAI's chat completions, text only: the system message and the last user message through the
/// model's chat template (earlier turns are not part of the prompt). Greedy unless a temperature is given;
/// `stream: true` answers with OpenAI's `chat.completion.chunk` events.
async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let deadline = Instant::now() + s.config.timeout;
    authorize(&s, &headers)?;
    let bytes = axum::body::to_bytes(body, JSON_LIMIT).await.map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the JSON body: {e}")))?;
    let req: ChatRequest = serde_json::from_slice(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the JSON body: {e}")))?;
    if let Some(m) = req.model.as_deref().filter(|m| !m.is_empty() && *m != s.model.recipe_name && *m != s.model.llm) {
        tracing::debug!(requested = m, "chat: the loaded model answers whatever `model` names");
    }
    let mut system = None;
    let mut user = None;
    for m in &req.messages {
        match m.role.as_str() {
            "system" | "developer" => system = Some(m.content.text()?),
            "user" => user = Some(m.content.text()?),
            "assistant" | "tool" => {}
            other => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("unknown message role `{other}`"))),
        }
    }
    let user = user.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "`messages` has no user message"))?;
    let max_new_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(s.model.max_new_tokens.max(64)).clamp(1, CHAT_MAX_TOKENS);
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) || req.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p) || p == 0.0) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "temperature must be in [0, 2] and top_p in (0, 1]"));
    }
    let sampling = GenerateOptions { temperature, top_p: req.top_p.unwrap_or(1.0), ..GenerateOptions::greedy(max_new_tokens) };
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let guard = admit(&s)?;
    s.jobs.try_send(Job::Chat { system, user, sampling, seed: req.seed.unwrap_or(0), cancel: cancel.clone(), updates: tx }).map_err(queue_error)?;
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if req.stream {
        return Ok(stream_chat(rx, deadline, cancel, guard, format!("chatcmpl-{n}"), s.model.recipe_name.clone(), created).into_response());
    }
    let answer = loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ChatUpdate::Token(_))) => {}
            Ok(Some(ChatUpdate::Done(a))) => break a.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?,
            Ok(None) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model thread stopped")),
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {} s (--timeout)", s.config.timeout.as_secs())));
            }
        }
    };
    drop(guard);
    Ok(axum::Json(serde_json::json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "created": created,
        "model": s.model.recipe_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": if answer.finished { "stop" } else { "length" },
        }],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
    }))
    .into_response())
}

enum ChatStream {
    Running(tokio::sync::mpsc::UnboundedReceiver<ChatUpdate>, InFlight),
    Finishing,
    Ended,
}

/// OpenAI's streamed chat: `chat.completion.chunk` events with the new text, then `[DONE]`.
fn stream_chat(
    rx: tokio::sync::mpsc::UnboundedReceiver<ChatUpdate>,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    guard: InFlight,
    id: String,
    model: String,
    created: u64,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        let v = serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        SseEvent::default().data(v.to_string())
    };
    let stream = futures::stream::unfold(ChatStream::Running(rx, guard), move |st| {
        let (cancel, chunk) = (cancel.clone(), chunk.clone());
        async move {
            match st {
                ChatStream::Ended => None,
                ChatStream::Finishing => Some((Ok(SseEvent::default().data("[DONE]")), ChatStream::Ended)),
                ChatStream::Running(mut rx, guard) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(ChatUpdate::Token(t))) => Some((Ok(chunk(serde_json::json!({"role": "assistant", "content": t}), None)), ChatStream::Running(rx, guard))),
                    Ok(Some(ChatUpdate::Done(Ok(a)))) => Some((Ok(chunk(serde_json::json!({}), Some(if a.finished { "stop" } else { "length" }))), ChatStream::Finishing)),
                    Ok(Some(ChatUpdate::Done(Err(e)))) => Some((Ok(sse_error(StatusCode::INTERNAL_SERVER_ERROR, &e)), ChatStream::Ended)),
                    Ok(None) => Some((Ok(sse_error(StatusCode::SERVICE_UNAVAILABLE, "the model thread stopped")), ChatStream::Ended)),
                    Err(_) => {
                        cancel.store(true, Ordering::Relaxed);
                        Some((Ok(sse_error(StatusCode::GATEWAY_TIMEOUT, "no answer within the server's --timeout")), ChatStream::Ended))
                    }
                },
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_file_names_become_safe_ids() {
        assert_eq!(clip_id(Some("../../etc/passwd")), "passwd");
        assert_eq!(clip_id(Some("C:\\x\\my clip (1).mp4")), "myclip1");
        assert_eq!(clip_id(Some("")), "upload");
        assert_eq!(clip_id(None), "upload");
        assert_eq!(clip_id(Some("WolfgangLanger_Pexels.mp4")), "WolfgangLanger_Pexels");
    }
}
