//! LayerNorm (torch `nn.LayerNorm`) that stays differentiable.
//!
//! `candle_nn::LayerNorm` runs a custom op without a backward pass on
//! contiguous inputs, so gradients stop there silently; here that op serves
//! frozen inference only and anything that tracks gradients takes the
//! composed ops.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// `weight` (ones) and `bias` (zeros) of width `size` under `vb`.
pub(crate) fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get_with_hints(size, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(size, "bias", Init::Const(0.))?,
        eps,
    })
}

impl LayerNorm {
    /// # Shapes
    /// `xs`: (..., size) -> (..., size)
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let frozen = !xs.track_op() && !self.weight.track_op() && !self.bias.track_op();
        if frozen && xs.is_contiguous() {
            candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps as f32)
        } else {
            candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
        }
    }
}
