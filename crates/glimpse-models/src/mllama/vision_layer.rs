//! One layer of Mllama's vision encoders (HF `MllamaVisionEncoderLayer`):
//! pre-LayerNorm self-attention and MLP, the global encoder's layers with
//! each branch scaled by tanh of a learned gate. The attention and MLP are
//! the ViT's (`nn::SelfAttention` with Mllama's unbiased `o_proj`, `nn::Mlp`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::mllama::config::MllamaVisionConfig;
use crate::nn::layer_norm::layer_norm;
use crate::nn::{LayerNorm, Mlp, SelfAttention};

pub struct MllamaVisionLayer {
    self_attn: SelfAttention,
    mlp: Mlp,
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    /// Global layers: tanh(`gate_attn`), tanh(`gate_ffn`), each (1,).
    gates: Option<(Tensor, Tensor)>,
}

impl MllamaVisionLayer {
    pub fn new(cfg: &MllamaVisionConfig, gated: bool, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let gates = if gated {
            let gate = |name: &str| -> Result<Tensor> {
                Ok(vb
                    .get_with_hints(1, name, candle_nn::Init::Const(std::f64::consts::FRAC_PI_4))?
                    .tanh()?)
            };
            Some((gate("gate_attn")?, gate("gate_ffn")?))
        } else {
            None
        };
        Ok(Self {
            self_attn: SelfAttention::new_with(
                d,
                cfg.attention_heads,
                "o_proj",
                false,
                vb.pp("self_attn"),
            )?,
            mlp: Mlp::new(d, cfg.intermediate_size, cfg.hidden_act, vb.pp("mlp"))?,
            input_layernorm: layer_norm(d, cfg.norm_eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: layer_norm(
                d,
                cfg.norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            gates,
        })
    }

    /// # Shapes
    /// `xs`: (N, L, D), `mask`: additive (N, 1, L, L) -> (N, L, D)
    pub fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(xs)?, Some(mask))?;
        let attn = match &self.gates {
            Some((g, _)) => attn.broadcast_mul(g)?,
            None => attn,
        };
        let xs = (xs + attn)?;
        let ff = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?;
        let ff = match &self.gates {
            Some((_, g)) => ff.broadcast_mul(g)?,
            None => ff,
        };
        Ok((xs + ff)?)
    }
}
