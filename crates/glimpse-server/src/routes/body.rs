//! The JSON body extractor of every endpoint: axum's, with its
//! rejections (bad JSON, wrong content type, over the body cap) turned
//! into OpenAI error bodies.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(rejection_error(rejection)),
        }
    }
}

fn rejection_error(r: JsonRejection) -> ApiError {
    let status = r.status();
    let msg = match &r {
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this server takes (send smaller images)".to_string()
        }
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with Content-Type: application/json".to_string()
        }
        _ => format!("invalid request body: {}", r.body_text()),
    };
    // axum answers a JSON type mismatch with 422; OpenAI's API with 400.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY
        || status == StatusCode::UNSUPPORTED_MEDIA_TYPE
    {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, msg)
}
