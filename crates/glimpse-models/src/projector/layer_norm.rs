//! LayerNorm (torch `nn.LayerNorm`) that stays differentiable: the shared
//! [`crate::nn::layer_norm`] module, which the vision and text towers use too.

pub(crate) use crate::nn::layer_norm::{layer_norm, LayerNorm};
