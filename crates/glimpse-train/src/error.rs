//! Error type of glimpse-train (house rule 5: libraries return `Result`, never panic on data).

/// Errors raised by losses and optimisers.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}", one_line(.0))]
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
    /// A JSONL metrics log that cannot be opened, written or parsed;
    /// `msg` names the line where there is one.
    #[error("metrics log {}: {msg}", path.display())]
    Metrics {
        path: std::path::PathBuf,
        msg: String,
    },
    /// A plot that cannot be drawn or written.
    #[error("plot {}: {msg}", path.display())]
    Plot {
        path: std::path::PathBuf,
        msg: String,
    },
    /// Writing or reading a checkpoint (names the file).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A recipe that cannot run as a whole (a run directory that already
    /// holds a run, a model the stages cannot build).
    #[error("recipe: {0}")]
    Recipe(String),
    /// A recipe file that cannot be read or parsed, or a value in it out of
    /// range: names the file and the field (`instruct.lr`,
    /// `model.vision.image_size`) where there is one.
    #[error("recipe {}: {}{msg}", path.display(), field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    RecipeField {
        path: std::path::PathBuf,
        field: Option<String>,
        msg: String,
    },
    /// `--resume` with a recipe that differs from the one the run was
    /// started (or last force-resumed) with; `changes` are
    /// `field: old → new`.
    #[error(
        "cannot resume {}: the recipe differs from the run's {} ({}); resume with that recipe, pass --force to continue with the new one, or choose another --out",
        out.display(), saved.display(), changes.join(", ")
    )]
    RecipeChanged {
        out: std::path::PathBuf,
        saved: std::path::PathBuf,
        changes: Vec<String>,
    },
    /// Another process (a `glimpse train` still running) holds the run
    /// directory's lock.
    #[error("{}: another glimpse train{holder} holds this run directory (lock {}); wait for it to finish or stop it", dir.display(), lock.display())]
    Locked {
        dir: std::path::PathBuf,
        lock: std::path::PathBuf,
        /// " (pid N)" when the lock file names its holder, else empty.
        holder: String,
    },
    /// A training or evaluation set with nothing in it.
    #[error("{}: {msg}", path.display())]
    NoData {
        path: std::path::PathBuf,
        msg: String,
    },
    /// A training row that cannot be used, under `on_bad_row = "fail"`.
    #[error("{}: row {id}: {msg}", path.display())]
    BadRow {
        path: std::path::PathBuf,
        id: String,
        msg: String,
    },
    /// A loss that is NaN or infinite: training stops, the last good
    /// checkpoint stays.
    #[error(
        "{stage}: the loss is {value} at step {step}; stopped, the last good checkpoint is {last}"
    )]
    NonFinite {
        stage: String,
        step: usize,
        value: f32,
        last: String,
    },
    /// `--resume` from a checkpoint of a different model.
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error(transparent)]
    Data(#[from] glimpse_data::DataError),
    #[error(transparent)]
    Model(#[from] glimpse_models::ModelError),
    /// Reading or writing a run's files.
    #[error("{0}")]
    Io(String),
}

/// candle errors print a backtrace when RUST_BACKTRACE is set; keep the
/// first line.
pub fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

pub type Result<T> = std::result::Result<T, TrainError>;
