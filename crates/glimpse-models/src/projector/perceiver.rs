//! Perceiver resampler: a fixed number of learned latents read any number
//! of patch features (Flamingo §2.1; tensor names and block layout of HF
//! `IdeficsPerceiverResampler`: `latents`, `blocks.{i}.0` attention,
//! `blocks.{i}.1` MLP, final `layer_norm`). `in_proj` / `out_proj` are this
//! crate's: IDEFICS keeps the vision width and projects elsewhere.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::layer_norm::{layer_norm, LayerNorm};
use super::{check_features, config_error, default_act, multi_head, TokenCompression};
use crate::error::Result;
use crate::nn::linear::{linear, linear_no_bias};
use crate::nn::{Activation, Linear};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerceiverConfig {
    /// Dv: the vision tower's feature width.
    pub vision_hidden_size: usize,
    /// D: the latents' width (`in_proj` maps Dv to D when they differ).
    pub hidden_size: usize,
    /// Dt: the language model's embedding width (`out_proj` maps D to Dt).
    pub text_hidden_size: usize,
    /// M: learned latents, the number of tokens out whatever N.
    pub num_latents: usize,
    /// Number of (cross-attention, MLP) blocks.
    pub depth: usize,
    pub num_heads: usize,
    /// Per-head width; heads × head_dim need not equal D (IDEFICS: 16 × 96 on 1280).
    pub head_dim: usize,
    /// MLP width as a multiple of D (Flamingo and IDEFICS: 4).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Applied first; pixel shuffle makes the input 4·Dv wide.
    #[serde(default)]
    pub compression: TokenCompression,
}

fn default_mlp_ratio() -> usize {
    4
}

fn default_eps() -> f64 {
    1e-5
}

impl PerceiverConfig {
    pub fn tiny() -> Self {
        Self {
            vision_hidden_size: 32,
            hidden_size: 24,
            text_hidden_size: 48,
            num_latents: 8,
            depth: 2,
            num_heads: 4,
            head_dim: 6,
            mlp_ratio: 4,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            compression: TokenCompression::None,
        }
    }
}

/// Latents attend to concat(features, latents) (IDEFICS `IdeficsPerceiverAttention`).
struct PerceiverAttention {
    context_layer_norm: LayerNorm,
    latents_layer_norm: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    output_proj: Linear,
    num_heads: usize,
}

impl PerceiverAttention {
    fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let (d, inner) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim);
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            context_layer_norm: layer_norm(d, eps, vb.pp("context_layer_norm"))?,
            latents_layer_norm: layer_norm(d, eps, vb.pp("latents_layer_norm"))?,
            q_proj: linear_no_bias(d, inner, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(d, inner, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(d, inner, vb.pp("v_proj"))?,
            output_proj: linear_no_bias(inner, d, vb.pp("output_proj"))?,
            num_heads: cfg.num_heads,
        })
    }

    /// # Shapes
    /// `context`: (B, N, D), `latents`: (B, M, D) -> (B, M, D)
    fn forward(&self, context: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let context = self.context_layer_norm.forward(context)?;
        let latents = self.latents_layer_norm.forward(latents)?;
        // Flamingo: keys also cover the latents, so a latent can keep what it holds.
        // (B, N, D) ++ (B, M, D) -> (B, N + M, D)
        let kv_in = Tensor::cat(&[&context, &latents], 1)?;
        let q = self.q_proj.forward(&latents)?;
        let k = self.k_proj.forward(&kv_in)?;
        let v = self.v_proj.forward(&kv_in)?;
        let out = multi_head::attend(&q, &k, &v, self.num_heads, None)?;
        Ok(self.output_proj.forward(&out)?)
    }
}

/// Pre-LN feed-forward without biases (IDEFICS `IdeficsMLP`: `ln`, `fc`, `c_proj`).
struct PerceiverMlp {
    ln: LayerNorm,
    fc: Linear,
    c_proj: Linear,
    act: Activation,
}

impl PerceiverMlp {
    fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let (d, wide) = (cfg.hidden_size, cfg.mlp_ratio * cfg.hidden_size);
        Ok(Self {
            ln: layer_norm(d, cfg.layer_norm_eps, vb.pp("ln"))?,
            fc: linear_no_bias(d, wide, vb.pp("fc"))?,
            c_proj: linear_no_bias(wide, d, vb.pp("c_proj"))?,
            act: cfg.hidden_act,
        })
    }

    /// # Shapes
    /// `xs`: (B, M, D) -> (B, M, D)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.act.forward(&self.fc.forward(&self.ln.forward(xs)?)?)?;
        Ok(self.c_proj.forward(&hidden)?)
    }
}

pub struct PerceiverResampler {
    /// (M, D)
    latents: Tensor,
    in_proj: Option<Linear>,
    blocks: Vec<(PerceiverAttention, PerceiverMlp)>,
    layer_norm: LayerNorm,
    out_proj: Linear,
    compression: TokenCompression,
    vision_hidden_size: usize,
}

impl PerceiverResampler {
    pub fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.num_latents == 0 || cfg.num_heads == 0 || cfg.head_dim == 0 {
            return Err(config_error(
                "perceiver needs at least one latent, one head and a non-zero head_dim",
            ));
        }
        let d = cfg.hidden_size;
        let input = cfg.compression.out_width(cfg.vision_hidden_size);
        // torch.randn, as IDEFICS initialises its latents
        let latents = vb.get_with_hints(
            (cfg.num_latents, d),
            "latents",
            Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        )?;
        let in_proj = match input == d {
            true => None,
            false => Some(linear(input, d, vb.pp("in_proj"))?),
        };
        let vb_blocks = vb.pp("blocks");
        let blocks = (0..cfg.depth)
            .map(|i| {
                let vb = vb_blocks.pp(i);
                Ok((
                    PerceiverAttention::new(cfg, vb.pp(0))?,
                    PerceiverMlp::new(cfg, vb.pp(1))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            latents,
            in_proj,
            blocks,
            layer_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm"))?,
            out_proj: linear(d, cfg.text_hidden_size, vb.pp("out_proj"))?,
            compression: cfg.compression,
            vision_hidden_size: cfg.vision_hidden_size,
        })
    }

    /// # Shapes
    /// `features`: (B, N, Dv) -> (B, M, Dt) for any N.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let (b, _) = check_features(features, self.vision_hidden_size)?;
        let mut context = self.compression.forward(features)?;
        if let Some(in_proj) = &self.in_proj {
            context = in_proj.forward(&context)?;
        }
        let (m, d) = self.latents.dims2()?;
        // (M, D) -> (B, M, D)
        let mut latents = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((b, m, d))?
            .contiguous()?;
        for (attn, mlp) in &self.blocks {
            latents = (attn.forward(&context, &latents)? + &latents)?;
            latents = (mlp.forward(&latents)? + &latents)?;
        }
        Ok(self.out_proj.forward(&self.layer_norm.forward(&latents)?)?)
    }
}
