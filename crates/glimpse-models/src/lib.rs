//! glimpse-models: vision-language model architectures on candle.
//! Pure model code: tensors in, tensors out; no I/O beyond checkpoints.

pub mod dual;
pub mod dual_config;
pub mod error;
pub mod gguf;
pub mod nn;
pub mod text;
pub mod vision;
pub mod weights;

pub use dual::{DualConfig, DualEncoder, DualKind};
pub use error::{ModelError, Result};
pub use gguf::GgufFile;
pub use text::{Decoder, DecoderCache, DecoderConfig, LogitsFor};
