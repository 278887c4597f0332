//! Pre-LayerNorm transformer encoder (HF `CLIPEncoderLayer`, `SiglipEncoderLayer`:
//! same tensor names, same order of operations).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::layer_norm::layer_norm;
use super::{Activation, LayerNorm, Mlp, SelfAttention};
use crate::error::ConfigError;
use crate::limits;

/// Sizes shared by every encoder stack.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl EncoderConfig {
    /// Sizes in range (see [`crate::limits`]), heads dividing the width and
    /// a usable epsilon; fields named as `config.json` names them.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let d = limits::size("hidden_size", self.hidden_size, limits::MAX_HIDDEN)?;
        let i = limits::size(
            "intermediate_size",
            self.intermediate_size,
            limits::MAX_INTERMEDIATE,
        )?;
        limits::size(
            "num_hidden_layers",
            self.num_hidden_layers,
            limits::MAX_LAYERS,
        )?;
        let h = limits::size(
            "num_attention_heads",
            self.num_attention_heads,
            limits::MAX_HEADS,
        )?;
        if !d.is_multiple_of(h) {
            return Err(ConfigError::new(
                "hidden_size",
                format!("{d} is not divisible by num_attention_heads {h}"),
            ));
        }
        limits::positive("layer_norm_eps", self.layer_norm_eps)?;
        limits::elems("intermediate_size", "each MLP layer", &[i, d])?;
        limits::params(
            "hidden_size",
            &format!(
                "{d} with intermediate_size {i} and num_hidden_layers {}",
                self.num_hidden_layers
            ),
            self.num_params(),
        )?;
        Ok(())
    }

    /// Parameters of the layer stack (attention, MLP, two norms per layer).
    /// Only on sizes [`Self::validate`] has bounded (no overflow then).
    pub(crate) fn num_params(&self) -> u128 {
        let (d, i) = (self.hidden_size as u128, self.intermediate_size as u128);
        let layer = 4 * d * d + 4 * d + 2 * d * i + i + d + 4 * d;
        self.num_hidden_layers as u128 * layer
    }
}

pub struct EncoderLayer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            self_attn: SelfAttention::new(h, cfg.num_attention_heads, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(h, cfg.intermediate_size, cfg.hidden_act, vb.pp("mlp"))?,
            layer_norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
        })
    }

    /// # Shapes
    /// `xs`: (B, L, D) -> (B, L, D); `mask` as in [`SelfAttention::forward`].
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attn)?;
        let ff = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        xs + ff
    }
}

pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs the first `upto` layers (all when `None`) and returns every
    /// hidden state the way transformers' `output_hidden_states` does:
    /// index 0 is the input, index i the output of layer i.
    ///
    /// # Shapes
    /// `xs`: (B, L, D); each returned state (B, L, D).
    pub fn forward_hidden_states(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        upto: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        let n = upto.unwrap_or(self.layers.len()).min(self.layers.len());
        let mut states = Vec::with_capacity(n + 1);
        states.push(xs.clone());
        for layer in &self.layers[..n] {
            let next = layer.forward(&states[states.len() - 1], mask)?;
            states.push(next);
        }
        Ok(states)
    }

    /// # Shapes
    /// `xs`: (B, L, D) -> (B, L, D)
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}
