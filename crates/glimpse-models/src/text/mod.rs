//! Text towers of the dual encoders (CLIP, SigLIP).

pub mod encoder;

pub use encoder::{TextConfig, TextFlavor, TextOutput, TextTransformer};
