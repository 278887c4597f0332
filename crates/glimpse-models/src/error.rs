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

/// A config value refused, naming the field at fault as the JSON spells it
/// (`text_config.hidden_size`). Parsers that read a JSON value rather than
/// a file return it; [`ConfigError::at`] names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} {msg}")]
pub struct ConfigError {
    pub field: String,
    pub msg: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            msg: one_line(msg),
        }
    }

    /// The same fault one section down: `hidden_size` -> `text_config.hidden_size`.
    pub fn within(mut self, section: &str) -> Self {
        self.field = format!("{section}.{}", self.field);
        self
    }

    /// As a [`ModelError::Config`] of the file `path`.
    pub fn at(self, path: impl Into<PathBuf>) -> ModelError {
        ModelError::config(path, self)
    }
}

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        ModelError::File {
            path: path.into(),
            msg: one_line(msg),
        }
    }

    /// Reads a JSON config or index: a regular file under glimpse-data's
    /// config cap, so a FIFO or `/dev/zero` named `config.json` is refused
    /// instead of blocking or filling memory.
    pub fn read_config(path: &std::path::Path) -> Result<String> {
        glimpse_data::files::read_bounded_text(
            path,
            glimpse_data::files::MAX_CONFIG_BYTES,
            "config",
        )
        .map_err(|e| ModelError::file(path, e))
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
