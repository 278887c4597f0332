//! Pipelines: a model directory loaded with its tokenizer and image
//! processor, turning files and strings into model outputs.

pub mod dual;
pub mod error;

pub use dual::DualPipeline;
pub use error::{PipelineError, Result};
