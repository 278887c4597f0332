//! One generated sequence's state, advanced one token at a time: sampler,
//! stop rules, streamed text. [`crate::generate`] drives one of these for a
//! single request; a scheduler drives many, one batched forward per step,
//! and feeds each its own row of logits.

use tokenizers::Tokenizer;

use crate::error::{one_line, InferError, Result};
use crate::generate::GenerationConfig;
use crate::sampling::Sampler;
use crate::stop::{FinishReason, StopRules, StopStrings};
use crate::stream::TextStream;

/// What one accepted row of logits produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The sampled id.
    pub token: u32,
    /// Text now safe to hand out (possibly empty; with `finished`, the
    /// stream's held-back tail is included).
    pub text: String,
    /// Set when this token ended the sequence.
    pub finished: Option<FinishReason>,
}

/// Sampler + stop rules + text stream of one sequence.
pub struct Sequence<'t> {
    sampler: Sampler,
    rules: StopRules,
    stream: TextStream<'t>,
    /// Prompt ids then generated ids: what the repetition penalty sees.
    history: Vec<u32>,
    prompt_len: usize,
    finished: Option<FinishReason>,
}

impl<'t> Sequence<'t> {
    pub fn new(
        tokenizer: &'t Tokenizer,
        prompt_ids: &[u32],
        cfg: &GenerationConfig,
    ) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(cfg.sampling.clone())?,
            rules: StopRules::new(&cfg.eos_ids, cfg.max_new_tokens),
            stream: TextStream::new(tokenizer, StopStrings::new(cfg.stop_strings.iter())),
            history: prompt_ids.to_vec(),
            prompt_len: prompt_ids.len(),
            finished: (cfg.max_new_tokens == 0).then_some(FinishReason::Length),
        })
    }

    /// Samples the next token from the logits of the last position
    /// (`(vocab,)`) and advances the text. Once finished, the sequence
    /// takes no more logits.
    pub fn accept(&mut self, logits: &[f32]) -> Result<Advance> {
        if let Some(reason) = self.finished {
            return Err(InferError::Config(format!(
                "the sequence already ended ({reason})"
            )));
        }
        let id = self.sampler.sample(logits, &self.history)?;
        self.history.push(id);
        let by_rule = self.rules.check(id, self.generated().len());
        let mut text = String::new();
        let mut finished = by_rule;
        // An eos id is in the tokens, never in the text.
        if by_rule != Some(FinishReason::Eos) {
            let piece = self.stream.push(id)?;
            text.push_str(piece.text);
            if piece.stopped {
                finished = Some(FinishReason::StopString);
            }
        }
        if finished.is_some() {
            text.push_str(self.stream.finish()?);
            self.finished = finished;
        }
        Ok(Advance {
            token: id,
            text,
            finished,
        })
    }

    /// Ends a sequence that takes no token at all (a budget of 0 tokens),
    /// returning what the stream still holds.
    pub fn finish_text(&mut self) -> Result<String> {
        Ok(self.stream.finish()?.to_string())
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Generated ids so far (an eos that ended the sequence included).
    pub fn generated(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// The text decoded so far (cut before a stop string; a held-back tail
    /// included).
    pub fn text(&self) -> &str {
        self.stream.text()
    }

    pub fn into_text(self) -> String {
        self.stream.into_text()
    }
}

pub(crate) fn model_error(e: impl std::error::Error) -> InferError {
    InferError::Model(one_line(e))
}
