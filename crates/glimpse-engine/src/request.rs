//! Typed requests: what the CLI and the server both hand the engine.
//! Images arrive as bytes (the caller read the file or fetched the URL
//! under its own policy); the engine decodes them under its pixel limit.
//! Videos arrive as paths (a file or a folder of frames), which the engine
//! samples and decodes frame by frame.

use std::path::{Path, PathBuf};

use glimpse_data::DataError;
/// How a video's frames are sampled (re-exported: part of [`VideoInput`]).
pub use glimpse_data::FrameSampling;

/// One image's encoded bytes (PNG, JPEG, ...) and a printable name for
/// error messages (a path, or "image 2" for inline data).
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl ImageInput {
    /// Reads an image file (see [`glimpse_data::read_image_file`]).
    pub fn from_path(path: &Path) -> Result<Self, DataError> {
        Ok(Self {
            name: path.display().to_string(),
            bytes: glimpse_data::read_image_file(path)?,
        })
    }
}

/// One video: a GIF / WebP / MP4 / WebM / MKV file or a folder of frame
/// images (see [`glimpse_data::load_video`]), and how to sample its frames
/// (`--frames` / `--fps` / `--max-frames`; with neither `frames` nor `fps`
/// the model's video processor decides).
#[derive(Debug, Clone)]
pub struct VideoInput {
    pub path: PathBuf,
    pub sampling: FrameSampling,
    /// What errors call the video; its path when `None`. The server names
    /// a video it was sent ("video 1 (data:video/mp4;base64,...)"), not
    /// the temporary file holding its bytes.
    pub label: Option<String>,
}

impl VideoInput {
    pub fn new(path: impl Into<PathBuf>, sampling: FrameSampling) -> Self {
        Self {
            path: path.into(),
            sampling,
            label: None,
        }
    }

    /// The same video, called `label` in errors.
    pub fn labelled(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The printable name errors use.
    pub fn name(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// One piece of a chat message's content.
#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Image(ImageInput),
    Video(VideoInput),
}

/// A chat turn: `role` is `system`, `user` or `assistant`.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: String,
    pub parts: Vec<Part>,
}

impl Message {
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            parts: vec![Part::Text(text.into())],
        }
    }

    /// The message's text parts joined (what a text-only template sees).
    pub fn joined_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Image(_) | Part::Video(_) => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }

    pub fn images(&self) -> impl Iterator<Item = &ImageInput> {
        self.parts.iter().filter_map(|p| match p {
            Part::Image(i) => Some(i),
            Part::Text(_) | Part::Video(_) => None,
        })
    }

    pub fn videos(&self) -> impl Iterator<Item = &VideoInput> {
        self.parts.iter().filter_map(|p| match p {
            Part::Video(v) => Some(v),
            Part::Text(_) | Part::Image(_) => None,
        })
    }
}

/// The prompt of a generation request.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// A conversation rendered through the model's chat template.
    Chat(Vec<Message>),
    /// Text sent as is (with the BOS the tokenizer adds); for a VLM,
    /// `<image>` marks where each of `images` goes, and the family's video
    /// placeholder (Qwen2-VL's `<|video_pad|>`) each of `videos`.
    Raw {
        text: String,
        images: Vec<ImageInput>,
        videos: Vec<VideoInput>,
    },
}

/// Sampling and stopping, each `None` meaning the model's default
/// (`generation_config.json`, else greedy).
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    /// Most new tokens; `None`: as many as the context leaves.
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Keep going past eos ids (benchmarks).
    pub ignore_eos: bool,
}

impl GenerateParams {
    /// The model's sampling defaults with this request's settings on top,
    /// checked. Without a seed, each request draws its own.
    pub fn sampling(
        &self,
        mut s: glimpse_infer::SamplingConfig,
    ) -> Result<glimpse_infer::SamplingConfig, crate::pipeline::PipelineError> {
        if let Some(t) = self.temperature {
            s.temperature = t;
        }
        if self.top_p.is_some() {
            s.top_p = self.top_p;
        }
        if self.top_k.is_some() {
            s.top_k = self.top_k;
        }
        if let Some(r) = self.repetition_penalty {
            s.repetition_penalty = r;
        }
        s.seed = self.seed.unwrap_or_else(fresh_seed);
        s.validate()
            .map_err(|e| crate::pipeline::PipelineError::Usage(e.to_string()))?;
        Ok(s)
    }
}

/// A seed for a request that named none: the clock's nanoseconds mixed
/// with a counter, so two requests in the same instant differ.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
