use glimpse_data::DataError;
use glimpse_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Infer(#[from] glimpse_infer::InferError),
    #[error("tensor op: {}", glimpse_models::error::candle_message(.0))]
    Candle(#[from] candle_core::Error),
    /// The request itself is wrong (no labels, no inputs...).
    #[error("{0}")]
    Usage(String),
    /// The model's tokenizer failed on the text (a broken `tokenizer.json`,
    /// not the request): exit 1, HTTP 500.
    #[error("the model's tokenizer cannot encode the {0}")]
    Tokenize(String),
    /// Every slot and queue place is taken; the request may be retried.
    #[error("busy: {0}")]
    Busy(String),
    /// A fault in glimpse, not in the request (a panic caught in model code).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, PipelineError>;
