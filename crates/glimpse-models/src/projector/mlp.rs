//! LLaVA's `mlpNx_gelu` projector: N linear layers with an activation
//! between (HF `LlavaMultiModalProjector` for N = 2, tensors `linear_1`,
//! `linear_2`; deeper ones go on `linear_3`, ...).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{check_features, config_error, default_act, TokenCompression};
use crate::error::Result;
use crate::nn::{Activation, Linear};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpProjectorConfig {
    /// Dv: the vision tower's feature width.
    pub vision_hidden_size: usize,
    /// Dt: the language model's embedding width (every layer's output).
    pub text_hidden_size: usize,
    /// Number of linear layers (the N of `mlpNx_gelu`); 2 by default.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// HF `projector_hidden_act`; `gelu` by default.
    #[serde(default = "default_act")]
    pub projector_hidden_act: Activation,
    /// HF `multimodal_projector_bias`; `true` by default.
    #[serde(default = "default_bias")]
    pub multimodal_projector_bias: bool,
    /// Applied first; pixel shuffle makes `linear_1`'s input 4·Dv wide.
    #[serde(default)]
    pub compression: TokenCompression,
}

fn default_depth() -> usize {
    2
}

fn default_bias() -> bool {
    true
}

impl MlpProjectorConfig {
    pub fn tiny() -> Self {
        Self {
            vision_hidden_size: 32,
            text_hidden_size: 48,
            depth: 2,
            projector_hidden_act: Activation::Gelu,
            multimodal_projector_bias: true,
            compression: TokenCompression::None,
        }
    }
}

pub struct MlpProjector {
    /// `linear_1`, `linear_2`, ... in order.
    linears: Vec<Linear>,
    act: Activation,
    compression: TokenCompression,
    vision_hidden_size: usize,
}

impl MlpProjector {
    pub fn new(cfg: &MlpProjectorConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.depth == 0 {
            return Err(config_error("mlp projector depth must be at least 1"));
        }
        let dt = cfg.text_hidden_size;
        let linears = (1..=cfg.depth)
            .map(|i| {
                let input = match i {
                    1 => cfg.compression.out_width(cfg.vision_hidden_size),
                    _ => dt,
                };
                let vb = vb.pp(format!("linear_{i}"));
                match cfg.multimodal_projector_bias {
                    true => crate::nn::linear::linear(input, dt, vb),
                    false => crate::nn::linear::linear_no_bias(input, dt, vb),
                }
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            linears,
            act: cfg.projector_hidden_act,
            compression: cfg.compression,
            vision_hidden_size: cfg.vision_hidden_size,
        })
    }

    /// # Shapes
    /// `features`: (B, N, Dv) -> (B, N', Dt), N' = N after compression.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        check_features(features, self.vision_hidden_size)?;
        let mut xs = self.compression.forward(features)?;
        let (last, hidden) = self
            .linears
            .split_last()
            .ok_or_else(|| config_error("mlp projector without layers"))?;
        for linear in hidden {
            xs = match linear.bias() {
                // bias and activation in one pass (fused on frozen CPU f32)
                Some(bias) => self
                    .act
                    .forward_biased(&linear.forward_no_bias(&xs)?, bias)?,
                None => self.act.forward(&linear.forward(&xs)?)?,
            };
        }
        Ok(last.forward(&xs)?)
    }
}
