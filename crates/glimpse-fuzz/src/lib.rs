//! glimpse-fuzz: the fuzz suite of issue 23 on stable Rust.
//!
//! Property for every target: on any input the parser or loader returns
//! `Ok` or `Err`; it never panics, never runs longer than the time limit,
//! and never grows the heap by more than the target's budget. The targets
//! themselves (`tests/fuzz.rs`) call the glimpse crates; this library holds
//! what they share:
//!
//! - [`harness`]: corpus replay, case drawing, the child-process runner;
//! - [`alloc`]: the counting allocator that enforces the memory budget;
//! - [`mutate`]: byte, field, JSON and TOML mutators as proptest strategies;
//! - [`images`], [`safetensors`], [`gguf`], [`jinja`], [`text`]: the seeds
//!   and strategies of each input kind.
//!
//! docs/reliability.md describes the design and how to run it.

pub mod alloc;
pub mod gguf;
pub mod harness;
pub mod images;
pub mod jinja;
pub mod mutate;
pub mod safetensors;
pub mod text;

pub use alloc::CountingAlloc;
pub use harness::{fuzz, seeds_accepted, Case, Target, Verdict};

/// The repository root (seeds are read from `fixtures/`, `models/`,
/// `recipes/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
