//! Image tokens drawn by a decoder whose vocabulary holds image codes
//! (Chameleon, Emu3, Janus, glimpse's discrete models): every draw
//! restricted to the codes' ids, a fixed count of them, and
//! classifier-free guidance (Ho & Salimans 2022, as Janus and Emu3
//! generate): `logits = uncond + s·(cond − uncond)`, the unconditional
//! logits those of the same image after a prompt without its caption.
//!
//! Model-agnostic as the rest of the crate: the model behind
//! [`GuidedModel`] keeps one cache per prompt and hands back `f32` logits.

use std::ops::Range;

use crate::error::{InferError, Result};
use crate::sampling::{Sampler, SamplingConfig};
use crate::sequence::model_error;

/// `cond ← uncond + scale·(cond − uncond)`, element by element. `scale`
/// 1 leaves `cond` as it is, 0 gives `uncond`; above 1 pushes the draw
/// towards what the caption adds.
///
/// # Shapes
/// `cond`, `uncond`: (vocab,)
pub fn guide(cond: &mut [f32], uncond: &[f32], scale: f32) -> Result<()> {
    if cond.len() != uncond.len() {
        return Err(InferError::Logits(format!(
            "guidance: conditional logits have {} values, unconditional {}",
            cond.len(),
            uncond.len()
        )));
    }
    for (c, &u) in cond.iter_mut().zip(uncond) {
        *c = u + scale * (*c - u);
    }
    Ok(())
}

/// Sets every logit outside `allowed` to −inf, so only those ids can be
/// drawn (the image codes while an image is being written).
///
/// # Shapes
/// `logits`: (vocab,)
pub fn restrict(logits: &mut [f32], allowed: &Range<u32>) -> Result<()> {
    let (start, end) = (allowed.start as usize, allowed.end as usize);
    if start >= end || end > logits.len() {
        return Err(InferError::Config(format!(
            "allowed ids {start}..{end} are empty or past the {} logits",
            logits.len()
        )));
    }
    logits[..start].fill(f32::NEG_INFINITY);
    logits[end..].fill(f32::NEG_INFINITY);
    Ok(())
}

/// A decoder with a conditional prompt and, for guidance, an
/// unconditional one in place, each behind its own cache.
pub trait GuidedModel {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs the prompt(s); the last position's logits of the conditional
    /// prompt and, when guiding, of the unconditional one, (vocab,) each.
    #[allow(clippy::type_complexity)]
    fn prefill(&mut self) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), Self::Error>;

    /// Feeds the drawn token to every prompt; the next logits, as
    /// [`Self::prefill`] returns them.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        token: u32,
    ) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), Self::Error>;
}

/// What to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSampling {
    /// The ids of the codes (one interval).
    pub codes: Range<u32>,
    /// Codes per image (rows × columns).
    pub count: usize,
    /// The guidance scale; 1 draws from the conditional logits alone.
    pub scale: f32,
    /// Temperature, top-k, top-p and seed of each draw (no repetition
    /// penalty: an image repeats codes by nature).
    pub sampling: SamplingConfig,
}

impl ImageSampling {
    pub fn validate(&self) -> Result<()> {
        if self.codes.is_empty() {
            return Err(InferError::Config("the code range is empty".into()));
        }
        if self.count == 0 {
            return Err(InferError::Config(
                "an image needs at least one code".into(),
            ));
        }
        if !self.scale.is_finite() || self.scale < 0.0 {
            return Err(InferError::Config(format!(
                "the guidance scale must be a finite number >= 0, got {}",
                self.scale
            )));
        }
        if self.sampling.repetition_penalty != 1.0 {
            return Err(InferError::Config(
                "repetition_penalty does not apply to image codes (use 1)".into(),
            ));
        }
        self.sampling.validate()
    }

    /// Whether the unconditional prompt is needed at all.
    pub fn guided(&self) -> bool {
        self.scale != 1.0
    }
}

