//! SigLIP pairwise sigmoid loss, Zhai et al. 2023 ("Sigmoid Loss for Language Image
//! Pre-Training", Algorithm 1).

use super::{check_pair, l2_normalize, positive_pairs};
use crate::error::Result;
use candle_core::Tensor;

/// Initial values of SigLIP's learnable temperature and bias (paper §3.2: t' = log 10, b = −10).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SigLipParams {
    /// Log-temperature `t'`; the logits use `t = exp(t')`.
    pub t_prime: f64,
    pub bias: f64,
}

impl Default for SigLipParams {
    fn default() -> Self {
        Self {
            t_prime: 10f64.ln(),
            bias: -10.0,
        }
    }
}

/// `exp(t') · Î T̂ᵀ + b`.
///
/// # Shapes
/// `image`, `text`: (b, d); `t_prime`, `bias`: scalars; returns (b, b).
pub fn siglip_logits(
    image: &Tensor,
    text: &Tensor,
    t_prime: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    check_pair(image, text)?;
    let i = l2_normalize(image)?;
    let t = l2_normalize(text)?;
    let scale = t_prime.exp()?.flatten_all()?; // (1,)
                                               // (b, d) x (d, b) -> (b, b)
    let sim = i.matmul(&t.t()?)?;
    Ok(sim
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.flatten_all()?)?)
}

/// `−(1/b) Σ_i Σ_j log σ(z_ij · l_ij)`, `z = +1` on positives (diagonal and, with `groups`,
/// same-group pairs), `−1` elsewhere. Sum over columns, mean over rows, as the paper.
///
/// `log σ(x) = −(relu(−x) + log(1 + exp(−|x|)))`, stable for either sign.
///
/// # Shapes
/// `image`, `text`: (b, d); `t_prime`, `bias`: scalars; `groups`: b ids; returns a scalar.
pub fn siglip_loss(
    image: &Tensor,
    text: &Tensor,
    t_prime: &Tensor,
    bias: &Tensor,
    groups: Option<&[u32]>,
) -> Result<Tensor> {
    let b = check_pair(image, text)?;
    let logits = siglip_logits(image, text, t_prime, bias)?;
    let z: Vec<f64> = positive_pairs(b, groups)?
        .into_iter()
        .map(|p| if p { 1.0 } else { -1.0 })
        .collect();
    let z = Tensor::from_vec(z, (b, b), logits.device())?.to_dtype(logits.dtype())?;
    let x = (logits * z)?;
    let softplus_neg = (x.neg()?.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    Ok((softplus_neg.sum_all()? / b as f64)?)
}
