//! What `generate` and `ask` share: the sampling flags and the stdout
//! stream of generated text.

use std::io::{StdoutLock, Write};

use clap::Args;
use glimpse_engine::pipeline::PipelineError;
use glimpse_engine::GenerateParams;
use glimpse_infer::{OutputError, SamplingConfig};

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
