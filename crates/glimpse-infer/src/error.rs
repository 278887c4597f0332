//! Errors of the inference crate: one line each, naming what failed.

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A sampling or generation setting out of range (negative temperature, top_p > 1, ...).
    #[error("config: {0}")]
    Config(String),

    /// Logits that cannot be sampled from: empty, or every value NaN / -inf.
    #[error("logits: {0}")]
    Logits(String),

    /// The model's `prefill` or `step` failed; the message is its error, flattened to one line.
    #[error("model: {0}")]
    Model(String),

    /// The tokenizer failed to decode generated ids.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The `on_text` callback refused a piece (closed pipe, client gone).
    #[error("output: {0}")]
    Output(String),
}

pub type Result<T> = std::result::Result<T, InferError>;

/// Library errors (tokenizers, candle) may span lines; ours may not.
pub(crate) fn one_line(msg: impl std::fmt::Display) -> String {
    msg.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
