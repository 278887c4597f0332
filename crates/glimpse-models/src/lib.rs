//! glimpse-models: vision-language model architectures on candle.
//! Pure model code: tensors in, tensors out; no I/O beyond checkpoints.

pub mod attention_map;
pub mod discrete;
pub mod dual;
pub mod dual_config;
pub mod error;
pub mod fusion;
pub mod gguf;
pub mod gguf_requant;
mod gguf_scan;
pub mod idefics3;
pub mod limits;
pub mod llava_next;
pub mod llava_next_video;
pub mod lora;
pub mod mllama;
pub mod nn;
pub mod projector;
pub mod qwen2_vl;
mod shape_check;
pub mod temporal;
pub mod text;
pub mod vision;
pub mod vlm;
pub mod vlm_config;
pub mod vq;
pub mod weights;

pub use attention_map::RowLayout;
pub use dual::{DualConfig, DualEncoder, DualKind};
pub use error::{ConfigError, ModelError, Result};
pub use gguf::GgufFile;
pub use lora::{Adapter, LoraConfig, LoraWeights};
pub use text::{Decoder, DecoderCache, DecoderConfig, LogitsFor};
pub use vlm::{Vlm, VlmCache, VlmNames};
pub use vlm_config::{FeatureSelect, FusionConfig, VlmConfig, VlmFormat};
