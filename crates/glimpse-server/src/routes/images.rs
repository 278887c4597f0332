//! `POST /v1/images/generations`: OpenAI's Images API on a discrete-token
//! model. Each image is drawn on a blocking thread (codes sampled with
//! classifier-free guidance, decoded by the model's VQ) and sent inline as
//! base64 PNG, the bytes `glimpse draw` writes for the same settings.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use glimpse_engine::pipeline::discrete::{png_bytes, MODEL_TYPE};
use glimpse_engine::{LoadedModel, ModelKind};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;
use crate::openai::ImagesRequest;
use crate::routes::body::JsonBody;
use crate::routes::generate::unix_now;

const PATH: &str = "/v1/images/generations";

pub async fn generations(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<ImagesRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = draw(&state, body).await;
    let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
    state.metrics.request(PATH, status);
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok((model, body)) => {
            let images = body["data"].as_array().map_or(0, Vec::len);
            tracing::info!(model = %model, status, images, duration_ms, "drawing");
            Json(body).into_response()
        }
        Err(e) => {
            tracing::warn!(status, duration_ms, error = %e.message, "drawing");
            e.into_response()
        }
    }
}

/// The drawn images' response body, and the model's name.
async fn draw(
    state: &AppState,
    body: Result<JsonBody<ImagesRequest>, ApiError>,
) -> Result<(String, Value), ApiError> {
    let JsonBody(request) = body?;
    let model = drawing_model(state, request.model.as_deref())?;
    let (n, opts) = request.draw_options()?;
    check_size(&model, request.size.as_deref())?;
    let (first_seed, cfg) = (opts.sampling.seed, opts.cfg_scale);
    let caption = request.prompt.clone();
    let drawer = model.clone();
    // Sampling and decoding are CPU work: off the async threads.
    let drawn = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| {
                let mut o = opts.clone();
                o.sampling.seed = first_seed.wrapping_add(i as u64);
                png_bytes(&drawer.draw(&caption, &o)?.image)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("drawing task failed: {e}"),
        )
    })??;
    let data: Vec<Value> = drawn
        .iter()
        .map(|png| json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png)}))
        .collect();
    let body = json!({
        "created": unix_now(),
        "data": data,
        // not OpenAI's: what reproduces the drawings with `glimpse draw`
        "glimpse": {
            "model": model.id,
            // as sent (any integer), or the fresh one (under 2^53)
            "seed": request.seed.unwrap_or(first_seed as i64),
            "cfg": cfg,
        },
    });
    Ok((model.id.clone(), body))
}

/// The model a request names (any kind, refused unless it draws), or the
/// first loaded model that draws.
fn drawing_model(state: &AppState, name: Option<&str>) -> Result<Arc<LoadedModel>, ApiError> {
    let model = match name {
        Some(_) => state.model(name, &[ModelKind::Vlm, ModelKind::Lm, ModelKind::Embedding])?,
        None => state
            .models()?
            .iter()
            .find(|m| m.can_draw())
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no loaded model draws images (a discrete-token model, {MODEL_TYPE}, does)"
                ))
                .param("model")
            })?,
    };
    model
        .check_draws()
        .map_err(|e| ApiError::from(e).param("model"))?;
    Ok(model)
}

/// `size` must be the model's own (`WIDTHxHEIGHT`), `auto` or absent.
fn check_size(model: &LoadedModel, size: Option<&str>) -> Result<(), ApiError> {
    let Some(side) = model.image_size() else {
        return Ok(());
    };
    let own = format!("{side}x{side}");
    match size {
        None | Some("auto") => Ok(()),
        Some(s) if s == own => Ok(()),
        Some(s) => Err(ApiError::bad_request(format!(
            "size \"{s}\": model \"{}\" draws {own} images only (send size \"{own}\" or leave it out)",
            model.id
        ))
        .param("size")),
    }
}
