//! Scaled dot-product attention over heads, shared by the resamplers'
//! self- and cross-attention (their projections are named differently,
//! so each block owns its own and calls this on the projected q, k, v).

use candle_core::{Result, Tensor, D};

/// # Shapes
/// `q`: (B, Lq, H·hd); `k`, `v`: (B, Lk, H·hd); `mask`: additive,
/// broadcastable to (B, H, Lq, Lk). Returns (B, Lq, H·hd).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    num_heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, lq, inner) = q.dims3()?;
    let lk = k.dim(1)?;
    let head_dim = inner / num_heads;
    // (B, L, H·hd) -> (B, L, H, hd) -> (B, H, L, hd)
    let split = |t: &Tensor, l: usize| -> Result<Tensor> {
        t.reshape((b, l, num_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = (split(q, lq)? * (head_dim as f64).powf(-0.5))?;
    let (k, v) = (split(k, lk)?, split(v, lk)?);
    // (B, H, Lq, hd) x (B, H, hd, Lk) -> (B, H, Lq, Lk)
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
    }
    let probs = softmax(&scores)?;
    // (B, H, Lq, hd) -> (B, Lq, H, hd) -> (B, Lq, H·hd)
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, lq, inner))
}

/// Softmax over the last dim. `candle_nn::ops::softmax_last_dim` has no
/// backward pass, so it serves frozen inference only; with gradients, the
/// composed form (the max detached, as IDEFICS does, since it cancels).
fn softmax(scores: &Tensor) -> Result<Tensor> {
    if !scores.track_op() {
        return candle_nn::ops::softmax_last_dim(scores);
    }
    let max = scores.max_keepdim(D::Minus1)?.detach();
    let num = scores.broadcast_sub(&max)?.exp()?;
    num.broadcast_div(&num.sum_keepdim(D::Minus1)?)
}
