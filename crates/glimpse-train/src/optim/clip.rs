//! Global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`).

use crate::error::Result;
use candle_core::{backprop::GradStore, DType, Var};

/// Scales the gradients of `vars` in place so that their joint L2 norm is at most `max_norm`
/// (factor `max_norm / (norm + 1e-6)` when below 1, as PyTorch) and returns the norm before
/// clipping. Vars without a gradient are skipped.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}
