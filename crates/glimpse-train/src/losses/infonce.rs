//! CLIP contrastive (InfoNCE) loss, Radford et al. 2021 ("Learning Transferable Visual Models
//! From Natural Language Supervision", Fig. 3), with a multi-positive form for duplicate captions.

use super::{check_pair, l2_normalize, multi_positive_ce, positive_pairs, transpose_mask};
use crate::error::Result;
use candle_core::Tensor;

/// Upper bound on `exp(logit_scale)`; CLIP clips the temperature at 100 to keep training stable.
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// CLIP's initial `logit_scale` parameter, `ln(1 / 0.07)`.
pub const CLIP_INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;

/// Scaled cosine-similarity logits `min(exp(logit_scale), 100) · Î T̂ᵀ`, rows image, columns text.
/// The clamp passes no gradient to `logit_scale` while it is active (as `torch.clamp`).
///
/// # Shapes
/// `image`, `text`: (b, d); `logit_scale`: scalar `()` or `(1,)`; returns (b, b).
pub fn clip_logits(image: &Tensor, text: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    check_pair(image, text)?;
    let i = l2_normalize(image)?;
    let t = l2_normalize(text)?;
    let scale = logit_scale.exp()?.minimum(MAX_LOGIT_SCALE)?.flatten_all()?; // (1,)
                                                                             // (b, d) x (d, b) -> (b, b)
    Ok(i.matmul(&t.t()?)?.broadcast_mul(&scale)?)
}

/// Symmetric CLIP loss: the mean of image→text and text→image cross-entropy.
///
/// `groups` (one id per row; equal id = identical caption) turns same-group pairs into
/// positives instead of negatives. Each row then uses the multi-positive target (uniform over
/// its positives in the sense of summed probability): `-log Σ_{j ∈ pos(i)} softmax(l_i)_j`.
/// Without groups only the diagonal is positive and this is plain cross-entropy.
///
/// # Shapes
/// `image`, `text`: (b, d); `logit_scale`: scalar; `groups`: b ids; returns a scalar.
pub fn clip_loss(
    image: &Tensor,
    text: &Tensor,
    logit_scale: &Tensor,
    groups: Option<&[u32]>,
) -> Result<Tensor> {
    let b = check_pair(image, text)?;
    let logits = clip_logits(image, text, logit_scale)?;
    let pos = positive_pairs(b, groups)?;
    let keep = vec![true; b * b];
    let i2t = multi_positive_ce(&logits, &pos, &keep)?;
    // (b, b) -> (b, b) transposed: rows are texts
    let t2i = multi_positive_ce(&logits.t()?, &transpose_mask(&pos, b), &keep)?;
    Ok(((i2t + t2i)? * 0.5)?)
}
