//! Text transformer of CLIP (HF `CLIPTextTransformer`) and SigLIP
//! (HF `SiglipTextTransformer`).

use candle_core::{DType, IndexOp, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};

use crate::error::ConfigError;
use crate::limits;
use crate::nn::layer_norm::layer_norm;
use crate::nn::{LayerNorm, Linear};

use crate::nn::attention::{causal_mask, padding_mask};
use crate::nn::encoder::EncoderConfig;
use crate::nn::Encoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFlavor {
    /// Causal attention, pooled at the end-of-text token.
    Clip,
    /// Bidirectional attention, pooled at the last position (SigLIP pads to
    /// `max_length` and learned to read the pad position), then a linear head.
    Siglip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub flavor: TextFlavor,
    pub encoder: EncoderConfig,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    /// SigLIP's head output size.
    pub projection_size: usize,
}

impl TextConfig {
    /// Sizes in range (see [`crate::limits`]); fields named as the
    /// `text_config` of `config.json` names them.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        self.encoder.validate()?;
        let v = limits::size("vocab_size", self.vocab_size, limits::MAX_VOCAB)?;
        limits::size(
            "max_position_embeddings",
            self.max_position_embeddings,
            limits::MAX_POSITIONS,
        )?;
        limits::size("projection_size", self.projection_size, limits::MAX_HIDDEN)?;
        limits::elems(
            "vocab_size",
            "the token embeddings",
            &[v, self.encoder.hidden_size],
        )?;
        limits::elems(
            "max_position_embeddings",
            "the position embeddings",
            &[self.max_position_embeddings, self.encoder.hidden_size],
        )?;
        limits::params(
            "hidden_size",
            &format!(
                "{} with vocab_size {v} and num_hidden_layers {}",
                self.encoder.hidden_size, self.encoder.num_hidden_layers
            ),
            self.num_params(),
        )?;
        Ok(())
    }

    /// Parameters of the tower: the encoder and both embedding tables.
    /// Only on sizes [`Self::validate`] has bounded (no overflow then).
    pub(crate) fn num_params(&self) -> u128 {
        let d = self.encoder.hidden_size as u128;
        self.encoder.num_params() + (self.vocab_size + self.max_position_embeddings) as u128 * d
    }
}

pub struct TextTransformer {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    head: Option<Linear>,
    cfg: TextConfig,
}

pub struct TextOutput {
    /// (B, L, D) after `final_layer_norm`.
    pub last_hidden_state: Tensor,
    /// (B, D) for CLIP (before the projection), (B, projection_size) for SigLIP.
    pub pooled: Tensor,
}

impl TextTransformer {
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.encoder.hidden_size;
        let emb = vb.pp("embeddings");
        let head = match cfg.flavor {
            TextFlavor::Clip => None,
            TextFlavor::Siglip => Some(crate::nn::linear::linear(
                d,
                cfg.projection_size,
                vb.pp("head"),
            )?),
        };
        Ok(Self {
            token_embedding: crate::nn::linear::embedding(
                cfg.vocab_size,
                d,
                emb.pp("token_embedding"),
            )?,
            position_embedding: crate::nn::linear::embedding(
                cfg.max_position_embeddings,
                d,
                emb.pp("position_embedding"),
            )?,
            encoder: Encoder::new(&cfg.encoder, vb.pp("encoder"))?,
            final_layer_norm: layer_norm(d, cfg.encoder.layer_norm_eps, vb.pp("final_layer_norm"))?,
            head,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// # Shapes
    /// `input_ids`: (B, L) u32; `attention_mask`: (B, L) of 0/1, optional.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<TextOutput> {
        let (b, l) = input_ids.dims2()?;
        if l == 0 {
            candle_core::bail!("text tower got an empty token sequence");
        }
        if l > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "text of {l} tokens is longer than the text tower's {} positions",
                self.cfg.max_position_embeddings
            );
        }
        // An id past the table would fail inside the lookup as a bare index
        // error; name it (DualEncoder reports this as an input error first).
        if let Err(e) = super::check_token_ids(input_ids, self.cfg.vocab_size) {
            candle_core::bail!("{e}");
        }
        let dev = input_ids.device();
        let positions = self
            .position_embedding
            .embeddings()
            .narrow(0, 0, l)?
            .unsqueeze(0)?;
        let xs = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&positions)?;
        let pad = attention_mask.map(padding_mask).transpose()?;
        let mask = match (self.cfg.flavor, pad) {
            (TextFlavor::Clip, Some(pad)) => Some(causal_mask(l, dev)?.broadcast_add(&pad)?),
            (TextFlavor::Clip, None) => Some(causal_mask(l, dev)?),
            (TextFlavor::Siglip, pad) => pad,
        };
        let mask = mask.map(|m| m.to_dtype(xs.dtype())).transpose()?;
        let encoded = self.encoder.forward(&xs, mask.as_ref())?;
        let last_hidden_state = self.final_layer_norm.forward(&encoded)?;
        let pooled = match &self.head {
            // SigLIP: (B, L, D) -> last position (B, D) -> head
            Some(head) => head.forward(&last_hidden_state.i((.., l - 1))?)?,
            // CLIP: (B, L, D) -> each row's EOS position (B, D)
            None => {
                let idx = self.eos_positions(input_ids)?;
                let rows = (0..b)
                    .map(|i| last_hidden_state.i((i, idx[i]))?.unsqueeze(0))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
        };
        Ok(TextOutput {
            last_hidden_state,
            pooled,
        })
    }

    /// Where CLIP pools each row. transformers keeps a legacy rule: configs
    /// with `eos_token_id == 2` (written before the field was right) pool at
    /// the highest token id, which is the EOS token of the original vocab;
    /// otherwise at the first EOS (the first position if there is none,
    /// as `argmax` over all-false gives).
    fn eos_positions(&self, input_ids: &Tensor) -> Result<Vec<usize>> {
        let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        Ok(rows
            .iter()
            .map(|row| {
                if self.cfg.eos_token_id == 2 {
                    // first maximum, as torch.argmax returns
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max).unwrap_or(0)
                } else {
                    row.iter()
                        .position(|&t| t == self.cfg.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect())
    }
}
