//! Where a decoder's parameters come from: an HF safetensors checkpoint
//! (through the strict `VarBuilder`) or a GGUF file, quantized or
//! dequantized at load. The decoder asks by HF name either way.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use std::sync::Arc;

use crate::error::Result;
use crate::gguf::{is_dense, GgufFile};
use crate::nn::qlinear::QLinear;
use crate::nn::Linear;

/// How a fresh decoder's matrices start: transformers' `initializer_range`
/// default for Llama-family models, N(0, 0.02).
const FRESH: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

pub enum DecoderWeights<'a> {
    Hf(VarBuilder<'a>),
    Gguf {
        file: &'a GgufFile,
        /// `Some(dtype)`: dequantize every tensor to `dtype` at load
        /// (reference numerics); `None`: keep block-quantized weights.
        dequantize: Option<DType>,
        device: Device,
    },
}

/// Token embedding table, dense or still quantized (rows are dequantized
/// on lookup, as llama.cpp does).
#[derive(Debug, Clone)]
pub enum TokenEmbedding {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl TokenEmbedding {
    /// # Shapes
    /// `ids`: (B, T) u32 -> (B, T, D)
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(w) => {
                let (b, t) = ids.dims2()?;
                // (B*T) rows gathered -> (B, T, D)
                w.index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, t, w.dim(1)?))
            }
            Self::Quantized(q) => q.embedding(ids),
        }
    }
}

impl DecoderWeights<'_> {
    /// The dtype activations flow in.
    pub fn compute_dtype(&self) -> DType {
        match self {
            Self::Hf(vb) => vb.dtype(),
            Self::Gguf { dequantize, .. } => dequantize.unwrap_or(DType::F32),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::Hf(vb) => vb.device().clone(),
            Self::Gguf { device, .. } => device.clone(),
        }
    }

    /// A dense tensor (norm weights, biases) in the compute dtype; `init`
    /// is what a fresh (trainable) model starts from.
    pub fn dense(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match self {
            Self::Hf(vb) => Ok(vb.get_with_hints(shape, name, init)?),
            Self::Gguf { file, device, .. } => {
                let q = file.tensor(name, shape, device)?;
                Ok(q.dequantize(device)?.to_dtype(self.compute_dtype())?)
            }
        }
    }

    /// `{prefix}.weight` (out, in) and, with `bias`, `{prefix}.bias` (out).
    pub fn linear(
        &self,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<QLinear> {
        let bias_t = if bias {
            Some(self.dense(&format!("{prefix}.bias"), &[out_dim], Init::Const(0.0))?)
        } else {
            None
        };
        let name = format!("{prefix}.weight");
        match self {
            Self::Hf(vb) => Ok(QLinear::Dense(Linear::new(
                vb.get_with_hints((out_dim, in_dim), &name, FRESH)?,
                bias_t,
            ))),
            Self::Gguf {
                file,
                dequantize,
                device,
            } => {
                let q = file.tensor(&name, &[out_dim, in_dim], device)?;
                Self::gguf_linear(q, bias_t, *dequantize)
            }
        }
    }

    fn gguf_linear(
        q: Arc<QTensor>,
        bias: Option<Tensor>,
        dequantize: Option<DType>,
    ) -> Result<QLinear> {
        match dequantize {
            Some(dtype) => {
                let w = q.dequantize(&q.device())?.to_dtype(dtype)?;
                Ok(QLinear::Dense(Linear::new(w, bias)))
            }
            // F16/BF16/F32 tensors in a quantized file: QMatMul keeps them
            // as dense matrices itself.
            None if is_dense(q.dtype()) => {
                let w = q.dequantize(&q.device())?;
                Ok(QLinear::Dense(Linear::new(w, bias)))
            }
            None => Ok(QLinear::quantized(q, bias)?),
        }
    }

    pub fn embedding(&self, name: &str, vocab: usize, dim: usize) -> Result<TokenEmbedding> {
        match self {
            Self::Hf(vb) => Ok(TokenEmbedding::Dense(vb.get_with_hints(
                (vocab, dim),
                name,
                FRESH,
            )?)),
            Self::Gguf {
                file,
                dequantize,
                device,
            } => {
                let q = file.tensor(name, &[vocab, dim], device)?;
                if dequantize.is_some() || is_dense(q.dtype()) {
                    let w = q.dequantize(device)?.to_dtype(self.compute_dtype())?;
                    Ok(TokenEmbedding::Dense(w))
                } else {
                    Ok(TokenEmbedding::Quantized(q))
                }
            }
        }
    }

    /// The LM head that shares the embedding's storage (tied weights).
    pub fn tied_head(&self, embedding: &TokenEmbedding) -> Result<QLinear> {
        match embedding {
            TokenEmbedding::Dense(w) => Ok(QLinear::Dense(Linear::new(w.clone(), None))),
            TokenEmbedding::Quantized(q) => Ok(QLinear::quantized(q.clone(), None)?),
        }
    }
}
