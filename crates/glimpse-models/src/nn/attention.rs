//! Multi-head self-attention with separate q/k/v/out projections, as HF
//! `CLIPAttention` and `SiglipAttention` store it.

use candle_core::Module;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::fused_attention;
use crate::nn::Linear;

/// How q, k and v are projected.
enum QkvProjection {
    /// Trainable weights (candle `Var`s): the three projections as the
    /// checkpoint names them, so the optimizer updates what forward reads.
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    /// Frozen weights: the three stacked into one (3D, D) projection (one
    /// large matmul beats three on CPU) with the attention scale folded into
    /// the q rows (one pass over the (L, L) scores fewer; it moves results
    /// by float rounding only). The separate copies are dropped.
    Fused(Linear),
}

pub struct SelfAttention {
    qkv: QkvProjection,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl SelfAttention {
    pub fn new(hidden: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Self::new_with(hidden, num_heads, "out_proj", true, vb)
    }

    /// [`Self::new`] with the output projection named `out_name` and, when
    /// `bias` is false, no biases (Mllama's vision encoder: `o_proj`, all
    /// four unbiased).
    pub fn new_with(
        hidden: usize,
        num_heads: usize,
        out_name: &str,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_heads == 0 || !hidden.is_multiple_of(num_heads) {
            candle_core::bail!(
                "hidden_size {hidden} is not divisible by num_attention_heads {num_heads}"
            );
        }
        let head_dim = hidden / num_heads;
        let lin = |name: &str| {
            if bias {
                crate::nn::linear::linear(hidden, hidden, vb.pp(name))
            } else {
                crate::nn::linear::linear_no_bias(hidden, hidden, vb.pp(name))
            }
        };
        let q_proj = lin("q_proj")?;
        let k_proj = lin("k_proj")?;
        let v_proj = lin("v_proj")?;
        let scale = (head_dim as f64).powf(-0.5);
        let qkv = if q_proj.weight().track_op() {
            QkvProjection::Separate {
                q_proj,
                k_proj,
                v_proj,
            }
        } else {
            let weight = Tensor::cat(
                &[
                    &(q_proj.weight() * scale)?,
                    k_proj.weight(),
                    v_proj.weight(),
                ],
                0,
            )?;
            let bias = match (q_proj.bias(), k_proj.bias(), v_proj.bias()) {
                (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[&(q * scale)?, k, v], 0)?),
                _ => None,
            };
            QkvProjection::Fused(Linear::new(weight, bias))
        };
        Ok(Self {
            qkv,
            out_proj: lin(out_name)?,
            num_heads,
            head_dim,
            scale,
        })
    }

    /// # Shapes
    /// `xs`: (B, L, D); `mask`: additive, broadcastable to (B, H, L, L)
    /// (0 where attention is allowed, -inf or a large negative where not).
    /// Returns (B, L, D).
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        // (B, L, D) -> (B, L, H, hd) -> (B, H, L, hd)
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v, scale) = match &self.qkv {
            QkvProjection::Fused(qkv) => {
                // (B, L, 3D) -> (B, L, 3, H, hd)
                let packed = qkv
                    .forward(xs)?
                    .reshape((b, l, 3, self.num_heads, self.head_dim))?;
                if mask.is_none() && fused_attention::applies(&packed) {
                    return self.out_proj.forward(&fused_attention::attention(&packed)?);
                }
                // (B, L, 3, H, hd) -> (3, B, H, L, hd); q arrives pre-scaled
                let all = packed.permute((2, 0, 3, 1, 4))?.contiguous()?;
                (all.get(0)?, all.get(1)?, all.get(2)?, None)
            }
            QkvProjection::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (
                split(q_proj.forward(xs)?)?,
                split(k_proj.forward(xs)?)?,
                split(v_proj.forward(xs)?)?,
                Some(self.scale),
            ),
        };
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(scale) = scale {
            scores = (scores * scale)?;
        }
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = softmax_last_dim(&scores)?;
        // (B, H, L, hd) -> (B, L, H, hd) -> (B, L, D)
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
    }
}

/// Softmax over the last dim: candle's fused kernel for inference, the
/// composed ops (differentiable; candle's kernel has no backward pass) when
/// `xs` tracks gradients.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if super::softmax_op::applies(xs) {
        // one node with a hand-written backward (CPU f32)
        super::softmax_op::softmax_last_dim(xs)
    } else if xs.track_op() {
        candle_nn::ops::softmax(xs, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// Additive causal mask (B=1, H=1, L, L): 0 on and below the diagonal,
/// -inf above. CLIP's text tower attends causally.
pub fn causal_mask(len: usize, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, len, len), device)
}

/// Additive padding mask (B, 1, 1, L) from a 0/1 attention mask (B, L):
/// keys at padded positions get the dtype's lowest value, as transformers'
/// `_prepare_4d_attention_mask` does (not -inf, so a fully padded row stays finite).
pub fn padding_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let (b, l) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(candle_core::DType::F32)?;
    let blocked = (1.0 - keep)? * f32::MIN as f64;
    blocked?.reshape((b, 1, 1, l))
}
