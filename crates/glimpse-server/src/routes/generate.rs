//! `POST /v1/chat/completions` and `POST /v1/completions`: the request
//! becomes an engine prompt (images and videos fetched under the media
//! policy, each video's bytes in a temporary file the engine's video loader
//! reads while the prompt is prepared), the engine's events become one JSON
//! response or server-sent events.
//!
//! Streams follow OpenAI's: a first chunk whose delta carries the role (chat),
//! content chunks, a last chunk with `finish_reason`, a usage chunk with
//! empty `choices` when `stream_options.include_usage`, then `data: [DONE]`.
//! A client that disconnects drops the event receiver, which cancels the
//! sequence and frees its slot.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use glimpse_engine::{
    Admitted, Event, FrameSampling, GenerateParams, ImageInput, LoadedModel, Message, ModelKind,
    Part, Prompt, Summary, VideoInput,
};
use glimpse_infer::FinishReason;
use serde_json::{json, Value};
use tempfile::TempPath;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::app::AppState;
use crate::error::ApiError;
use crate::media::{fetch_image, fetch_video, MediaError};
use crate::openai::{ChatRequest, CompletionRequest, PartIn, SamplingFields};
use crate::routes::body::JsonBody;

/// Which endpoint's shapes a response takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Text,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Text => "/v1/completions",
        }
    }

    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Text, _) => "text_completion",
        }
    }
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let JsonBody(request) = body?;
        let model = state.model(request.model.as_deref(), &[ModelKind::Vlm, ModelKind::Lm])?;
        let params = request.sampling.params()?;
        let (messages, videos) = chat_messages(&state, &request, &model).await?;
        Ok::<_, ApiError>((
            model,
            Prompt::Chat(messages),
            params,
            request.sampling,
            videos,
        ))
    }
    .await;
    respond(state, Api::Chat, started, result).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let JsonBody(request) = body?;
        let model = state.model(request.model.as_deref(), &[ModelKind::Lm, ModelKind::Vlm])?;
        let params = request.sampling.params()?;
        let text = match &request.prompt {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                items[0].as_str().unwrap_or_default().to_string()
            }
            _ => {
                return Err(ApiError::bad_request(
                    "prompt must be a string (or a list of one string)",
                )
                .param("prompt"))
            }
        };
        let prompt = Prompt::Raw {
            text,
            images: Vec::new(),
            videos: Vec::new(),
        };
        Ok((model, prompt, params, request.sampling, Vec::new()))
    }
    .await;
    respond(state, Api::Text, started, result).await
}

