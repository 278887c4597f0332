//! The request bodies of OpenAI's API as the official clients send them
//! (plus vLLM's `video_url` content parts and glimpse's drawing settings),
//! and their conversion into engine requests. Fields glimpse does not act on are accepted and ignored
//! unless ignoring them would change the answer the client expects (`n`,
//! `logprobs`, `tools`), which are refused.

use glimpse_engine::pipeline::DrawOptions;
use glimpse_engine::GenerateParams;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    /// A string, or a list holding one string.
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// What chat and text completions share.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; llama.cpp's and vLLM's servers take it.
    pub top_k: Option<usize>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub n: Option<u64>,
    pub logprobs: Option<Value>,
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    /// A string, a list of content parts, or null (an assistant turn that
    /// only called tools).
    #[serde(default)]
    pub content: Value,
}

impl SamplingFields {
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The engine's generation settings; refuses what glimpse cannot honour.
    pub fn params(&self) -> Result<GenerateParams, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::bad_request(format!(
                    "n = {n}: glimpse returns one choice per request; send n = 1 (or leave it out)"
                ))
                .param("n"));
            }
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| v.as_bool() == Some(true) || v.is_number())
        {
            return Err(ApiError::bad_request("logprobs are not supported").param("logprobs"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_request("tools are not supported").param("tools"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max_tokens {
            Some(0) => {
                return Err(
                    ApiError::bad_request("max_tokens must be at least 1").param("max_tokens")
                )
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::bad_request("stop must be a string or a list of strings")
                        .param("stop")
                })?,
            Some(_) => {
                return Err(
                    ApiError::bad_request("stop must be a string or a list of strings")
                        .param("stop"),
                )
            }
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(
                ApiError::bad_request("stop takes at most 4 non-empty strings").param("stop"),
            );
        }
        for (name, v) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(
                    ApiError::bad_request(format!("{name} must be a finite number")).param(name),
                );
            }
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(
                ApiError::bad_request("temperature must be between 0 and 2").param("temperature")
            );
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(ApiError::bad_request("top_p must be in (0, 1]").param("top_p"));
        }
        Ok(GenerateParams {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: None,
            // OpenAI's seed is any integer; the sampler's is a u64.
            seed: self.seed.map(|s| s as u64),
            stop,
            ignore_eos: false,
        })
    }
}

/// Most images one `/v1/images/generations` request draws (`n`): each is
/// a full sampling run on the CPU, outside the scheduler's slots.
pub const MAX_IMAGES_PER_DRAW: u64 = 4;

/// `POST /v1/images/generations` as OpenAI's clients send it. glimpse's
/// extensions (the Python client's `extra_body`): `cfg` (classifier-free
/// guidance scale), `seed` (image i of `n` is drawn with seed + i),
/// `temperature`, `top_k`, `top_p`, each defaulting as `glimpse draw` does
/// (the seed excepted: a request without one draws a fresh one, which the
/// response names).
/// `quality`, `style`, `background` and `user` are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ImagesRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub n: Option<u64>,
    /// `WIDTHxHEIGHT`; only the model's own size (or `auto`).
    pub size: Option<String>,
    /// `b64_json` only: an offline server hosts no image URLs.
    pub response_format: Option<String>,
    /// `png` only (gpt-image's field).
    pub output_format: Option<String>,
    /// Partial images as server-sent events: not supported.
    #[serde(default)]
    pub stream: bool,
    pub cfg: Option<f32>,
    pub seed: Option<i64>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

