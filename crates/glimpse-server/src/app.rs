//! The server's state, router and lifecycle: bind first (so `/health`
//! answers 503 while models load), load, serve until SIGTERM or Ctrl-C,
//! then stop accepting and let in-flight responses finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use glimpse_engine::{LoadedModel, ModelKind, SchedulerOptions};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::media::MediaPolicy;
use crate::metrics::Metrics;
use crate::routes;

/// A model to load: its path and, optionally, the name requests use and a
/// LoRA adapter directory to put on it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub id: Option<String>,
    pub path: PathBuf,
    pub lora: Option<PathBuf>,
}

impl ModelSpec {
    /// `PATH` or `NAME=PATH`.
    pub fn parse(arg: &str) -> Self {
        match arg.split_once('=') {
            Some((id, path)) if !id.is_empty() && !id.contains('/') => Self {
                id: Some(id.to_string()),
                path: PathBuf::from(path),
                lora: None,
            },
            _ => Self {
                id: None,
                path: PathBuf::from(arg),
                lora: None,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub host: String,
    pub port: u16,
    pub models: Vec<ModelSpec>,
    pub scheduler: SchedulerOptions,
    /// Requests must carry `Authorization: Bearer KEY` (but `/health` and the page).
    pub api_key: Option<String>,
    pub media: MediaPolicy,
    pub max_images_per_request: usize,
    /// Most video parts in one chat request.
    pub max_videos_per_request: usize,
    /// Most frames sampled from one video: caps the model's own sampling
    /// and a part's `fps`; a larger `num_frames` is refused.
    pub max_video_frames: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Origins allowed to call the API from a browser (`*` for any); none: same origin only.
    pub cors_origins: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            models: Vec::new(),
            scheduler: SchedulerOptions::default(),
            api_key: None,
            media: MediaPolicy::default(),
            max_images_per_request: 8,
            max_videos_per_request: 2,
            max_video_frames: 64,
            max_body_bytes: 64 << 20,
            cors_origins: Vec::new(),
        }
    }
}

pub struct AppState {
    /// Set once every model has loaded; until then `/health` is 503.
    models: OnceLock<Vec<Arc<LoadedModel>>>,
    pub options: ServerOptions,
    pub metrics: Metrics,
}

impl AppState {
    pub fn models(&self) -> Result<&[Arc<LoadedModel>], ApiError> {
        self.models.get().map(Vec::as_slice).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the models are still loading",
            )
        })
    }

    /// The model a request names, or the first of `kinds` when it names none.
    pub fn model(
        &self,
        name: Option<&str>,
        kinds: &[ModelKind],
    ) -> Result<Arc<LoadedModel>, ApiError> {
        let models = self.models()?;
        let found = match name {
            Some(name) => models.iter().find(|m| m.id == name).ok_or_else(|| {
                let known: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "model \"{name}\" is not loaded (loaded: {})",
                        known.join(", ")
                    ),
                )
                .param("model")
                .code("model_not_found")
            })?,
            None => models
                .iter()
                .find(|m| kinds.contains(&m.kind()))
                .ok_or_else(|| {
                    ApiError::bad_request("no loaded model serves this endpoint").param("model")
                })?,
        };
        if !kinds.contains(&found.kind()) {
            let what: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "model \"{}\" is a {} model; this endpoint takes a {} model",
                found.id,
                found.kind().as_str(),
                what.join(" or ")
            ))
            .param("model"));
        }
        Ok(found.clone())
    }
}

/// A running server: its address, and a handle that stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight responses finish, and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await?
    }

    /// Waits until the server ends (a signal, or a model that failed to load).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Binds, then loads the models in the background and serves. Stops on
/// SIGTERM or Ctrl-C (when `signals`), or through [`Running::stop`].
pub async fn start(options: ServerOptions, signals: bool) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", options.host, options.port))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        models: OnceLock::new(),
        options,
        metrics: Metrics::default(),
    });
    let app = router(state.clone())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();

    let loader = state.clone();
    tokio::task::spawn_blocking(move || {
        let device = glimpse_engine::device::default_device();
        let mut models = Vec::new();
        for spec in &loader.options.models {
            match LoadedModel::load_with_lora(
                &spec.path,
                spec.lora.as_deref(),
                spec.id.clone(),
                loader.options.scheduler,
                &device,
            ) {
                Ok(m) => {
                    tracing::info!(model = %m.id, kind = m.kind().as_str(), path = %spec.path.display(), "loaded");
                    models.push(Arc::new(m));
                }
                Err(e) => {
                    let _ = failed_tx.send(e.to_string());
                    return;
                }
            }
        }
        let _ = loader.models.set(models);
        tracing::info!("ready");
    });

    let task = tokio::spawn(async move {
        let failed = std::sync::Arc::new(tokio::sync::Mutex::new(None::<String>));
        let failed_w = failed.clone();
        let stop = async move {
            tokio::select! {
                _ = rx => {}
                _ = wait_signal(signals) => { tracing::info!("signal received: finishing in-flight requests"); }
                Ok(msg) = failed_rx => { *failed_w.lock().await = Some(msg); }
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await?;
        if let Some(msg) = failed.lock().await.take() {
            anyhow::bail!("{msg}");
        }
        Ok(())
    });
    Ok(Running {
        addr,
        state,
        shutdown: Some(tx),
        task,
    })
}

async fn wait_signal(enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn router(state: Arc<AppState>) -> anyhow::Result<Router> {
    let api = Router::new()
        .route("/v1/models", get(routes::models::list))
        .route("/v1/chat/completions", post(routes::generate::chat))
        .route("/v1/completions", post(routes::generate::completions))
        .route("/v1/embeddings", post(routes::embeddings::embeddings))
        .route("/v1/images/generations", post(routes::images::generations))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let mut app = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        // A bug that panics in a handler answers 500 and leaves the server up.
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error while handling the request",
                )
                .into_response()
            },
        ))
        .with_state(state.clone());
    if !state.options.cors_origins.is_empty() {
        let origins = if state.options.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let list = state
                .options
                .cors_origins
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o)
                        .map_err(|_| anyhow::anyhow!("--cors-origin {o}: not a valid origin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            AllowOrigin::list(list)
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    Ok(app)
}

/// `Authorization: Bearer KEY` on every API route when a key is set.
async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            state.metrics.request(request.uri().path(), 401);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (send Authorization: Bearer KEY)",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const PAGE: &str = include_str!("../static/index.html");

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.models.get() {
        Some(_) => Json(json!({"status": "ok"})).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let models = state.models.get().map(Vec::as_slice).unwrap_or(&[]);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(models),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{} {}: no such endpoint",
            request.method(),
            request.uri().path()
        ),
    )
}
