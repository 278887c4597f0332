//! Multihead attention pooling (MAP) head of SigLIP (HF
//! `SiglipMultiheadAttentionPoolingHead`): one learned probe token attends
//! over the patch sequence, then a residual MLP.

use candle_core::{Result, Tensor};
use candle_nn::{Init, Module, VarBuilder};

use crate::nn::attention::softmax_last_dim;
use crate::nn::layer_norm::layer_norm;
use crate::nn::{LayerNorm, Linear};

use crate::nn::encoder::EncoderConfig;
use crate::nn::Mlp;

pub struct AttentionPoolHead {
    probe: Tensor,
    /// torch `nn.MultiheadAttention` packs q, k, v into one (3D, D) matrix.
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    num_heads: usize,
}

impl AttentionPoolHead {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = vb.pp("attention");
        // Initialised as torch does when the builder creates variables:
        // `randn` probe, xavier-uniform packed projection, zero bias.
        let bound = (6.0 / (4 * d) as f64).sqrt();
        Ok(Self {
            probe: vb.get_with_hints(
                (1, 1, d),
                "probe",
                Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            )?,
            in_proj_weight: attn.get_with_hints(
                (3 * d, d),
                "in_proj_weight",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?,
            in_proj_bias: attn.get_with_hints(3 * d, "in_proj_bias", Init::Const(0.))?,
            out_proj: crate::nn::linear::linear(d, d, attn.pp("out_proj"))?,
            layernorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            mlp: Mlp::new(d, cfg.intermediate_size, cfg.hidden_act, vb.pp("mlp"))?,
            num_heads: cfg.num_attention_heads,
        })
    }

    /// # Shapes
    /// `xs`: (B, L, D) -> (B, D)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let proj = |x: &Tensor, i: usize| -> Result<Tensor> {
            let w = self.in_proj_weight.narrow(0, i * d, d)?;
            let bias = self.in_proj_bias.narrow(0, i * d, d)?;
            x.broadcast_matmul(&w.t()?)?.broadcast_add(&bias)
        };
        // probe (1, 1, D) -> q (1, 1, D) -> (1, H, 1, hd), shared by the batch
        let q = proj(&self.probe, 0)?
            .reshape((1, 1, h, hd))?
            .transpose(1, 2)?;
        // (B, L, D) -> (B, L, H, hd) -> (B, H, L, hd)
        let k = proj(xs, 1)?
            .reshape((b, l, h, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = proj(xs, 2)?
            .reshape((b, l, h, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = (q.broadcast_as((b, h, 1, hd))?.contiguous()? * (hd as f64).powf(-0.5))?;
        // (B, H, 1, hd) x (B, H, hd, L) -> (B, H, 1, L)
        let probs = softmax_last_dim(&q.matmul(&k.t()?)?)?;
        // (B, H, 1, hd) -> (B, 1, H, hd) -> (B, 1, D)
        let pooled = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, 1, d))?;
        let pooled = self.out_proj.forward(&pooled)?;
        let out = (&pooled + self.mlp.forward(&self.layernorm.forward(&pooled)?)?)?;
        // (B, 1, D) -> (B, D)
        out.squeeze(1)
    }
}
