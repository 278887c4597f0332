//! `glimpse tokenize-image`: an image → the discrete codes of a VQ image
//! tokenizer (Chameleon, Janus, Emu3) and their grid; for Chameleon and
//! Emu3 also the token ids their language model reads (`vocabulary_map`;
//! Emu3's end each row with its end-of-row token).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::Args;
use glimpse_data::vq_processor::VqProcessor;
use glimpse_data::{load_rgb, ImageLimits};
use glimpse_engine::device::default_device;
use glimpse_models::vq::VqTokenizer;

#[derive(Args)]
#[command(
    about = "Print the discrete image codes of a VQ image tokenizer (Chameleon, Janus, Emu3)"
)]
pub struct TokenizeImageArgs {
    /// HF model directory (config.json, model.safetensors, preprocessor_config.json) of a
    /// Chameleon, Janus or Emu3 ForConditionalGeneration, or of a stand-alone VQ model
    #[arg(long)]
    model: PathBuf,
    /// The image file
    image: PathBuf,
    /// Print {"model", "grid": [h, w], "codes": [...], "token_ids": [...] (Chameleon, Emu3)}
    #[arg(long)]
    json: bool,
}

pub fn run(args: TokenizeImageArgs) -> Result<()> {
    let device = default_device();
    let tokenizer = VqTokenizer::load(&args.model, &device)?;
    let processor = VqProcessor::from_file(&args.model.join("preprocessor_config.json"))?;
    let img = load_rgb(&args.image, &ImageLimits::default())?;
    let name = args.image.display().to_string();
    let (values, h, w) = processor.preprocess(&img, &name)?;
    // CHW values -> (1, 3, H, W)
    let pixels = Tensor::from_vec(values, (1, 3, h, w), &device)?;
    let q = tokenizer
        .model
        .encode(&pixels)
        .with_context(|| format!("{name}: processed to {h}x{w}"))?;
    let (_, gh, gw) = q.codes.dims3()?;
    let codes = q.codes.flatten_all()?.to_vec1::<u32>()?;
    let token_ids = match &tokenizer.vocabulary {
        Some(v) => Some(v.grid_token_ids(&codes, gw).map_err(|m| {
            anyhow::anyhow!("config {}: {m}", args.model.join("config.json").display())
        })?),
        None => None,
    };
    let family = tokenizer.model.config().family.name();
    if args.json {
        let mut out = serde_json::json!({
            "model": family,
            "grid": [gh, gw],
            "codes": codes,
        });
        if let Some(ids) = &token_ids {
            out["token_ids"] = serde_json::json!(ids);
        }
        outln!("{out}")?;
    } else {
        outln!("{family} {gh}x{gw} codes")?;
        for row in codes.chunks(gw.max(1)) {
            let line: Vec<String> = row.iter().map(u32::to_string).collect();
            outln!("{}", line.join(" "))?;
        }
        if let Some(ids) = &token_ids {
            outln!("token ids")?;
            let per_row = ids.len() / gh.max(1);
            for row in ids.chunks(per_row.max(1)) {
                let line: Vec<String> = row.iter().map(u32::to_string).collect();
                outln!("{}", line.join(" "))?;
            }
        }
    }
    Ok(())
}
