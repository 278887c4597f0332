//! Pipelines: a model directory loaded with its tokenizer and image
//! processor, turning files and strings into model outputs.

pub mod causal_lm;
pub mod dual;
pub mod error;
pub mod vlm;

pub use causal_lm::CausalLm;
pub use dual::DualPipeline;
pub use error::{PipelineError, Result};
pub use vlm::{VlmPipeline, VlmPrompt};
