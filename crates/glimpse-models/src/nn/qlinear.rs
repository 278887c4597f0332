//! A linear layer whose weight is either a dense tensor (HF safetensors, or
//! GGUF dequantized at load) or a GGUF quantized block tensor multiplied by
//! quantized kernels, so a Q4 model stays Q4 in memory: Q4_1 on the CPU by
//! our own kernel (`nn::q4_1_matmul`, candle's is scalar), every other
//! block type by candle's.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use crate::nn::q4_1_matmul::Q4_1Matmul;
use crate::nn::Linear;

#[derive(Debug, Clone)]
pub enum QLinear {
    Dense(Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        out_dim: usize,
    },
    /// A Q4_1 weight on the CPU; it shares the `QTensor`'s block storage
    /// (a tied LM head and the token embedding hold the same bytes).
    Q4_1 {
        weight: Q4_1Matmul,
        bias: Option<Tensor>,
    },
}

impl QLinear {
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        if weight.dtype() == GgmlDType::Q4_1 && weight.device().is_cpu() {
            return Ok(Self::Q4_1 {
                weight: Q4_1Matmul::new(weight)?,
                bias,
            });
        }
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
            Self::Q4_1 { weight, .. } => Ok(weight.out_dim()),
        }
    }
}

impl Module for QLinear {
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (ys, bias) = match self {
            Self::Dense(l) => return l.forward(xs),
            // The quantized kernels take f32 rows; QMatMul flattens the
            // leading dims itself.
            Self::Quantized { weight, bias, .. } => (
                weight.forward(&xs.to_dtype(DType::F32)?.contiguous()?)?,
                bias,
            ),
            Self::Q4_1 { weight, bias } => (
                xs.to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(weight)?,
                bias,
            ),
        };
        match bias {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }
}
