//! Activations by their Hugging Face `hidden_act` names.

use candle_core::{Result, Tensor};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's approximation.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU with erf (`nn.GELU()`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation (`gelu_pytorch_tanh`, a.k.a. `gelu_new`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }
}
