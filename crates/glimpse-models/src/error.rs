//! Errors of the model crate. Every message is one line and names the file,
//! field or tensor at fault, because the CLI prints it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file that could not be found, read or parsed.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    /// A config value the model cannot work with.
    #[error("config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    /// Tensors missing, unexpected or misshaped in a checkpoint.
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },

    /// An input the model cannot take (wrong shape, empty batch...).
    #[error("{0}")]
    Input(String),

    #[error("tensor op: {}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        ModelError::File {
            path: path.into(),
            msg: one_line(msg),
        }
    }

    pub fn config(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        ModelError::Config {
            path: path.into(),
            msg: one_line(msg),
        }
    }
}

/// Error sources (serde, safetensors) sometimes span lines; the CLI promises one.
pub(crate) fn one_line(msg: impl std::fmt::Display) -> String {
    msg.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A candle error's message without the backtrace candle appends when
/// `RUST_BACKTRACE` is set, on one line.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => one_line(other),
    }
}
