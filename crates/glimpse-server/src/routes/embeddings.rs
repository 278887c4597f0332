//! `POST /v1/embeddings` for CLIP / SigLIP models: the same L2-normalised
//! vectors as `glimpse embed`.
//!
//! `input` is a string, a list of strings, or a list mixing strings and
//! image parts. An image is a string holding a data URI
//! (`"data:image/png;base64,..."`, what the official clients can send as
//! a plain input string) or a part `{"type": "image_url", "image_url":
//! {"url": ...}}` (any URL the media policy allows). `encoding_format` is
//! `float` (default) or `base64` (little-endian f32 bytes, as OpenAI's).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use glimpse_engine::{EmbedInput, ImageInput, ModelKind};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;
use crate::media::fetch_image;
use crate::routes::body::JsonBody;

/// Most inputs in one request.
const MAX_INPUTS: usize = 256;

#[derive(Deserialize)]
pub struct EmbeddingRequest {
    model: Option<String>,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<EmbeddingRequest>, ApiError>,
) -> Response {
    let started = std::time::Instant::now();
    match run(&state, body).await {
        Ok(v) => {
            state.metrics.request("/v1/embeddings", 200);
            tracing::info!(
                model = v["model"].as_str().unwrap_or("-"),
                status = 200,
                inputs = v["data"].as_array().map_or(0, Vec::len),
                duration_ms = started.elapsed().as_secs_f64() * 1e3,
                "embeddings request"
            );
            Json(v).into_response()
        }
        Err(e) => {
            state.metrics.request("/v1/embeddings", e.status.as_u16());
            tracing::warn!(
                status = e.status.as_u16(),
                duration_ms = started.elapsed().as_secs_f64() * 1e3,
                error = %e.message,
                "embeddings request"
            );
            e.into_response()
        }
    }
}

async fn run(
    state: &AppState,
    body: Result<JsonBody<EmbeddingRequest>, ApiError>,
) -> Result<Value, ApiError> {
    let JsonBody(request) = body?;
    let model = state.model(request.model.as_deref(), &[ModelKind::Embedding])?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format \"{other}\": use float or base64"
            ))
            .param("encoding_format"))
        }
    };
    if request.dimensions.is_some() {
        return Err(ApiError::bad_request(
            "dimensions is not supported: the model's size is fixed",
        )
        .param("dimensions"));
    }
    let items: Vec<Value> = match request.input {
        Value::String(s) => vec![Value::String(s)],
        Value::Array(items) => items,
        _ => return Err(ApiError::bad_request("input must be a string or a list").param("input")),
    };
    if items.is_empty() || items.len() > MAX_INPUTS {
        return Err(
            ApiError::bad_request(format!("input must hold 1 to {MAX_INPUTS} items"))
                .param("input"),
        );
    }
    let images = items.iter().filter(|v| image_url(v).is_some()).count();
    let max = state.options.max_images_per_request;
    if images > max {
        return Err(ApiError::bad_request(format!(
            "the request has {images} images; this server takes at most {max} per request (--max-images-per-request)"
        ))
        .param("input"));
    }
    let mut inputs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        inputs.push(match (image_url(item), item) {
            (Some(url), _) => {
                let fetched = fetch_image(url, &state.options.media)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("input {i}: {e}")).param("input"))?;
                EmbedInput::Image(ImageInput {
                    name: format!("input {i} ({})", fetched.name),
                    bytes: fetched.bytes,
                })
            }
            (None, Value::String(s)) if !s.is_empty() => EmbedInput::Text(s.clone()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "input {i}: each item is a non-empty string or an image_url part (token-id inputs are not supported)"
                ))
                .param("input"))
            }
        });
    }
    let engine_model = model.clone();
    let rows = tokio::task::spawn_blocking(move || engine_model.embed(&inputs))
        .await
        .map_err(|e| {
            ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })??;
    let data: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = model.count_text_tokens(
        items
            .iter()
            .filter(|v| image_url(v).is_none())
            .filter_map(Value::as_str),
    );
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// The URL of an item that is an image: a `data:image/...` string (any
/// other string is a text), or an `image_url` part.
fn image_url(item: &Value) -> Option<&str> {
    match item {
        Value::String(s) if s.starts_with("data:image/") => Some(s),
        Value::Object(_) if item.get("type").and_then(Value::as_str) == Some("image_url") => {
            let field = item.get("image_url")?;
            field.get("url").or(Some(field)).and_then(Value::as_str)
        }
        _ => None,
    }
}
