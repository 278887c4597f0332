//! The `[discrete]` stage: one decoder whose vocabulary holds a glimpse
//! VQ-VAE's codes, trained from scratch to read images (image → answer)
//! and to draw them (caption → image), in a recipe of its own after the
//! `vq` stage (issue 21).
//!
//! `recipe.rs` reads the recipe, `model.rs` the tokens, ids and
//! `config.json` of the format, `task.rs` the rows and loss, `run.rs` the
//! run: the VQ stage, codes cached, the shared loop, the export.

pub mod model;
pub mod recipe;
pub mod run;
pub mod task;
