//! Library half of the `glimpse` binary: attention-map drawing and the
//! allocator, shared by the commands and the integration tests. The
//! pipelines (model + tokenizer + processor) live in `glimpse-engine`,
//! which the server shares; the evaluation metrics in `glimpse-eval`.

pub mod alloc;
pub mod heatmap;
