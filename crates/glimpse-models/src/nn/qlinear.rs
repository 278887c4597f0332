//! A linear layer whose weight is either a dense tensor (HF safetensors, or
//! GGUF dequantized at load) or a GGUF quantized block tensor multiplied by
//! candle's quantized kernels, so a Q4 model stays Q4 in memory.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use crate::nn::Linear;

#[derive(Debug, Clone)]
pub enum QLinear {
    Dense(Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        out_dim: usize,
    },
}

impl QLinear {
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let out_dim = weight.shape().dims()[0];
        Ok(Self::Quantized {
            weight: QMatMul::from_arc(weight)?,
            bias,
            out_dim,
        })
    }

    pub fn out_dim(&self) -> Result<usize> {
        match self {
            Self::Dense(l) => l.weight().dim(0),
            Self::Quantized { out_dim, .. } => Ok(*out_dim),
        }
    }
}

impl Module for QLinear {
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => l.forward(xs),
            Self::Quantized { weight, bias, .. } => {
                // The quantized kernels take f32 rows; QMatMul flattens the
                // leading dims itself.
                let ys = weight.forward(&xs.to_dtype(DType::F32)?.contiguous()?)?;
                match bias {
                    Some(b) => ys.broadcast_add(b),
                    None => Ok(ys),
                }
            }
        }
    }
}
