//! Losses. One file per loss; shared numerics (log-softmax, positive masks) live here.

mod hard_negatives;
mod infonce;
mod masked_lm;
mod siglip;
mod token_ce;

pub use hard_negatives::{hard_negative_clip_loss, hard_negative_mask, HardNegativeConfig};
pub use infonce::{clip_logits, clip_loss, CLIP_INIT_LOGIT_SCALE, MAX_LOGIT_SCALE};
pub use masked_lm::{masked_lm_loss, token_cross_entropy, LabelledRows, IGNORE_INDEX};
pub use siglip::{siglip_logits, siglip_loss, SigLipParams};

use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor, D};

/// Value added to logits that must not take part in a log-sum-exp. Finite so that
/// `0 * bias` in a backward pass can never produce NaN.
const MASKED: f64 = -1e30;

/// `logsumexp` over the last dim, keeping the dim. The max is detached: the result does not
/// depend on the shift, so the gradient is exact and no backward through `max` is needed.
pub(crate) fn logsumexp_keepdim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let s = x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(s.broadcast_add(&m)?)
}

/// `log_softmax` over the last dim as `x - logsumexp(x)`, from ops that all have gradients.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_sub(&logsumexp_keepdim(x)?)?)
}

/// Rows L2-normalised along the last dim. `eps` guards the zero vector (as `F.normalize`).
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Positive pairs of a `(b, b)` batch: the diagonal, and every pair with the same group id.
pub(crate) fn positive_pairs(b: usize, groups: Option<&[u32]>) -> Result<Vec<bool>> {
    match groups {
        None => Ok((0..b * b).map(|k| k / b == k % b).collect()),
        Some(g) if g.len() == b => Ok((0..b * b).map(|k| g[k / b] == g[k % b]).collect()),
        Some(g) => Err(TrainError::Shape(format!(
            "groups has {} entries for a batch of {b}",
            g.len()
        ))),
    }
}

/// An additive mask `(b, b)`: 0 where `keep`, `MASKED` elsewhere.
pub(crate) fn additive_mask(keep: &[bool], b: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let v: Vec<f64> = keep.iter().map(|&k| if k { 0.0 } else { MASKED }).collect();
    Ok(Tensor::from_vec(v, (b, b), dev)?.to_dtype(dtype)?)
}

/// Transpose of a row-major `(b, b)` boolean matrix.
pub(crate) fn transpose_mask(m: &[bool], b: usize) -> Vec<bool> {
    (0..b * b).map(|k| m[(k % b) * b + k / b]).collect()
}

/// Multi-positive cross-entropy of each row, averaged over rows:
/// `mean_i [ logsumexp_{j in keep_i} l_ij - logsumexp_{j in pos_i} l_ij ]`
/// = `mean_i -log sum_{j in pos_i} softmax_{keep_i}(l_i)_j`. With one positive per row and
/// `keep` all true this is the usual cross-entropy against the diagonal.
///
/// # Shapes
/// `logits`: (b, b); `pos`, `keep`: row-major b*b.
pub(crate) fn multi_positive_ce(logits: &Tensor, pos: &[bool], keep: &[bool]) -> Result<Tensor> {
    let (b, _) = logits.dims2()?;
    let (dt, dev) = (logits.dtype(), logits.device());
    let all = logsumexp_keepdim(&logits.add(&additive_mask(keep, b, dt, dev)?)?)?;
    let pos = logsumexp_keepdim(&logits.add(&additive_mask(pos, b, dt, dev)?)?)?;
    Ok((all - pos)?.mean_all()?)
}

/// Check two embedding batches are `(b, d)` with equal shapes; returns `b`.
pub(crate) fn check_pair(image: &Tensor, text: &Tensor) -> Result<usize> {
    let (b, d) = image.dims2()?;
    let (bt, dt) = text.dims2()?;
    if (b, d) != (bt, dt) {
        return Err(TrainError::Shape(format!(
            "image embeddings ({b}, {d}) vs text embeddings ({bt}, {dt})"
        )));
    }
    if b == 0 {
        return Err(TrainError::Shape("empty batch".into()));
    }
    Ok(b)
}
