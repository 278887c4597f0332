//! Library half of the `glimpse` binary: evaluation, attention-map
//! drawing and the allocator, shared by the commands and the integration
//! tests. The pipelines (model + tokenizer + processor) live in
//! `glimpse-engine`, which the server shares.

pub mod alloc;
pub mod eval;
pub mod heatmap;
