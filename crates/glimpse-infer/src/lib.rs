//! Sampling and the generation loop: what turns next-token logits into text.
//!
//! Model-agnostic on purpose (house rule 10): logits come in as `&[f32]`,
//! the model behind [`TokenModel`] owns its tensors and cache.
//!
//! - [`sampling`]: repetition penalty, temperature, top-k, top-p, seeded draw;
//! - [`stop`]: eos ids, stop strings, token budget, [`FinishReason`];
//! - [`stream`]: UTF-8-safe incremental detokenising with stop-string holdback;
//! - [`sequence`]: one sequence advanced a token at a time (what a
//!   scheduler batching many sequences drives);
//! - [`generate`](mod@generate): prefill / step loop over one sequence;
//! - [`guidance`]: image codes drawn in their id range, with classifier-free guidance.

pub mod error;
pub mod generate;
pub mod guidance;
pub mod sampling;
pub mod sequence;
pub mod stop;
pub mod stream;

pub use error::{InferError, Result};
pub use generate::{generate, Generation, GenerationConfig, OutputError, TokenModel};
pub use guidance::{draw_image_tokens, GuidedModel, ImageSampling};
pub use sampling::{Sampler, SamplingConfig};
pub use sequence::{Advance, Sequence};
pub use stop::{FinishReason, StopRules, StopStrings};
pub use stream::{Piece, TextStream};
