//! What `generate`, `ask` and `eval vqa` share: the sampling flags, the
//! video frame-sampling flags and the stdout stream of generated text.

use std::io::{StdoutLock, Write};

use clap::Args;
use glimpse_engine::pipeline::PipelineError;
use glimpse_engine::GenerateParams;
use glimpse_infer::{OutputError, SamplingConfig};

/// How a video's frames are sampled (`ask --video`, `eval vqa` on video rows).
#[derive(Args)]
pub struct FrameArgs {
    /// Sample N frames of each video, spread uniformly (default: as the model's
    /// video processor says, else every frame)
    #[arg(long, value_name = "N")]
    frames: Option<usize>,
    /// Sample F frames per second of each video (not with --frames)
    #[arg(long, value_name = "F")]
    fps: Option<f64>,
    /// At most N frames of each video
    #[arg(long, value_name = "N")]
    max_frames: Option<usize>,
}

impl FrameArgs {
    /// The flags as a checked sampling rule; `has_videos` false refuses any
    /// flag given (it would be silently ignored), naming where videos come
    /// from (`source`: "a --video").
    pub fn sampling(
        &self,
        has_videos: bool,
        source: &str,
    ) -> Result<glimpse_data::FrameSampling, PipelineError> {
        let sampling = glimpse_data::FrameSampling {
            frames: self.frames,
            fps: self.fps,
            max_frames: self.max_frames,
        };
        if !has_videos && sampling != glimpse_data::FrameSampling::all() {
            return Err(PipelineError::Usage(format!(
                "--frames, --fps and --max-frames need {source}"
            )));
        }
        sampling.validate().map_err(PipelineError::Usage)?;
        Ok(sampling)
    }
}

#[derive(Args)]
pub struct SamplingArgs {
    /// 0 = greedy. Default: the model's generation_config.json, else greedy
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the K most likely tokens
    #[arg(long)]
    top_k: Option<usize>,
    /// > 1 discourages repeating tokens already in the prompt or output
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Seed of the sampler
    #[arg(long, default_value_t = 299792458)]
    seed: u64,
}

impl SamplingArgs {
    /// The model's defaults with the flags given on top, checked.
    pub fn apply(&self, defaults: SamplingConfig) -> Result<SamplingConfig, PipelineError> {
        GenerateParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: Some(self.seed),
            ..Default::default()
        }
        .sampling(defaults)
    }
}

/// Generated text to stdout as it comes, or nothing until one JSON object
/// at the end (`--json`).
pub struct TextOut {
    json: bool,
    stdout: StdoutLock<'static>,
    /// Drop whitespace before the first visible character of the stream.
    trim_start: bool,
}

impl TextOut {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            stdout: std::io::stdout().lock(),
            trim_start: false,
        }
    }

    /// An answer after a chat prompt that ends in `assistant:` starts with
    /// the space its first token carries; printed, it reads better without.
    pub fn trimming_start(mut self) -> Self {
        self.trim_start = true;
        self
    }

    pub fn piece(&mut self, text: &str) -> Result<(), OutputError> {
        if !self.json {
            let text = if self.trim_start {
                let rest = text.trim_start();
                self.trim_start = rest.is_empty();
                rest
            } else {
                text
            };
            self.stdout.write_all(text.as_bytes())?;
            self.stdout.flush()?;
        }
        Ok(())
    }

    /// Ends the stream: a newline after streamed text, or `summary`.
    pub fn finish(mut self, summary: serde_json::Value) -> std::io::Result<()> {
        if self.json {
            writeln!(self.stdout, "{summary}")
        } else {
            writeln!(self.stdout)
        }
    }
}
