pub mod ask;
pub mod classify;
pub mod embed;
pub mod generate;
pub mod sampling;

/// Formats a vector for the text output: compact, fixed precision.
pub fn format_row(row: &[f32]) -> String {
    let items: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
    format!("[{}]", items.join(", "))
}
