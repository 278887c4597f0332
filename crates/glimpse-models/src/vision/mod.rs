//! Vision towers: a ViT with CLIP or SigLIP conventions.

pub mod attention_pool;
pub mod config;
pub mod embeddings;
pub mod patch_positions;
pub mod vit;

pub use config::{VitConfig, VitFlavor};
pub use vit::{VisionOutput, VisionTransformer};
