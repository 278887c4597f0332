//! One linear layer from the vision width to the text width (LLaVA-1's
//! `mm_projector`: `weight`, `bias` directly under the projector's prefix).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{check_features, TokenCompression};
use crate::error::Result;
use crate::nn::Linear;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearProjectorConfig {
    /// Dv: the vision tower's feature width.
    pub vision_hidden_size: usize,
    /// Dt: the language model's embedding width.
    pub text_hidden_size: usize,
    /// Applied first; pixel shuffle makes the layer's input 4·Dv wide.
    #[serde(default)]
    pub compression: TokenCompression,
}

impl LinearProjectorConfig {
    pub fn tiny() -> Self {
        Self {
            vision_hidden_size: 32,
            text_hidden_size: 48,
            compression: TokenCompression::None,
        }
    }
}

pub struct LinearProjector {
    linear: Linear,
    compression: TokenCompression,
    vision_hidden_size: usize,
}

impl LinearProjector {
    pub fn new(cfg: &LinearProjectorConfig, vb: VarBuilder) -> Result<Self> {
        let input = cfg.compression.out_width(cfg.vision_hidden_size);
        Ok(Self {
            linear: crate::nn::linear::linear(input, cfg.text_hidden_size, vb)?,
            compression: cfg.compression,
            vision_hidden_size: cfg.vision_hidden_size,
        })
    }

    /// # Shapes
    /// `features`: (B, N, Dv) -> (B, N', Dt), N' = N after compression.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        check_features(features, self.vision_hidden_size)?;
        let xs = self.compression.forward(features)?;
        Ok(self.linear.forward(&xs)?)
    }
}
