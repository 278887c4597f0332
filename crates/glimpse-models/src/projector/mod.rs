//! Projectors: vision-tower patch features (B, N, Dv) into the language
//! model's embedding space (B, M, Dt).
//!
//! Every projector runs with frozen checkpoint tensors (inference fast
//! paths) and with trainable `Var`s (only ops with a backward pass), so the
//! same module serves the align / instruct training stages.
//!
//! | kind | reference | tokens out |
//! |---|---|---|
//! | `linear` | LLaVA-1 `mm_projector` | N (after compression) |
//! | `mlp` | LLaVA-1.5 `LlavaMultiModalProjector` (`mlpNx_gelu`) | N (after compression) |
//! | `perceiver` | Flamingo §2.1 / IDEFICS `IdeficsPerceiverResampler` | `num_latents` |
//! | `qformer` | InstructBLIP `InstructBlipQFormerModel` | `num_query_tokens` |
//!
//! Each config carries a [`TokenCompression`] applied to the features first;
//! the projector's input width is then `compression.out_width(vision_hidden_size)`
//! (×4 for pixel shuffle, unchanged for pooling).

pub mod compress;
mod layer_norm;
pub mod linear;
pub mod mlp;
mod multi_head;
pub mod perceiver;
pub mod qformer;
mod qformer_layer;

pub use compress::TokenCompression;
pub use linear::{LinearProjector, LinearProjectorConfig};
pub use mlp::{MlpProjector, MlpProjectorConfig};
pub use perceiver::{PerceiverConfig, PerceiverResampler};
pub use qformer::{QFormer, QFormerConfig};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ModelError, Result};
use crate::limits;
use crate::nn::Activation;

/// Which projector, with its sizes; `"type"` names the kind in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProjectorConfig {
    Linear(LinearProjectorConfig),
    Mlp(MlpProjectorConfig),
    Perceiver(PerceiverConfig),
    #[serde(rename = "qformer")]
    QFormer(QFormerConfig),
}

impl ProjectorConfig {
    /// Width of the vision tower's features, before compression.
    pub fn vision_hidden_size(&self) -> usize {
        match self {
            Self::Linear(c) => c.vision_hidden_size,
            Self::Mlp(c) => c.vision_hidden_size,
            Self::Perceiver(c) => c.vision_hidden_size,
            Self::QFormer(c) => c.vision_hidden_size,
        }
    }

    /// Width of the language model's embeddings (the output width).
    pub fn text_hidden_size(&self) -> usize {
        match self {
            Self::Linear(c) => c.text_hidden_size,
            Self::Mlp(c) => c.text_hidden_size,
            Self::Perceiver(c) => c.text_hidden_size,
            Self::QFormer(c) => c.text_hidden_size,
        }
    }

    pub fn compression(&self) -> TokenCompression {
        match self {
            Self::Linear(c) => c.compression,
            Self::Mlp(c) => c.compression,
            Self::Perceiver(c) => c.compression,
            Self::QFormer(c) => c.compression,
        }
    }

    /// Width the projector's first layer takes: the tower's width, ×4 after
    /// pixel shuffle.
    pub fn input_width(&self) -> usize {
        self.compression().out_width(self.vision_hidden_size())
    }

    /// How many embedding rows an image of `num_patches` features becomes
    /// (how many `<image>` placeholders the prompt needs).
    pub fn num_output_tokens(&self, num_patches: usize) -> Result<usize> {
        match self {
            Self::Linear(_) | Self::Mlp(_) => self.compression().out_tokens(num_patches),
            Self::Perceiver(c) => Ok(c.num_latents),
            Self::QFormer(c) => Ok(c.num_query_tokens),
        }
    }

