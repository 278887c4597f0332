//! LayerNorm (torch `nn.LayerNorm`) that stays differentiable.
//!
//! `candle_nn::LayerNorm` runs a custom op without a backward pass on
//! contiguous inputs, so gradients stop there silently. Here that op serves
//! frozen inference only (the numbers `candle_nn::LayerNorm` gives); anything
//! that tracks gradients (trainable weights, or an input that does) takes the
//! composed ops, which are the ones `candle_nn::LayerNorm` runs on
//! non-contiguous inputs.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// `weight` (ones) and `bias` (zeros) of width `size` under `vb`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get_with_hints(size, "weight", Init::Const(1.))?,
        vb.get_with_hints(size, "bias", Init::Const(0.))?,
        eps,
    ))
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// # Shapes
    /// `xs`: (..., size) -> (..., size)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let frozen = !xs.track_op() && !self.weight.track_op() && !self.bias.track_op();
        if frozen && xs.is_contiguous() {
            return candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps as f32);
        }
        // Composed ops: differentiable, and statistics in f32 for f16/bf16.
        let dtype = xs.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let size = xs.dim(D::Minus1)? as f64;
        let x = xs.to_dtype(internal)?;
        let x = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / size)?)?;
        let var = (x.sqr()?.sum_keepdim(D::Minus1)? / size)?;
        let normed = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    #[test]
    fn matches_candle_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2.0, (3, 5, 16), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 16, &dev)?;
        let b = Tensor::randn(0f32, 0.1, 16, &dev)?;
        let reference = candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5);
        let frozen = LayerNorm::new(w.clone(), b.clone(), 1e-5);
        // frozen: exactly candle's numbers, contiguous or not
        let strided = xs.transpose(0, 1)?;
        for x in [&xs, &strided] {
            let d = (frozen.forward(x)? - reference.forward(x)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(d, 0.0);
        }
        // trainable: the composed path, same numbers within rounding, with gradients
        let (wv, bv) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?);
        let xv = Var::from_tensor(&xs)?;
        let trainable = LayerNorm::new(wv.as_tensor().clone(), bv.as_tensor().clone(), 1e-5);
        let ys = trainable.forward(xv.as_tensor())?;
        let d = (&ys - frozen.forward(&xs)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        let probe = Tensor::randn(0f32, 1.0, ys.shape(), &dev)?;
        let grads = (ys * probe)?.sum_all()?.backward()?;
        for v in [&wv, &bv, &xv] {
            let g = grads.get(v.as_tensor()).expect("gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }
}
