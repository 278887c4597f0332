//! Discrete visual tokens: a convolutional VQ-VAE (the taming-transformers
//! VQGAN that Chameleon's, Janus's and Emu3's image tokenizers are) and its
//! nearest-codebook quantiser with straight-through gradients.
//!
//! `config.rs` reads the Hub configs, `blocks.rs` / `encoder.rs` /
//! `decoder.rs` are the network (Chameleon, Janus), `temporal.rs` +
//! `emu3.rs` Emu3's video variant, `quantizer.rs` the codebook (losses,
//! usage, perplexity), `vocabulary.rs` the code → token id maps,
//! `model.rs` the whole model and the strict loader.

pub mod blocks;
pub mod config;
pub mod decoder;
pub mod emu3;
pub mod encoder;
pub mod model;
pub mod quantizer;
pub mod temporal;
pub mod vocabulary;

pub use config::{VqConfig, VqFamily};
pub use model::{VqTokenizer, VqVae};
pub use quantizer::{codebook_usage, perplexity, psnr_db, CodeStats, Quantized, Quantizer};
pub use vocabulary::ImageVocabulary;
