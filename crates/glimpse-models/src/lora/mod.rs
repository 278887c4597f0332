//! LoRA adapters (Hu et al. 2021) on the decoder's linear layers, in
//! PEFT's on-disk layout: the config (`config.rs`, `adapter_config.json`),
//! the adapted layer and its dropout (`linear.rs`), PEFT's files, merging
//! for export (`files.rs`), and where a model being built finds its
//! factors (`source.rs`: an adapter from disk, or the trainer's
//! `VarBuilder`).

pub mod config;
pub mod files;
pub mod linear;
pub mod source;

pub use config::{LoraConfig, TargetMatcher, TargetModules, MAX_RANK};
pub use files::{
    is_adapter_dir, is_lora_tensor, load_adapter, merge_into, resolve_base, save_adapter, Adapter,
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, MAX_ADAPTER_BYTES, PEFT_PREFIX,
};
pub use linear::{LoraDropout, LoraLinear};
pub use source::{LoraWeights, PEFT_DECODER_PREFIXES};
