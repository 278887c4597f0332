//! Root-mean-square LayerNorm (Zhang & Sennrich 2019; HF `LlamaRMSNorm`):
//! `x / sqrt(mean(x²) + eps) * weight`, statistics in f32 whatever the
//! activation dtype, as transformers computes them.

use candle_core::{DType, Result, Tensor};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// # Shapes
    /// `xs`: (..., D) -> (..., D)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.weight.is_variable() || xs.track_op() {
            // Composed ops: differentiable, for training.
            let dtype = xs.dtype();
            let x = xs.to_dtype(DType::F32)?;
            let inv = x
                .sqr()?
                .mean_keepdim(candle_core::D::Minus1)?
                .affine(1.0, self.eps)?
                .sqrt()?
                .recip()?;
            return x
                .broadcast_mul(&inv)?
                .to_dtype(dtype)?
                .broadcast_mul(&self.weight);
        }
        // candle's fused kernel accumulates in f32 for f16/bf16 inputs.
        candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_equals_composed() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2.0, (3, 5, 16), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 16, &dev)?;
        let fused = RmsNorm::new(w.clone(), 1e-6).forward(&xs)?;
        let composed =
            RmsNorm::new(Var::from_tensor(&w)?.as_tensor().clone(), 1e-6).forward(&xs)?;
        let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
