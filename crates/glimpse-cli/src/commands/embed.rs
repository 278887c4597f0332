//! `glimpse embed`: L2-normalised image or text embeddings of a CLIP/SigLIP model.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::DualPipeline;

#[derive(Args)]
#[command(about = "Print L2-normalised image or text embeddings of a CLIP or SigLIP model")]
pub struct EmbedArgs {
    /// HF model directory (config.json, model.safetensors, tokenizer.json, preprocessor_config.json)
    #[arg(long)]
    model: PathBuf,
    /// Image files to embed (one row each, in order)
    #[arg(
        long = "image",
        required_unless_present = "texts",
        conflicts_with = "texts"
    )]
    images: Vec<PathBuf>,
    /// Texts to embed (one row each, in order)
    #[arg(long = "text", id = "texts")]
    texts: Vec<String>,
    /// Print {"image_embeds": [[...]]} or {"text_embeds": [[...]]}
    #[arg(long)]
    json: bool,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let pipeline = DualPipeline::load(&args.model, &default_device())?;
    let (key, names, embeds) = if args.images.is_empty() {
        let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
        (
            "text_embeds",
            args.texts.clone(),
            pipeline.text_embeds(&texts)?,
        )
    } else {
        let names = args
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        ("image_embeds", names, pipeline.image_embeds(&args.images)?)
    };
    let rows = embeds.to_vec2::<f32>()?;
    if args.json {
        outln!("{}", serde_json::json!({ key: rows }))?;
    } else {
        for (name, row) in names.iter().zip(&rows) {
            outln!("{name}\t{}", super::format_row(row))?;
        }
    }
    Ok(())
}