    /// Sizes in range before any weight is sized by them (see
    /// [`crate::limits`]); fields named as the `projector` object names them.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        use limits::{elems, positive, size, MAX_HEADS, MAX_HEAD_DIM, MAX_HIDDEN, MAX_LAYERS};
        let dv = size("vision_hidden_size", self.vision_hidden_size(), MAX_HIDDEN)?;
        let dt = size("text_hidden_size", self.text_hidden_size(), MAX_HIDDEN)?;
        if let TokenCompression::PixelShuffle { scale_factor } = self.compression() {
            size("compression.scale_factor", scale_factor, 16)?;
        }
        let input = self.compression().out_width(dv);
        match self {
            Self::Linear(_) => {
                elems("vision_hidden_size", "the projection", &[dt, input])?;
            }
            Self::Mlp(c) => {
                size("depth", c.depth, MAX_LAYERS)?;
                elems("vision_hidden_size", "linear_1", &[dt, input])?;
                elems("text_hidden_size", "the later layers", &[dt, dt])?;
            }
            Self::Perceiver(c) => {
                let d = size("hidden_size", c.hidden_size, MAX_HIDDEN)?;
                size("num_latents", c.num_latents, limits::MAX_IMAGE_TOKENS)?;
                // depth 0 (latents and projections only) is a valid resampler.
                if c.depth > 0 {
                    size("depth", c.depth, MAX_LAYERS)?;
                }
                let h = size("num_heads", c.num_heads, MAX_HEADS)?;
                let hd = size("head_dim", c.head_dim, MAX_HEAD_DIM)?;
                let ratio = size("mlp_ratio", c.mlp_ratio, 64)?;
                positive("layer_norm_eps", c.layer_norm_eps)?;
                elems(
                    "num_heads",
                    "each attention projection",
                    &[h, hd, d.max(input)],
                )?;
                elems("mlp_ratio", "each MLP layer", &[ratio, d, d])?;
                elems("vision_hidden_size", "in_proj", &[d, input])?;
                elems("text_hidden_size", "out_proj", &[dt, d])?;
            }
            Self::QFormer(c) => {
                let d = size("hidden_size", c.hidden_size, MAX_HIDDEN)?;
                let di = size(
                    "instruction_hidden_size",
                    c.instruction_hidden_size,
                    MAX_HIDDEN,
                )?;
                size(
                    "num_query_tokens",
                    c.num_query_tokens,
                    limits::MAX_IMAGE_TOKENS,
                )?;
                size("num_hidden_layers", c.num_hidden_layers, MAX_LAYERS)?;
                let h = size("num_attention_heads", c.num_attention_heads, MAX_HEADS)?;
                if !d.is_multiple_of(h) {
                    return Err(ConfigError::new(
                        "hidden_size",
                        format!("{d} is not divisible by num_attention_heads {h}"),
                    ));
                }
                let i = size(
                    "intermediate_size",
                    c.intermediate_size,
                    limits::MAX_INTERMEDIATE,
                )?;
                let p = size(
                    "max_position_embeddings",
                    c.max_position_embeddings,
                    limits::MAX_POSITIONS,
                )?;
                size(
                    "cross_attention_frequency",
                    c.cross_attention_frequency,
                    MAX_LAYERS,
                )?;
                positive("layer_norm_eps", c.layer_norm_eps)?;
                elems("intermediate_size", "each MLP layer", &[i, d])?;
                elems(
                    "max_position_embeddings",
                    "the position embeddings",
                    &[p, d],
                )?;
                elems("vision_hidden_size", "the image keys", &[d, input])?;
                elems(
                    "instruction_hidden_size",
                    "instruction_projection",
                    &[d, di],
                )?;
                elems("text_hidden_size", "language_projection", &[dt, d])?;
            }
        }
        Ok(())
    }

    /// Whether the projector reads the instruction (only the Q-Former does).
    pub fn reads_instruction(&self) -> bool {
        matches!(self, Self::QFormer(_))
    }
}

pub enum Projector {
    Linear(LinearProjector),
    Mlp(MlpProjector),
    Perceiver(PerceiverResampler),
    QFormer(QFormer),
}

impl Projector {
    pub fn new(cfg: &ProjectorConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            ProjectorConfig::Linear(c) => Self::Linear(LinearProjector::new(c, vb)?),
            ProjectorConfig::Mlp(c) => Self::Mlp(MlpProjector::new(c, vb)?),
            ProjectorConfig::Perceiver(c) => Self::Perceiver(PerceiverResampler::new(c, vb)?),
            ProjectorConfig::QFormer(c) => Self::QFormer(QFormer::new(c, vb)?),
        })
    }

    /// # Shapes
    /// `features`: (B, N, Dv) -> (B, M, Dt), M as [`ProjectorConfig::num_output_tokens`].
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.forward_with_instruction(features, None, None)
    }

    /// As [`Projector::forward`]; the Q-Former also reads the instruction
    /// (see [`QFormer::forward`]), the other kinds ignore it.
    ///
    /// # Shapes
    /// `features`: (B, N, Dv); `instruction`: (B, L, Di); `instruction_mask`:
    /// (B, L) of 1 (token) / 0 (padding). Returns (B, M, Dt).
    pub fn forward_with_instruction(
        &self,
        features: &Tensor,
        instruction: Option<&Tensor>,
        instruction_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        match self {
            Self::Linear(p) => p.forward(features),
            Self::Mlp(p) => p.forward(features),
            Self::Perceiver(p) => p.forward(features),
            Self::QFormer(p) => p.forward(features, instruction, instruction_mask),
        }
    }
}

/// A config the projector cannot be built from.
pub(crate) fn config_error(msg: impl std::fmt::Display) -> ModelError {
    ModelError::config("projector", msg)
}

pub(crate) fn check_heads(width: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(config_error(format!(
            "hidden size {width} is not divisible by {heads} attention heads"
        )));
    }
    Ok(width / heads)
}

/// Features as (B, N, D) with D the width the projector was built for.
pub(crate) fn check_features(features: &Tensor, width: usize) -> Result<(usize, usize)> {
    let (b, n, d) = features.dims3().map_err(|_| {
        ModelError::Input(format!("features {:?} are not (B, N, D)", features.dims()))
    })?;
    if d != width {
        return Err(ModelError::Input(format!(
            "features of width {d}, the projector takes {width}"
        )));
    }
    Ok((b, n))
}

pub(crate) fn default_act() -> Activation {
    Activation::Gelu
}
