//! glimpse's HTTP server: OpenAI-compatible endpoints over `glimpse-engine`.
//! Nothing model-specific lives here: requests become engine calls, engine
//! events become JSON and server-sent events.
//!
//! - [`app`]: state, router, API key, CORS, body cap, lifecycle;
//! - [`routes`]: `/v1/chat/completions`, `/v1/completions`,
//!   `/v1/embeddings`, `/v1/images/generations` (discrete-token models),
//!   `/v1/models`;
//! - [`openai`]: request bodies as OpenAI clients send them;
//! - [`media`]: image URLs to bytes under the media policy;
//! - [`metrics`]: Prometheus text at `/metrics`;
//! - [`error`]: OpenAI error bodies.

pub mod app;
pub mod error;
pub mod media;
pub mod metrics;
pub mod openai;
pub mod routes;

pub use app::{start, ModelSpec, Running, ServerOptions};
