//! Errors of the data crate: one line each, naming the file or field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An image file (or in-memory image, by the name the caller gave it).
    #[error("image {name}: {msg}")]
    Image { name: String, msg: String },

    /// An image processor config (`preprocessor_config.json`, or what holds
    /// one) that cannot be read or used; `msg` names the field.
    #[error("image processor config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    /// A chat template that cannot be read, compiled or rendered; `name` is
    /// its file, or `chat_template` for one given as a string.
    #[error("chat template {name}: {msg}")]
    ChatTemplate { name: String, msg: String },

    /// A video (file or frame folder) that cannot be read, decoded or
    /// sampled as asked.
    #[error("video {name}: {msg}")]
    Video { name: String, msg: String },

    /// GGUF tokenizer metadata that is missing or unusable, by its key.
    #[error("gguf {key}: {msg}")]
    Gguf { key: String, msg: String },

    /// A dataset file (JSONL, JSON, split directory) that cannot be read or
    /// used; `msg` names the line or record where there is one.
    #[error("dataset {}: {msg}", path.display())]
    Dataset { path: PathBuf, msg: String },

    /// Inputs that are fine one by one but not together (a batch of sizes
    /// that differ, a resize to an absurd canvas).
    #[error("{0}")]
    Input(String),

    #[error("tensor op: {}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DataError>;

/// Library errors (image, serde, tokenizers) may span lines; ours may not.
pub(crate) fn one_line(msg: impl std::fmt::Display) -> String {
    msg.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl DataError {
    pub(crate) fn image(name: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        DataError::Image {
            name: name.into(),
            msg: one_line(msg),
        }
    }

    pub(crate) fn video(name: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        DataError::Video {
            name: name.into(),
            msg: one_line(msg),
        }
    }

    pub(crate) fn dataset(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        DataError::Dataset {
            path: path.into(),
            msg: one_line(msg),
        }
    }
}

/// A candle error's message without the backtrace candle appends when
/// `RUST_BACKTRACE` is set, on one line.
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => one_line(other),
    }
}
