//! `glimpse ask` on a discrete-token model (`glimpse_discrete`): each
//! image is tokenised by the model's own VQ, its codes spliced into the
//! prompt as tokens, and the answer generated as a language model's.

use std::path::{Path, PathBuf};

use anyhow::Result;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{DiscretePipeline, PipelineError};
use glimpse_infer::GenerationConfig;

use super::sampling::{SamplingArgs, TextOut};

/// What `ask` hands over once it knows the model is a discrete one.
pub struct DiscreteAsk<'a> {
    pub dir: &'a Path,
    pub question: &'a str,
    pub images: &'a [PathBuf],
    pub raw: bool,
    pub max_tokens: usize,
    pub sampling: &'a SamplingArgs,
    pub json: bool,
    /// `ask`'s flags that apply to soft-token VLMs only, and whether each
    /// was given: any given is refused before the model loads.
    pub vlm_only: &'a [(&'a str, bool)],
}

pub fn run(a: DiscreteAsk) -> Result<()> {
    if let Some((flag, _)) = a.vlm_only.iter().find(|(_, given)| *given) {
        return Err(PipelineError::Usage(format!(
            "{flag} does not apply to {}, a discrete-token model (it reads images as VQ codes)",
            a.dir.display()
        ))
        .into());
    }
    let pipeline = DiscretePipeline::load(a.dir, &default_device())?;
    let prompt = pipeline.prompt(a.question, a.images, a.raw)?;
    let cfg = GenerationConfig {
        max_new_tokens: a.max_tokens,
        sampling: a.sampling.apply(pipeline.lm.sampling.clone())?,
        eos_ids: pipeline.lm.eos_ids.clone(),
        stop_strings: Vec::new(),
    };
    let mut out = TextOut::new(a.json).trimming_start();
    let generation = pipeline.generate(&prompt, &cfg, |piece| out.piece(piece))?;
    out.finish(serde_json::json!({
        "text": generation.text,
        "tokens": generation.tokens,
        "image_tokens": prompt.image_tokens,
        "codes": prompt.codes,
        "prompt_tokens": generation.prompt_tokens,
        "finish_reason": generation.finish_reason,
        "vision_ms": prompt.vision_secs * 1000.0,
        "prefill_tok_per_s": generation.prompt_tok_per_s(),
        "decode_tok_per_s": generation.decode_tok_per_s(),
    }))?;
    Ok(())
}
