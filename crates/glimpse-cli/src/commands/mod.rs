pub mod ask;
pub mod classify;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod sampling;
pub mod serve;
pub mod train;

use std::path::PathBuf;

use glimpse_engine::pipeline::PipelineError;

/// Formats a vector for the text output: compact, fixed precision.
pub fn format_row(row: &[f32]) -> String {
    let items: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
    format!("[{}]", items.join(", "))
}

/// `--model`, or else `default` (a model the repository ships under
/// `models/`) found from the current directory or the repository root.
pub fn model_dir(arg: Option<PathBuf>, default: &str) -> Result<PathBuf, PipelineError> {
    if let Some(m) = arg {
        return Ok(m);
    }
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(default);
    [PathBuf::from(default), shipped]
        .into_iter()
        .find(|p| p.join("config.json").is_file())
        .ok_or_else(|| {
            PipelineError::Usage(format!("--model is required ({default} is not there)"))
        })
}
