//! Cross fusion: image states enter the text decoder as the keys and values
//! of gated cross-attention blocks inserted between its layers.

pub mod cross_attention;
