//! One file per endpoint family.

pub mod body;
pub mod embeddings;
pub mod generate;
pub mod images;
pub mod models;