/// Chat messages with their images and videos fetched, after counting them
/// against the per-request limits (before any fetch or decode); with the
/// temporary files holding the videos, which must outlive the prompt's
/// preparation.
async fn chat_messages(
    state: &AppState,
    request: &ChatRequest,
    model: &LoadedModel,
) -> Result<(Vec<Message>, Vec<TempPath>), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("messages is empty").param("messages"));
    }
    let parsed = request
        .messages
        .iter()
        .map(|m| Ok((m, m.parts()?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let images = parsed
        .iter()
        .flat_map(|(_, parts)| parts)
        .filter(|p| matches!(p, PartIn::ImageUrl(_)))
        .count();
    if images > 0 && !model.accepts_images() {
        // Refused before any image is fetched or decoded.
        return Err(ApiError::bad_request(format!(
            "model \"{}\" is a language model and reads no images",
            model.id
        ))
        .param("messages"));
    }
    let max = state.options.max_images_per_request;
    if images > max {
        return Err(ApiError::bad_request(format!(
            "the request has {images} images; this server takes at most {max} per request (--max-images-per-request)"
        ))
        .param("messages"));
    }
    let videos = parsed
        .iter()
        .flat_map(|(_, parts)| parts)
        .filter(|p| matches!(p, PartIn::VideoUrl { .. }))
        .count();
    if videos > 0 && !model.accepts_videos() {
        // Refused before any video is fetched or decoded.
        return Err(ApiError::bad_request(format!(
            "model \"{}\" is a {} model, which takes no video input (qwen2_vl and llava_next_video models do)",
            model.id,
            model.model_type()
        ))
        .param("messages"));
    }
    let max = state.options.max_videos_per_request;
    if videos > max {
        return Err(ApiError::bad_request(format!(
            "the request has {videos} videos; this server takes at most {max} per request (--max-videos-per-request)"
        ))
        .param("messages"));
    }
    let mut messages = Vec::with_capacity(parsed.len());
    let mut held = Vec::new();
    let (mut index, mut video_index) = (0, 0);
    for (m, parts) in parsed {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(format!(
                    "message role \"{other}\" is not supported (system, user, assistant)"
                ))
                .param("messages"))
            }
        };
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            out.push(match part {
                PartIn::Text(t) => Part::Text(t),
                PartIn::ImageUrl(url) => {
                    index += 1;
                    let fetched = fetch_image(&url, &state.options.media)
                        .await
                        .map_err(|e| media_error(e, "image", index))?;
                    Part::Image(ImageInput {
                        // DataError says "image NAME: ...".
                        name: format!("{index} ({})", fetched.name),
                        bytes: fetched.bytes,
                    })
                }
                PartIn::VideoUrl {
                    url,
                    num_frames,
                    fps,
                } => {
                    video_index += 1;
                    let sampling = video_sampling(state, num_frames, fps, video_index)?;
                    let fetched = fetch_video(&url, &state.options.media)
                        .await
                        .map_err(|e| media_error(e, "video", video_index))?;
                    let file = video_file(fetched.bytes).await?;
                    let input = VideoInput::new(file.to_path_buf(), sampling)
                        // DataError says "video NAME: ...".
                        .labelled(format!("{video_index} ({})", fetched.name));
                    held.push(file);
                    Part::Video(input)
                }
            });
        }
        messages.push(Message {
            role: role.to_string(),
            parts: out,
        });
    }
    Ok((messages, held))
}

/// A media fetch's error: 400 when the requester is at fault, else 502.
fn media_error(e: MediaError, what: &str, index: usize) -> ApiError {
    let status = if e.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::BAD_GATEWAY
    };
    ApiError::new(status, format!("{what} {index}: {e}")).param("messages")
}

/// How video `index`'s frames are sampled: its part's `num_frames` or `fps`,
/// else the model's video processor's defaults, never more than the
/// server's `--max-video-frames`.
fn video_sampling(
    state: &AppState,
    num_frames: Option<usize>,
    fps: Option<f64>,
    index: usize,
) -> Result<FrameSampling, ApiError> {
    let most = state.options.max_video_frames;
    if let Some(n) = num_frames.filter(|&n| n > most) {
        return Err(ApiError::bad_request(format!(
            "video {index}: num_frames {n} is over this server's limit of {most} frames per video (--max-video-frames)"
        ))
        .param("messages"));
    }
    Ok(FrameSampling {
        frames: num_frames,
        fps,
        max_frames: Some(most),
    })
}

/// A fetched video's bytes in a temporary file (the video loader reads a
/// path: GIF / WebP stream from it, ffmpeg reads it as stdin); removed when
/// the returned path is dropped.
async fn video_file(bytes: Vec<u8>) -> Result<TempPath, ApiError> {
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<TempPath> {
        let mut file = tempfile::Builder::new()
            .prefix("glimpse-video-")
            .tempfile()?;
        file.write_all(&bytes)?;
        file.flush()?;
        Ok(file.into_temp_path())
    })
    .await;
    match written {
        Ok(Ok(path)) => Ok(path),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not write the video to a temporary file: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("video file task failed: {e}"),
        )),
    }
}

/// A request's model, prompt, settings, and the temporary files its
/// videos are in.
type Parsed = (
    Arc<LoadedModel>,
    Prompt,
    GenerateParams,
    SamplingFields,
    Vec<TempPath>,
);

