//! `glimpse eval`: a model scored on a dataset, as a table or one JSON
//! object. The running and scoring are library code (`glimpse-eval`, which
//! the trainer's held-out evaluation shares); the commands load and print.

pub mod discrete;
pub mod pope;
pub mod retrieval;
pub mod vqa;
pub mod zeroshot;

use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};

/// The VLM `vqa` and `pope` default to (see `commands::model_dir`).
const DEFAULT_VLM: &str = "glimpse-easy-vqa";
/// The dual encoder `zeroshot` and `retrieval` default to.
const DEFAULT_DUAL: &str = "glimpse-easy-vqa-clip";

#[derive(Args)]
#[command(about = "Evaluate a model on a dataset (VQA, POPE, zero-shot, retrieval, VQ, drawing)")]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    Vqa(vqa::VqaArgs),
    Pope(pope::PopeArgs),
    Zeroshot(zeroshot::ZeroshotArgs),
    Retrieval(retrieval::RetrievalArgs),
    Vq(discrete::VqArgs),
    Draw(discrete::DrawArgs),
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.command {
        EvalCommand::Vqa(a) => vqa::run(a),
        EvalCommand::Pope(a) => pope::run(a),
        EvalCommand::Zeroshot(a) => zeroshot::run(a),
        EvalCommand::Retrieval(a) => retrieval::run(a),
        EvalCommand::Vq(a) => discrete::vq(a),
        EvalCommand::Draw(a) => discrete::draw(a),
    }
}

/// An empty data set is refused before a model loads: every score of
/// nothing would print as 0% and exit 0, as if the model had failed.
fn require_examples<T>(items: &[T], data: &Path) -> Result<()> {
    if items.is_empty() {
        anyhow::bail!("no examples in {}", data.display());
    }
    Ok(())
}

/// Rows under a header, the first column left-aligned, the others right.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// A fraction as a percentage cell.
fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}
