//! Sampling and the generation loop: what turns next-token logits into text.
//!
//! Model-agnostic on purpose (house rule 10): logits come in as `&[f32]`,
//! the model behind [`TokenModel`] owns its tensors and cache.
//!
//! - [`sampling`]: repetition penalty, temperature, top-k, top-p, seeded draw;
//! - [`stop`]: eos ids, stop strings, token budget, [`FinishReason`];
//! - [`stream`]: UTF-8-safe incremental detokenising with stop-string holdback;
//! - [`generate`](mod@generate): prefill / step loop tying them together.

pub mod error;
pub mod generate;
pub mod sampling;
pub mod stop;
pub mod stream;

pub use error::{InferError, Result};
pub use generate::{generate, Generation, GenerationConfig, OutputError, TokenModel};
pub use sampling::{Sampler, SamplingConfig};
pub use stop::{FinishReason, StopRules, StopStrings};
pub use stream::{Piece, TextStream};
