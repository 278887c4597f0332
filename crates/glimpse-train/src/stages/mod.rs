//! The training stages of a recipe, each a [`crate::trainer::Task`].

pub mod augment;
pub mod batch;
pub mod contrastive;
pub mod corpus;
pub mod discrete;
pub mod lm;
pub mod rows;
pub mod vlm;
pub mod vq;