async fn respond(
    state: Arc<AppState>,
    api: Api,
    started: Instant,
    parsed: Result<Parsed, ApiError>,
) -> Response {
    let request_id = format!(
        "{}-{:016x}",
        if api == Api::Chat { "chatcmpl" } else { "cmpl" },
        request_number()
    );
    let (model, prompt, params, fields, video_files) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(&state, api, &request_id, None, started, e),
    };
    let (tx, rx) = unbounded_channel();
    let engine_model = model.clone();
    // Tokenising and encoding images and videos is CPU work: off the async
    // threads. The videos are read while the prompt is prepared, before
    // `generate` returns; their files go then.
    let admitted = tokio::task::spawn_blocking(move || {
        let admitted = engine_model.generate(&prompt, &params, tx);
        drop(video_files);
        admitted
    })
    .await;
    let admitted = match admitted {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return fail(&state, api, &request_id, Some(&model.id), started, e.into()),
        Err(e) => {
            let e = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("request task failed: {e}"),
            );
            return fail(&state, api, &request_id, Some(&model.id), started, e);
        }
    };
    let call = Call {
        state,
        api,
        id: request_id,
        model,
        created: unix_now(),
        started,
        admitted,
    };
    if fields.stream {
        call.stream(rx, fields.include_usage()).into_response()
    } else {
        call.collect(rx).await
    }
}

/// An accepted generation request on its way to the client.
struct Call {
    state: Arc<AppState>,
    api: Api,
    id: String,
    model: Arc<LoadedModel>,
    created: u64,
    started: Instant,
    admitted: Admitted,
}

impl Call {
    /// Waits for the whole answer: one JSON response.
    async fn collect(self, mut rx: UnboundedReceiver<Event>) -> Response {
        let mut timer = TokenTimer::new(self.started);
        while let Some(event) = rx.recv().await {
            match event {
                Event::Token { .. } => timer.token(&self.state, &self.model.id),
                Event::Done(summary) => {
                    let body = self.completion_body(&summary);
                    self.finished(200, &summary, &timer);
                    return Json(body).into_response();
                }
                Event::Error(msg) => {
                    let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg);
                    return fail(
                        &self.state,
                        self.api,
                        &self.id,
                        Some(&self.model.id),
                        self.started,
                        e,
                    );
                }
            }
        }
        let e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the scheduler dropped the request",
        );
        fail(
            &self.state,
            self.api,
            &self.id,
            Some(&self.model.id),
            self.started,
            e,
        )
    }

    fn completion_body(&self, s: &Summary) -> Value {
        let choice = match self.api {
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": s.text},
                "logprobs": null,
                "finish_reason": finish_reason(s.finish_reason),
            }),
            Api::Text => json!({
                "index": 0,
                "text": s.text,
                "logprobs": null,
                "finish_reason": finish_reason(s.finish_reason),
            }),
        };
        json!({
            "id": self.id,
            "object": self.api.object(false),
            "created": self.created,
            "model": self.model.id,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": usage(s),
        })
    }

    fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        let choice = match self.api {
            Api::Chat => json!({
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish.map(finish_reason),
            }),
            Api::Text => json!({
                "index": 0,
                "text": delta.get("content").cloned().unwrap_or(json!("")),
                "logprobs": null,
                "finish_reason": finish.map(finish_reason),
            }),
        };
        json!({
            "id": self.id,
            "object": self.api.object(true),
            "created": self.created,
            "model": self.model.id,
            "system_fingerprint": null,
            "choices": [choice],
        })
    }

    /// Server-sent events: role chunk, content chunks, the last chunk with
    /// its finish reason, optionally usage, then `[DONE]`.
    fn stream(
        self,
        rx: UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
        let first = (self.api == Api::Chat)
            .then(|| data(&self.chunk(json!({"role": "assistant", "content": ""}), None)));
        let timer = TokenTimer::new(self.started);
        let state = StreamState {
            call: self,
            rx,
            timer,
            include_usage,
            pending: first.into_iter().collect(),
            ended: false,
        };
        let events = stream::unfold(state, |mut s| async move {
            loop {
                if let Some(e) = s.pending.pop_front() {
                    return Some((Ok(e), s));
                }
                if s.ended {
                    return None;
                }
                match s.rx.recv().await {
                    Some(Event::Token { text }) => {
                        s.timer.token(&s.call.state, &s.call.model.id);
                        if !text.is_empty() {
                            s.pending
                                .push_back(data(&s.call.chunk(json!({"content": text}), None)));
                        }
                    }
                    Some(Event::Done(summary)) => {
                        s.pending
                            .push_back(data(&s.call.chunk(json!({}), Some(summary.finish_reason))));
                        if s.include_usage {
                            let mut u = s.call.chunk(json!({}), None);
                            u["choices"] = json!([]);
                            u["usage"] = usage(&summary);
                            s.pending.push_back(data(&u));
                        }
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        s.call.finished(200, &summary, &s.timer);
                        s.ended = true;
                    }
                    Some(Event::Error(msg)) => {
                        let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg);
                        s.pending.push_back(data(&e.body()));
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        log_failure(
                            &s.call.state,
                            s.call.api,
                            &s.call.id,
                            Some(&s.call.model.id),
                            s.call.started,
                            &e,
                        );
                        s.ended = true;
                    }
                    None => {
                        let e = ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the scheduler dropped the request",
                        );
                        s.pending.push_back(data(&e.body()));
                        s.ended = true;
                    }
                }
            }
        });
        Sse::new(events).keep_alive(KeepAlive::default())
    }

    /// Counts and logs a request that ended well.
    fn finished(&self, status: u16, s: &Summary, timer: &TokenTimer) {
        let m = &self.state.metrics;
        m.request(self.api.path(), status);
        m.tokens(&self.model.id, s.prompt_tokens, s.completion_tokens);
        tracing::info!(
            id = %self.id,
            model = %self.model.id,
            status,
            prompt_tokens = s.prompt_tokens,
            image_tokens = self.admitted.image_tokens,
            completion_tokens = s.completion_tokens,
            ttft_ms = timer.first.map_or(0.0, |t| t.as_secs_f64() * 1e3),
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            finish = finish_reason(s.finish_reason),
            "request"
        );
    }
}

