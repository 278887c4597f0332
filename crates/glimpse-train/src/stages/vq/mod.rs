//! The `vq` stage: a glimpse VQ-VAE (`glimpse_models::vq`, `model_type`
//! `glimpse_vq`) trained from scratch on images, in a recipe of its own.
//!
//! `recipe.rs` reads `[vq]`, `task.rs` is the loss (reconstruction MSE,
//! β·commitment, the codebook loss unless the codebook follows an EMA) and
//! the held-out PSNR / usage / perplexity, `ema.rs` the EMA update and
//! dead-code restarts, `run.rs` the run: data, weights, the shared
//! training loop, export to `OUT/vq/model/`.

pub mod ema;
pub mod recipe;
pub mod run;
pub mod task;
