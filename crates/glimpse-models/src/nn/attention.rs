//! Multi-head self-attention with separate q/k/v/out projections, as HF
//! `CLIPAttention` and `SiglipAttention` store it.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

pub struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl SelfAttention {
    pub fn new(hidden: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        if num_heads == 0 || !hidden.is_multiple_of(num_heads) {
            candle_core::bail!(
                "hidden_size {hidden} is not divisible by num_attention_heads {num_heads}"
            );
        }
        let head_dim = hidden / num_heads;
        Ok(Self {
            q_proj: candle_nn::linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(hidden, hidden, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(hidden, hidden, vb.pp("out_proj"))?,
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
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
        let q = split(self.q_proj.forward(xs)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        // (B, H, L, hd) x (B, H, hd, L) -> (B, H, L, L)
        let mut scores = (q.matmul(&k.t()?)? * self.scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        // (B, H, L, hd) -> (B, L, H, hd) -> (B, L, D)
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
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
