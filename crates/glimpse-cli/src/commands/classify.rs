//! `glimpse classify`: zero-shot label probabilities for one image.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{DualPipeline, PipelineError};

#[derive(Args)]
#[command(
    about = "Zero-shot classify an image against text labels (softmax for CLIP, sigmoid for SigLIP)"
)]
pub struct ClassifyArgs {
    /// HF model directory of a CLIP or SigLIP model
    #[arg(long)]
    model: PathBuf,
    /// The image to classify
    image: PathBuf,
    /// Comma-separated labels, e.g. "a photo of a cat,a photo of a dog"
    #[arg(long, value_delimiter = ',', required = true)]
    labels: Vec<String>,
    /// Print {"labels": [...], "probs": [...]} in the order the labels were given
    #[arg(long)]
    json: bool,
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    let labels: Vec<&str> = args.labels.iter().map(|l| l.trim()).collect();
    if let Some(i) = labels.iter().position(|l| l.is_empty()) {
        return Err(PipelineError::Usage(format!("--labels: label {} is empty", i + 1)).into());
    }
    let pipeline = DualPipeline::load(&args.model, &default_device())?;
    let probs = pipeline.classify(&args.image, &labels)?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({ "labels": labels, "probs": probs })
        )?;
        return Ok(());
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    for i in order {
        outln!("{:>7.2}%  {}", probs[i] * 100.0, labels[i])?;
    }
    Ok(())
}
