//! Optimisation: AdamW with parameter groups, the warmup-cosine schedule, global-norm
//! clipping and gradient accumulation.

mod accumulate;
mod adamw;
mod clip;
mod schedule;

pub use accumulate::GradAccumulator;
pub use adamw::{param_groups_by_dim, AdamW, AdamWConfig, ParamGroup};
pub use clip::clip_grad_norm;
pub use schedule::WarmupCosine;
