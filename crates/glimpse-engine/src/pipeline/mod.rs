//! Pipelines: a model directory loaded with its tokenizer and image
//! processor, turning files and strings into model outputs.

pub mod causal_lm;
pub mod discrete;
pub mod dual;
pub mod error;
pub mod vlm;

pub use causal_lm::CausalLm;
pub use discrete::{DiscretePipeline, DiscretePrompt, DrawOptions, Drawing};
pub use dual::DualPipeline;
pub use error::{PipelineError, Result};
pub use vlm::{SampledFrames, VlmPipeline, VlmPrompt};
