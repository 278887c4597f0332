//! `glimpse eval zeroshot`: colour and shape of easy-VQA images by
//! zero-shot classification with a CLIP / SigLIP model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::DualPipeline;
use glimpse_eval::{evaluate_zeroshot, load_image_attributes, Accuracy};

use super::{pct, table, DEFAULT_DUAL};

#[derive(Args)]
#[command(
    about = "Zero-shot colour (\"a {color} shape\") and shape (\"a {shape}\") accuracy on an easy-VQA split"
)]
pub struct ZeroshotArgs {
    /// CLIP or SigLIP directory (default: ./models/glimpse-easy-vqa-clip, else the copy built into glimpse)
    #[arg(long)]
    model: Option<PathBuf>,
    /// easy-VQA split directory (images/ + questions.json)
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

pub fn run(args: ZeroshotArgs) -> Result<()> {
    let images = load_image_attributes(&args.data)?;
    super::require_examples(&images, &args.data)?;
    let dir = crate::commands::model_dir(args.model, DEFAULT_DUAL)?;
    let dual = DualPipeline::load(&dir, &default_device())?;
    let start = Instant::now();
    let r = evaluate_zeroshot(&dual, &images, !args.json)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let mut out = r.to_json();
        out["model"] = dir.display().to_string().into();
        out["data"] = args.data.display().to_string().into();
        out["seconds"] = seconds.into();
        outln!("{out}")?;
        return Ok(());
    }
    outln!(
        "Zero-shot classification: {} on {} ({} images, {seconds:.1} s)",
        dir.display(),
        args.data.display(),
        r.images
    )?;
    let row = |name: &str, a: Accuracy| {
        vec![
            name.to_string(),
            pct(a.fraction()),
            a.correct.to_string(),
            a.total.to_string(),
            (r.images - a.total).to_string(),
        ]
    };
    let rows = [
        row("colour (8 classes)", r.color),
        row("shape (3 classes)", r.shape),
        row("both", r.both),
    ];
    outln!(
        "{}",
        table(
            &["task", "accuracy", "correct", "total", "skipped (unknown)"],
            &rows
        )
    )?;
    Ok(())
}