impl ImagesRequest {
    /// How many images, and how the first is drawn; refuses what glimpse
    /// cannot honour. Sampling fields are checked as chat completions'.
    pub fn draw_options(&self) -> Result<(usize, DrawOptions), ApiError> {
        let n = self.n.unwrap_or(1);
        if n == 0 {
            return Err(ApiError::bad_request("n must be at least 1").param("n"));
        }
        if n > MAX_IMAGES_PER_DRAW {
            return Err(ApiError::bad_request(format!(
                "n = {n}: glimpse draws at most {MAX_IMAGES_PER_DRAW} images per request"
            ))
            .param("n"));
        }
        match self.response_format.as_deref() {
            None | Some("b64_json") => {}
            Some("url") => {
                return Err(ApiError::bad_request(
                    "response_format \"url\" is not supported: glimpse serves offline and hosts no image URLs; send b64_json (or leave it out)",
                )
                .param("response_format"))
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "response_format \"{other}\" is not supported (b64_json)"
                ))
                .param("response_format"))
            }
        }
        if self.stream {
            return Err(ApiError::bad_request(
                "stream is not supported for images: send stream false",
            )
            .param("stream"));
        }
        if let Some(f) = self.output_format.as_deref().filter(|f| *f != "png") {
            return Err(ApiError::bad_request(format!(
                "output_format \"{f}\" is not supported: glimpse draws PNG"
            ))
            .param("output_format"));
        }
        let sampling = SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            ..SamplingFields::default()
        }
        .params()?;
        let defaults = DrawOptions::with_seed(0);
        let mut opts = DrawOptions {
            cfg_scale: self.cfg.unwrap_or(defaults.cfg_scale),
            sampling: sampling.sampling(defaults.sampling)?,
        };
        if self.seed.is_none() {
            // A fresh seed under 2^53, so that the response's `glimpse.seed`
            // survives any JSON client (JavaScript's numbers included) and
            // `glimpse draw --seed` takes it as is.
            opts.sampling.seed &= (1 << 53) - 1;
        }
        Ok((n as usize, opts))
    }
}

/// One content part of a chat message, as parsed.
pub enum PartIn {
    Text(String),
    /// The URL as given (`data:`, `http(s):` or `file:`).
    ImageUrl(String),
    /// vLLM's `{"type": "video_url", "video_url": {"url": ...}}`, with
    /// glimpse's optional `num_frames` or `fps` (on the part or inside
    /// `video_url`); neither: the model's video processor decides.
    VideoUrl {
        url: String,
        num_frames: Option<usize>,
        fps: Option<f64>,
    },
}

/// A `video_url` part's fields.
fn video_part(p: &Value) -> Result<PartIn, ApiError> {
    let bad = |m: &str| ApiError::bad_request(m).param("messages");
    let field = p.get("video_url");
    let url = field
        .and_then(|f| f.get("url"))
        .or(field)
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a video_url part needs {\"url\": \"...\"}"))?;
    let setting = |key: &str| {
        p.get(key)
            .or_else(|| field.and_then(|f| f.get(key)))
            .filter(|v| !v.is_null())
    };
    let num_frames = setting("num_frames")
        .map(|v| {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .ok_or_else(|| bad("num_frames must be a positive integer"))
        })
        .transpose()?;
    let fps = setting("fps")
        .map(|v| {
            v.as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| bad("fps must be a positive number"))
        })
        .transpose()?;
    if num_frames.is_some() && fps.is_some() {
        return Err(bad("a video_url part takes num_frames or fps, not both"));
    }
    Ok(PartIn::VideoUrl {
        url: url.to_string(),
        num_frames,
        fps,
    })
}

impl ChatMessageIn {
    /// The content as parts; a string is one text part.
    pub fn parts(&self) -> Result<Vec<PartIn>, ApiError> {
        let bad = |m: String| ApiError::bad_request(m).param("messages");
        match &self.content {
            Value::Null => Ok(Vec::new()),
            Value::String(s) => Ok(vec![PartIn::Text(s.clone())]),
            Value::Array(parts) => parts
                .iter()
                .map(|p| {
                    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                    match kind {
                        "text" => p
                            .get("text")
                            .and_then(Value::as_str)
                            .map(|t| PartIn::Text(t.to_string()))
                            .ok_or_else(|| bad("a text part needs a string \"text\"".into())),
                        "image_url" => {
                            let field = p.get("image_url");
                            // {"url": "..."} as OpenAI sends it; a bare string as some clients do
                            field
                                .and_then(|f| f.get("url"))
                                .or(field)
                                .and_then(Value::as_str)
                                .map(|u| PartIn::ImageUrl(u.to_string()))
                                .ok_or_else(|| {
                                    bad("an image_url part needs {\"url\": \"...\"}".into())
                                })
                        }
                        "video_url" => video_part(p),
                        other => Err(bad(format!(
                            "content part type \"{other}\" is not supported (text, image_url, video_url)"
                        ))),
                    }
                })
                .collect(),
            _ => Err(bad(
                "message content must be a string or a list of parts".into()
            )),
        }
    }
}
