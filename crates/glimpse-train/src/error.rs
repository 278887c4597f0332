//! Error type of glimpse-train (house rule 5: libraries return `Result`, never panic on data).

/// Errors raised by losses and optimisers.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Inputs whose shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Every label of a masked LM batch is the ignore index, so the mean is undefined.
    #[error("every label is ignored (-100): the masked LM loss has no tokens to average")]
    AllLabelsIgnored,
    /// A label outside `0..vocab` that is not the ignore index.
    #[error("label {label} at flat position {position} is outside the vocabulary 0..{vocab}")]
    LabelOutOfRange {
        label: i64,
        position: usize,
        vocab: usize,
    },
    /// An invalid configuration value.
    #[error("invalid config: {0}")]
    Config(String),
    /// Optimizer state that does not match the parameters.
    #[error("optimizer state: {0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;
