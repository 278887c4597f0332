//! Instruction-aware Q-Former (InstructBLIP §3.1, HF
//! `InstructBlipQFormerModel` + `query_tokens` + `language_projection`):
//! learned queries self-attend jointly with the instruction, cross-attend
//! to the image features and come out as `num_query_tokens` LM embeddings.
//!
//! Departure from InstructBLIP: the instruction arrives as the language
//! model's token embeddings of the question, mapped to the Q-Former width by
//! `instruction_projection`, rather than re-tokenized for a BERT vocabulary,
//! so no second tokenizer is needed. Tensor names otherwise follow HF.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::layer_norm::{layer_norm, LayerNorm};
use super::qformer_layer::QFormerLayer;
use super::{check_features, check_heads, config_error, default_act, TokenCompression};
use crate::error::{ModelError, Result};
use crate::nn::linear::linear;
use crate::nn::{Activation, Linear};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QFormerConfig {
    /// Dv: the vision tower's feature width (HF `encoder_hidden_size`).
    #[serde(alias = "encoder_hidden_size")]
    pub vision_hidden_size: usize,
    /// D: the Q-Former's width.
    pub hidden_size: usize,
    /// Dt: the language model's embedding width (`language_projection` output).
    pub text_hidden_size: usize,
    /// Di: width of the instruction embeddings (the LM's token embeddings).
    pub instruction_hidden_size: usize,
    /// Learned queries, the number of tokens out whatever N.
    #[serde(alias = "num_queries")]
    pub num_query_tokens: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// BERT's 1e-12 by default.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Longest instruction, in tokens (learned position embeddings).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Layer i cross-attends to the image when i % frequency == 0. 1 (every
    /// layer) by default; InstructBLIP's checkpoints use 2.
    #[serde(default = "default_frequency")]
    pub cross_attention_frequency: usize,
    /// Applied first; pixel shuffle makes the image keys/values 4·Dv wide.
    #[serde(default)]
    pub compression: TokenCompression,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_max_positions() -> usize {
    512
}

fn default_frequency() -> usize {
    1
}

impl QFormerConfig {
    pub fn tiny() -> Self {
        Self {
            vision_hidden_size: 32,
            hidden_size: 24,
            text_hidden_size: 48,
            instruction_hidden_size: 40,
            num_query_tokens: 6,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 48,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            max_position_embeddings: 64,
            cross_attention_frequency: 1,
            compression: TokenCompression::None,
        }
    }
}

pub struct QFormer {
    /// (1, Q, D)
    query_tokens: Tensor,
    instruction_projection: Linear,
    /// `qformer.embeddings.position_embeddings.weight`, (max positions, D)
    position_embeddings: Tensor,
    /// `qformer.embeddings.layernorm`, over queries and text together
    layernorm: LayerNorm,
    /// `qformer.encoder.layer.{i}`
    layers: Vec<QFormerLayer>,
    language_projection: Linear,
    compression: TokenCompression,
    vision_hidden_size: usize,
    instruction_hidden_size: usize,
}

impl QFormer {
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        check_heads(cfg.hidden_size, cfg.num_attention_heads)?;
        if cfg.num_query_tokens == 0 || cfg.num_hidden_layers == 0 {
            return Err(config_error(
                "q-former needs at least one query token and one layer",
            ));
        }
        let d = cfg.hidden_size;
        // InstructBLIP's `_init_weights`: normal(0, 0.02)
        let small = Init::Randn {
            mean: 0.,
            stdev: 0.02,
        };
        let qformer = vb.pp("qformer");
        let embeddings = qformer.pp("embeddings");
        let vb_layers = qformer.pp("encoder").pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| QFormerLayer::new(cfg, i, vb_layers.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            query_tokens: vb.get_with_hints((1, cfg.num_query_tokens, d), "query_tokens", small)?,
            instruction_projection: linear(
                cfg.instruction_hidden_size,
                d,
                vb.pp("instruction_projection"),
            )?,
            position_embeddings: embeddings.pp("position_embeddings").get_with_hints(
                (cfg.max_position_embeddings, d),
                "weight",
                small,
            )?,
            layernorm: layer_norm(d, cfg.layer_norm_eps, embeddings.pp("layernorm"))?,
            layers,
            language_projection: linear(d, cfg.text_hidden_size, vb.pp("language_projection"))?,
            compression: cfg.compression,
            vision_hidden_size: cfg.vision_hidden_size,
            instruction_hidden_size: cfg.instruction_hidden_size,
        })
    }

    /// `instruction` is the language model's token embeddings of the
    /// question (what its embedding table returns for the prompt's ids),
    /// projected to the Q-Former width inside; without it the queries read
    /// the image alone (BLIP-2's Q-Former). `instruction_mask` marks real
    /// tokens (1) and padding (0); without it every token counts.
    ///
    /// # Shapes
    /// `features`: (B, N, Dv); `instruction`: (B, L, Di); `instruction_mask`: (B, L).
    /// Returns (B, Q, Dt) for any N and L.
    pub fn forward(
        &self,
        features: &Tensor,
        instruction: Option<&Tensor>,
        instruction_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _) = check_features(features, self.vision_hidden_size)?;
        let image = self.compression.forward(features)?;
        let (q, d) = (self.query_tokens.dim(1)?, self.query_tokens.dim(2)?);
        // (1, Q, D) -> (B, Q, D)
        let queries = self.query_tokens.broadcast_as((b, q, d))?.contiguous()?;
        let text = match instruction {
            Some(instruction) => Some(self.embed_instruction(instruction, b)?),
            None => None,
        };
        let mask = match (text.as_ref(), instruction_mask) {
            (Some(text), Some(mask)) => Some(self.joint_mask(mask, b, q, text.dim(1)?)?),
            _ => None,
        };
        // embeddings.layernorm runs over queries and text together
        let mut queries = self.layernorm.forward(&queries)?;
        let mut text = match text {
            Some(text) => Some(self.layernorm.forward(&text)?),
            None => None,
        };
        for layer in &self.layers {
            (queries, text) = layer.forward(&queries, text.as_ref(), &image, mask.as_ref())?;
        }
        Ok(self.language_projection.forward(&queries)?)
    }

    /// # Shapes
    /// `instruction`: (B, L, Di) -> (B, L, D), position embeddings added.
    fn embed_instruction(&self, instruction: &Tensor, b: usize) -> Result<Tensor> {
        let (ib, l, di) = instruction.dims3().map_err(|_| {
            ModelError::Input(format!(
                "instruction {:?} is not (B, L, D)",
                instruction.dims()
            ))
        })?;
        let max = self.position_embeddings.dim(0)?;
        if ib != b || di != self.instruction_hidden_size || l > max {
            return Err(ModelError::Input(format!(
                "instruction {:?} does not fit: batch {b}, width {}, at most {max} tokens",
                instruction.dims(),
                self.instruction_hidden_size
            )));
        }
        let positions = self.position_embeddings.narrow(0, 0, l)?;
        Ok(self
            .instruction_projection
            .forward(instruction)?
            .broadcast_add(&positions)?)
    }

    /// Additive mask over queries then text: queries are never masked.
    ///
    /// # Shapes
    /// `mask`: (B, L) of 1 / 0 -> (B, 1, 1, Q + L)
    fn joint_mask(&self, mask: &Tensor, b: usize, q: usize, l: usize) -> Result<Tensor> {
        if mask.dims() != [b, l] {
            return Err(ModelError::Input(format!(
                "instruction mask {:?}, expected ({b}, {l})",
                mask.dims()
            )));
        }
        let keep = mask.to_dtype(candle_core::DType::F32)?;
        let ones = Tensor::ones((b, q), candle_core::DType::F32, mask.device())?;
        // (B, Q) ++ (B, L) -> (B, Q + L)
        let joint = Tensor::cat(&[&ones, &keep], 1)?;
        Ok(crate::nn::attention::padding_mask(&joint)?)
    }
}
