//! The generation loop: prefill, then sample / stream / step until a stop rule fires.
//!
//! The model side implements [`TokenModel`] and knows nothing of sampling or
//! text; this loop knows nothing of tensors (logits are plain `f32`s).
//!
//! Forward passes: one `prefill`, then one `step` per generated token except
//! the last, since the last token's logits would never be used. So `n`
//! generated tokens cost `1 + (n - 1)` passes, and `max_new_tokens == 0`
//! costs none.

use serde::{Deserialize, Serialize};
use std::time::Instant;
use tokenizers::Tokenizer;

use crate::error::{one_line, InferError, Result};
use crate::sampling::SamplingConfig;
use crate::sequence::{model_error, Sequence};
use crate::stop::FinishReason;

/// A decoder with its prompt already in place and a cache behind it.
pub trait TokenModel {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs the prompt (already in the model, however it was given: ids or
    /// embeddings) and returns the last position's logits, `(vocab,)`.
    fn prefill(&mut self) -> std::result::Result<Vec<f32>, Self::Error>;

    /// Feeds one generated token, returns the next position's logits, `(vocab,)`.
    fn step(&mut self, token: u32) -> std::result::Result<Vec<f32>, Self::Error>;
}

/// Error type `on_text` may return; `?` on any error converts into it.
pub type OutputError = Box<dyn std::error::Error + Send + Sync>;

/// What to generate and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Any of these ends generation; the id is kept in `tokens`, not in `text`.
    pub eos_ids: Vec<u32>,
    /// Generation ends when the text contains one; the text stops before it.
    pub stop_strings: Vec<String>,
}

impl GenerationConfig {
    /// Greedy, no eos ids, no stop strings.
    pub fn new(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: SamplingConfig::greedy(),
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

/// The result of one [`generate`] call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Decoded text of the new tokens, special tokens skipped, cut before a
    /// stop string; equal to the concatenation of the `on_text` pieces.
    pub text: String,
    /// Generated ids only, like the tail of transformers' `generate` output:
    /// the eos id that ended generation is included, as is the token that
    /// completed a stop string.
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Length of `prompt_ids` as given to [`generate`].
    pub prompt_tokens: usize,
    /// Seconds inside `prefill`.
    pub prefill_secs: f64,
    /// Seconds inside `step` calls, summed (sampling and detokenising excluded).
    pub decode_secs: f64,
    /// Number of `step` calls: `tokens.len() - 1` when any token was generated.
    pub decode_steps: usize,
    /// Wall time of the whole call, sampling, detokenising and `on_text` included.
    pub total_secs: f64,
}

impl Generation {
    /// Prompt tokens per second of `prefill` (0 when nothing was timed).
    pub fn prompt_tok_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }

    /// Tokens produced by `step` calls per second spent inside them: the
    /// model's decode speed, without the first token (which prefill produced)
    /// and without sampling or streaming overhead (see `total_secs`).
    pub fn decode_tok_per_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Generates from a model whose prompt is in place. `prompt_ids` are the
/// ids the repetition penalty sees (and `prompt_tokens` counts); `on_text`
/// gets each printable piece as it comes, and an error from it stops
/// generation with [`InferError::Output`].
pub fn generate<M, F>(
    model: &mut M,
    prompt_ids: &[u32],
    tokenizer: &Tokenizer,
    cfg: &GenerationConfig,
    mut on_text: F,
) -> Result<Generation>
where
    M: TokenModel,
    F: FnMut(&str) -> std::result::Result<(), OutputError>,
{
    let start = Instant::now();
    let mut seq = Sequence::new(tokenizer, prompt_ids, cfg)?;
    let mut emit = |s: &str| -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        on_text(s).map_err(|e| InferError::Output(one_line(e)))
    };

    let (mut prefill_secs, mut decode_secs, mut decode_steps) = (0.0, 0.0, 0usize);
    if seq.finished().is_none() {
        let t = Instant::now();
        let mut logits = model.prefill().map_err(model_error)?;
        prefill_secs = t.elapsed().as_secs_f64();
        loop {
            let advance = seq.accept(&logits)?;
            emit(&advance.text)?;
            if advance.finished.is_some() {
                break;
            }
            let t = Instant::now();
            logits = model.step(advance.token).map_err(model_error)?;
            decode_secs += t.elapsed().as_secs_f64();
            decode_steps += 1;
        }
    } else {
        emit(&seq.finish_text()?)?;
    }

    let tokens = seq.generated().to_vec();
    let finish_reason = seq.finished().unwrap_or(FinishReason::Length);
    Ok(Generation {
        text: seq.into_text(),
        tokens,
        finish_reason,
        prompt_tokens: prompt_ids.len(),
        prefill_secs,
        decode_secs,
        decode_steps,
        total_secs: start.elapsed().as_secs_f64(),
    })
}
