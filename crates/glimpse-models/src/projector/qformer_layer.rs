//! One Q-Former layer (HF `InstructBlipQFormerLayer`, BERT post-LN): query
//! and text tokens self-attend jointly, the queries alone then cross-attend
//! to the image and pass their own FFN (`intermediate_query`,
//! `output_query`); the text tokens pass theirs (`intermediate`, `output`).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::layer_norm::{layer_norm, LayerNorm};
use super::{multi_head, QFormerConfig};
use crate::error::Result;
use crate::nn::linear::linear;
use crate::nn::{Activation, Linear};

/// q/k/v projections (HF `InstructBlipQFormerMultiHeadAttention`).
struct MultiHeadAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: usize,
}

impl MultiHeadAttention {
    fn new(cfg: &QFormerConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query: linear(d, d, vb.pp("query"))?,
            key: linear(kv_width, d, vb.pp("key"))?,
            value: linear(kv_width, d, vb.pp("value"))?,
            num_heads: cfg.num_attention_heads,
        })
    }

    /// # Shapes
    /// `xs`: (B, Lq, D), `kv`: (B, Lk, Dkv), `mask` additive to (B, H, Lq, Lk) -> (B, Lq, D)
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let q = self.query.forward(xs)?;
        let k = self.key.forward(kv)?;
        let v = self.value.forward(kv)?;
        Ok(multi_head::attend(&q, &k, &v, self.num_heads, mask)?)
    }
}

/// `LayerNorm(dense(xs) + residual)` (HF `...SelfOutput`, `...Output`).
struct AddNorm {
    dense: Linear,
    /// checkpoint name `LayerNorm` (BERT's)
    layer_norm: LayerNorm,
}

impl AddNorm {
    fn new(cfg: &QFormerConfig, input: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: linear(input, cfg.hidden_size, vb.pp("dense"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// # Shapes
    /// `xs`: (B, L, input), `residual`: (B, L, D) -> (B, L, D)
    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        Ok(self
            .layer_norm
            .forward(&(self.dense.forward(xs)? + residual)?)?)
    }
}

/// Attention plus its output block (HF `InstructBlipQFormerAttention`).
struct Attention {
    attention: MultiHeadAttention,
    output: AddNorm,
}

impl Attention {
    fn new(cfg: &QFormerConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadAttention::new(cfg, kv_width, vb.pp("attention"))?,
            output: AddNorm::new(cfg, cfg.hidden_size, vb.pp("output"))?,
        })
    }

    /// # Shapes
    /// `xs`: (B, Lq, D), `kv`: (B, Lk, Dkv) -> (B, Lq, D)
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.output
            .forward(&self.attention.forward(xs, kv, mask)?, xs)
    }
}

pub(crate) struct QFormerLayer {
    attention: Attention,
    /// Every `cross_attention_frequency`-th layer.
    crossattention: Option<Attention>,
    /// (dense) for the queries
    intermediate_query: Linear,
    output_query: AddNorm,
    /// The text FFN; absent in the last layer, whose text outputs nothing reads.
    intermediate: Option<Linear>,
    output: Option<AddNorm>,
    act: Activation,
}

impl QFormerLayer {
    pub(crate) fn new(cfg: &QFormerConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let (d, wide) = (cfg.hidden_size, cfg.intermediate_size);
        let image_width = cfg.compression.out_width(cfg.vision_hidden_size);
        let crossattention = match index.is_multiple_of(cfg.cross_attention_frequency.max(1)) {
            true => Some(Attention::new(cfg, image_width, vb.pp("crossattention"))?),
            false => None,
        };
        let (intermediate, output) = match index + 1 < cfg.num_hidden_layers {
            true => (
                Some(linear(d, wide, vb.pp("intermediate").pp("dense"))?),
                Some(AddNorm::new(cfg, wide, vb.pp("output"))?),
            ),
            false => (None, None),
        };
        Ok(Self {
            attention: Attention::new(cfg, d, vb.pp("attention"))?,
            crossattention,
            intermediate_query: linear(d, wide, vb.pp("intermediate_query").pp("dense"))?,
            output_query: AddNorm::new(cfg, wide, vb.pp("output_query"))?,
            intermediate,
            output,
            act: cfg.hidden_act,
        })
    }

    /// Queries and text in, queries and (except in the last layer) text out.
    ///
    /// # Shapes
    /// `queries`: (B, Q, D); `text`: (B, L, D); `image`: (B, N, Dv);
    /// `mask`: additive (B, 1, 1, Q + L). Returns (B, Q, D) and (B, L, D).
    pub(crate) fn forward(
        &self,
        queries: &Tensor,
        text: Option<&Tensor>,
        image: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let q_len = queries.dim(1)?;
        let joint = match text {
            // (B, Q, D) ++ (B, L, D) -> (B, Q + L, D)
            Some(text) => Tensor::cat(&[queries, text], 1)?,
            None => queries.clone(),
        };
        let joint = self.attention.forward(&joint, &joint, mask)?;
        let mut queries = joint.narrow(1, 0, q_len)?;
        if let Some(cross) = &self.crossattention {
            queries = cross.forward(&queries, image, None)?;
        }
        let queries = self.feed_forward(&queries, &self.intermediate_query, &self.output_query)?;
        let text = match (text, &self.intermediate, &self.output) {
            (Some(_), Some(intermediate), Some(output)) => {
                let text = joint.narrow(1, q_len, joint.dim(1)? - q_len)?;
                Some(self.feed_forward(&text, intermediate, output)?)
            }
            _ => None,
        };
        Ok((queries, text))
    }

    /// # Shapes
    /// `xs`: (B, L, D) -> (B, L, D)
    fn feed_forward(&self, xs: &Tensor, intermediate: &Linear, output: &AddNorm) -> Result<Tensor> {
        let hidden = match intermediate.bias() {
            Some(bias) => self
                .act
                .forward_biased(&intermediate.forward_no_bias(xs)?, bias)?,
            None => self.act.forward(&intermediate.forward(xs)?)?,
        };
        output.forward(&hidden, xs)
    }
}
