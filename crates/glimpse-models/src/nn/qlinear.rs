//! A linear layer whose weight is either a dense tensor (HF safetensors, or
//! GGUF dequantized at load) or a GGUF quantized block tensor multiplied by
//! quantized kernels, so a Q4 model stays Q4 in memory: on the CPU, Q4_1 and
//! Q8_0 by glimpse's own kernels where candle's are slow
//! (`nn::block_matmul`, bit-identical to candle's), every other block type
//! by candle's. A LoRA adapter wraps any of them
//! ([`QLinear::Lora`], `crate::lora`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::lora::LoraLinear;
use crate::nn::block_matmul::BlockMatmul;
use crate::nn::Linear;

#[derive(Debug, Clone)]
pub enum QLinear {
    Dense(Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        out_dim: usize,
    },
    /// A weight glimpse's CPU kernels take ([`BlockMatmul::supports`]); it
    /// shares the `QTensor`'s block storage (a tied LM head and the token
    /// embedding hold the same bytes).
    Blocks {
        weight: BlockMatmul,
        bias: Option<Tensor>,
    },
    /// A frozen base with a low-rank adapter beside it.
    Lora(Box<LoraLinear>),
}

/// Whether layers built from now on use glimpse's block kernels where they
/// apply (the default) or candle's `QMatMul` for every block type.
static GLIMPSE_KERNELS: AtomicBool = AtomicBool::new(true);

/// Chooses the kernels of the quantized layers built after this call, for
/// the whole process: glimpse's where they apply (`true`, the default) or
/// candle's everywhere, to compare the two (they agree to the bit).
pub fn use_glimpse_kernels(on: bool) {
    GLIMPSE_KERNELS.store(on, Ordering::Relaxed);
}

impl QLinear {
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        if GLIMPSE_KERNELS.load(Ordering::Relaxed) && BlockMatmul::supports(&weight) {
            return Ok(Self::Blocks {
                weight: BlockMatmul::new(weight)?,
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

    /// One layer computing several that read the same input (q, k, v; gate,
    /// up), their outputs side by side: one kernel call and one activation
    /// quantization instead of several. `None` when the parts cannot be
    /// joined: trainable weights (the join would be a snapshot, not the
    /// `Var`s), different block types, biases on some parts only, or an
    /// adapter on any part (each part's adapter reads its own A and B;
    /// merge first to fuse, [`Self::merged`]).
    ///
    /// # Shapes
    /// parts (o_i, in) -> (Σ o_i, in)
    pub fn stack(parts: &[&QLinear]) -> Result<Option<QLinear>> {
        if parts.iter().any(|p| matches!(p, Self::Lora(_))) {
            return Ok(None);
        }
        let biases: Vec<Option<&Tensor>> = parts.iter().map(|p| p.bias()).collect();
        let bias = if biases.iter().all(Option::is_none) {
            None
        } else if let Some(all) = biases.iter().copied().collect::<Option<Vec<&Tensor>>>() {
            Some(Tensor::cat(&all, 0)?)
        } else {
            return Ok(None);
        };
        let blocks: Option<Vec<&Arc<QTensor>>> = parts
            .iter()
            .map(|p| match p {
                Self::Blocks { weight, .. } => Some(weight.tensor()),
                Self::Quantized {
                    weight: QMatMul::QTensor(t),
                    ..
                } => Some(t),
                _ => None,
            })
            .collect();
        if let Some(blocks) = blocks {
            let dtype = blocks[0].dtype();
            let (_, in_dim) = blocks[0].shape().dims2()?;
            let mut rows = 0;
            let mut bytes = Vec::new();
            for b in &blocks {
                let (o, i) = b.shape().dims2()?;
                if b.dtype() != dtype || i != in_dim || !b.device().is_cpu() {
                    return Ok(None);
                }
                // Blocks are stored row by row: joining rows is joining bytes.
                bytes.extend_from_slice(&b.data()?);
                rows += o;
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
            let joined = QTensor::new(storage, (rows, in_dim))?;
            return Ok(Some(Self::quantized(Arc::new(joined), bias)?));
        }
        let dense: Option<Vec<&Tensor>> = parts
            .iter()
            .map(|p| match p {
                Self::Dense(l) if !l.weight().is_variable() => Some(l.weight()),
                _ => None,
            })
            .collect();
        match dense {
            Some(ws) => Ok(Some(Self::Dense(Linear::new(Tensor::cat(&ws, 0)?, bias)))),
            None => Ok(None),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Self::Dense(l) => l.bias(),
            Self::Quantized { bias, .. } | Self::Blocks { bias, .. } => bias.as_ref(),
            Self::Lora(l) => l.base.bias(),
        }
    }

    pub fn out_dim(&self) -> Result<usize> {
        match self {
            Self::Dense(l) => l.weight().dim(0),
            Self::Quantized { out_dim, .. } => Ok(*out_dim),
            Self::Blocks { weight, .. } => Ok(weight.out_dim()),
            Self::Lora(l) => l.base.out_dim(),
        }
    }

    /// The weight as a dense (out, in) tensor: quantized blocks
    /// dequantized to f32; for an adapted layer, the base's weight alone.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match self {
            Self::Dense(l) => Ok(l.weight().clone()),
            Self::Quantized { weight, .. } => match weight {
                QMatMul::QTensor(q) => q.dequantize(&q.device()),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.clone()),
            },
            Self::Blocks { weight, .. } => weight.tensor().dequantize(&weight.tensor().device()),
            Self::Lora(l) => l.base.dense_weight(),
        }
    }

    /// The adapter folded into the weight ([`LoraLinear::merge`]: a dense
    /// layer; a quantized base is dequantized); any other layer as it is.
    pub fn merged(&self) -> Result<QLinear> {
        match self {
            Self::Lora(l) => l.merge(),
            other => Ok(other.clone()),
        }
    }

    /// The adapter, when this layer has one.
    pub fn lora(&self) -> Option<&LoraLinear> {
        match self {
            Self::Lora(l) => Some(l),
            _ => None,
        }
    }
}

impl Module for QLinear {
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (ys, bias) = match self {
            Self::Dense(l) => return l.forward(xs),
            Self::Lora(l) => return l.forward(xs),
            // The quantized kernels take f32 rows; QMatMul flattens the
            // leading dims itself.
            Self::Quantized { weight, bias, .. } => (
                weight.forward(&xs.to_dtype(DType::F32)?.contiguous()?)?,
                bias,
            ),
            Self::Blocks { weight, bias } => (
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
