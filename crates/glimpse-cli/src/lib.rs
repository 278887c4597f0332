//! Library half of the `glimpse` binary: the pipelines that join data
//! preparation and models, shared by the commands and the integration tests.

pub mod alloc;
pub mod device;
pub mod eval;
pub mod heatmap;
pub mod pipeline;