/// Client-side timing: time to first token from the request's arrival,
/// and the gaps between tokens, as the client sees them.
struct TokenTimer {
    started: Instant,
    last: Option<Instant>,
    first: Option<std::time::Duration>,
}

impl TokenTimer {
    fn new(started: Instant) -> Self {
        Self {
            started,
            last: None,
            first: None,
        }
    }

    fn token(&mut self, state: &AppState, model: &str) {
        let now = Instant::now();
        match self.last {
            None => {
                let after = now - self.started;
                self.first = Some(after);
                state.metrics.first_token(model, after);
            }
            Some(last) => state.metrics.inter_token(model, now - last),
        }
        self.last = Some(now);
    }
}

struct StreamState {
    call: Call,
    rx: UnboundedReceiver<Event>,
    timer: TokenTimer,
    include_usage: bool,
    pending: std::collections::VecDeque<SseEvent>,
    ended: bool,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "image_tokens": s.image_tokens,
    })
}

/// OpenAI's two reasons: an eos or a stop string is `stop`.
fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
    }
}

fn fail(
    state: &AppState,
    api: Api,
    id: &str,
    model: Option<&str>,
    started: Instant,
    e: ApiError,
) -> Response {
    log_failure(state, api, id, model, started, &e);
    e.into_response()
}

fn log_failure(
    state: &AppState,
    api: Api,
    id: &str,
    model: Option<&str>,
    started: Instant,
    e: &ApiError,
) {
    state.metrics.request(api.path(), e.status.as_u16());
    tracing::warn!(
        id,
        model = model.unwrap_or("-"),
        status = e.status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1e3,
        error = %e.message,
        "request"
    );
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request id: the clock mixed with a counter (unique within a process).
fn request_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t.rotate_left(17) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}
