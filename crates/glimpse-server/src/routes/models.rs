//! `GET /v1/models`: each loaded model and what it accepts.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = state
        .models()?
        .iter()
        .map(|m| {
            let accepts: &[&str] = match (m.accepts_images(), m.accepts_videos()) {
                (_, true) => &["text", "image", "video"],
                (true, false) => &["text", "image"],
                (false, false) => &["text"],
            };
            json!({
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": "glimpse",
                "glimpse": {
                    "kind": m.kind().as_str(),
                    "accepts": accepts,
                    "context_length": m.context_length(),
                    // /v1/images/generations takes it, at this size
                    "draws": m.image_size().map(|s| format!("{s}x{s}")),
                },
            })
        })
        .collect();
    state.metrics.request("/v1/models", 200);
    Ok(Json(json!({"object": "list", "data": data})))
}
