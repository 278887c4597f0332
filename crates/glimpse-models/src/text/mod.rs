//! Text models: the text towers of the dual encoders (CLIP, SigLIP) and the
//! Llama-family causal decoder.

pub mod decoder;
pub mod decoder_config;
pub mod decoder_weights;
pub mod encoder;

pub use decoder::{Decoder, DecoderCache, DecoderLayer, LayerHook, LogitsFor};
pub use decoder_config::{DecoderConfig, DecoderKind};
pub use decoder_weights::{DecoderWeights, TokenEmbedding};
pub use encoder::{TextConfig, TextFlavor, TextOutput, TextTransformer};