/// Draws `cfg.count` image tokens, each among the code ids only, guided
/// when the model returns unconditional logits; `on_token(i)` runs after
/// the i-th (progress). The model steps once per token but the last.
pub fn draw_image_tokens<M: GuidedModel>(
    model: &mut M,
    cfg: &ImageSampling,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<u32>> {
    cfg.validate()?;
    let mut sampler = Sampler::new(cfg.sampling.clone())?;
    let mut tokens = Vec::with_capacity(cfg.count);
    let (mut cond, mut uncond) = model.prefill().map_err(model_error)?;
    for i in 0..cfg.count {
        if let Some(u) = &uncond {
            guide(&mut cond, u, cfg.scale)?;
        }
        restrict(&mut cond, &cfg.codes)?;
        let token = sampler.sample(&cond, &[])?;
        tokens.push(token);
        on_token(i);
        if i + 1 < cfg.count {
            (cond, uncond) = model.step(token).map_err(model_error)?;
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_is_uncond_plus_scaled_difference() {
        let mut cond = vec![1.0, 2.0, -1.0];
        guide(&mut cond, &[0.5, 3.0, -1.0], 3.0).expect("guide");
        // 0.5 + 3·0.5, 3 + 3·(−1), −1 + 3·0
        assert_eq!(cond, vec![2.0, 0.0, -1.0]);
        let mut same = vec![1.0, 2.0];
        guide(&mut same, &[7.0, -7.0], 1.0).expect("guide");
        assert_eq!(same, vec![1.0, 2.0]);
        assert!(guide(&mut [1.0], &[1.0, 2.0], 2.0).is_err());
    }

    /// Logits that depend on nothing but which prompt they are for: the
    /// conditional ones favour id 4 over 2, the unconditional ones 2 much
    /// more; id 0 (not a code) tops both.
    struct Fixed {
        guided: bool,
        steps: usize,
    }

    impl GuidedModel for Fixed {
        type Error = std::io::Error;
        fn prefill(&mut self) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), Self::Error> {
            let cond = vec![9.0, -1.0, 1.0, 0.0, 2.0];
            let uncond = vec![9.0, -1.0, 3.0, 0.0, 0.0];
            Ok((cond, self.guided.then_some(uncond)))
        }
        fn step(
            &mut self,
            _token: u32,
        ) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), Self::Error> {
            self.steps += 1;
            self.prefill()
        }
    }

    /// Greedy draws: the code range only (id 0 never comes out), the
    /// count exact, one step per token but the last; with scale 0 the
    /// unconditional favourite, with 1 the conditional, with 3 the
    /// difference pushed further (2 + 3·2 = 8 for id 4 against 3 − 6 = −3).
    #[test]
    fn draws_count_codes_in_range_guided() {
        let run = |scale: f32, guided: bool| {
            let mut m = Fixed { guided, steps: 0 };
            let cfg = ImageSampling {
                codes: 1..5,
                count: 6,
                scale,
                sampling: SamplingConfig::greedy(),
            };
            let mut seen = 0;
            let t = draw_image_tokens(&mut m, &cfg, |_| seen += 1).expect("draw");
            assert_eq!((seen, m.steps), (6, 5));
            t
        };
        assert_eq!(run(1.0, false), vec![4; 6]);
        assert_eq!(run(0.0, true), vec![2; 6]);
        assert_eq!(run(3.0, true), vec![4; 6]);
        // a sampled draw stays in range too
        let mut m = Fixed {
            guided: true,
            steps: 0,
        };
        let cfg = ImageSampling {
            codes: 1..5,
            count: 50,
            scale: 2.0,
            sampling: SamplingConfig {
                temperature: 5.0,
                seed: 7,
                ..SamplingConfig::greedy()
            },
        };
        let t = draw_image_tokens(&mut m, &cfg, |_| {}).expect("draw");
        assert_eq!(t.len(), 50);
        assert!(t.iter().all(|id| (1..5).contains(id)), "{t:?}");
        assert!(t.iter().any(|&id| id != t[0]), "a hot draw varies: {t:?}");
    }

    #[test]
    fn restrict_masks_all_but_the_range() {
        let mut l = vec![5.0, 1.0, 2.0, 9.0, 3.0];
        restrict(&mut l, &(1..3)).expect("restrict");
        let inf = f32::NEG_INFINITY;
        assert_eq!(l, vec![inf, 1.0, 2.0, inf, inf]);
        assert!(restrict(&mut l, &(2..2)).is_err());
        assert!(restrict(&mut l, &(3..6)).is_err());
    }
}
