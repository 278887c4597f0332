pub mod ask;
pub mod ask_discrete;
pub mod classify;
pub mod data;
pub mod draw;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod sampling;
pub mod serve;
pub mod tokenize_image;
pub mod train;

use std::path::{Path, PathBuf};

use glimpse_engine::pipeline::PipelineError;

/// Formats a vector for the text output: compact, fixed precision.
pub fn format_row(row: &[f32]) -> String {
    let items: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
    format!("[{}]", items.join(", "))
}

/// `--model`, or else the shipped model `name` (`glimpse-easy-vqa`...):
/// `./models/<name>` when the current directory has it (a checkout, whose
/// model may be newer than the build's), else the copy this binary carries,
/// written to the cache on first use (`crate::shipped`).
pub fn model_dir(arg: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(m) = arg {
        return Ok(m);
    }
    let local = Path::new("models").join(name);
    if local.join("config.json").is_file() {
        return Ok(local);
    }
    let Some(model) = crate::shipped::find(name) else {
        return Err(PipelineError::Usage(format!(
            "--model is required (this glimpse was built without the default model {name})"
        ))
        .into());
    };
    Ok(crate::shipped::materialize(model)?)
}
