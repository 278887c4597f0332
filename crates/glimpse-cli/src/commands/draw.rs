//! `glimpse draw`: an image drawn by a discrete-token model (its decoder
//! writes VQ codes after the caption, only among the code ids, with
//! classifier-free guidance; the VQ decoder turns them into pixels),
//! written as a PNG. `--codes` decodes given codes instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use glimpse_cli::heatmap::check_target;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::discrete::png_bytes;
use glimpse_engine::pipeline::{DiscretePipeline, DrawOptions, PipelineError};
use glimpse_models::discrete::{is_discrete_dir, MODEL_TYPE};

#[derive(Args)]
#[command(about = "Draw an image from a caption with a discrete-token model (glimpse_discrete)")]
pub struct DrawArgs {
    /// Model directory of a discrete-token model (config.json with model_type glimpse_discrete)
    #[arg(long)]
    model: PathBuf,
    /// Where to write the PNG (the VQ's image size)
    #[arg(long, value_name = "OUT.png")]
    out: PathBuf,
    /// Classifier-free guidance scale: logits = uncond + S * (cond - uncond); 1 = no guidance
    #[arg(long = "cfg", value_name = "S", default_value_t = DrawOptions::DEFAULT_CFG)]
    cfg_scale: f32,
    /// Seed of the code draws
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature of each code (0 = greedy)
    #[arg(long, default_value_t = DrawOptions::DEFAULT_TEMPERATURE)]
    temperature: f32,
    /// Keep only the K most likely codes at each draw
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely codes up to this probability mass
    #[arg(long)]
    top_p: Option<f32>,
    /// Decode these codes (row by row, separated by commas or spaces) instead of drawing
    #[arg(long, value_name = "C,C,...", conflicts_with = "prompt")]
    codes: Option<String>,
    /// Print one JSON object (prompt, grid, codes, settings, timings) to stdout
    #[arg(long)]
    json: bool,
    /// What to draw ("a red circle")
    #[arg(required_unless_present = "codes")]
    prompt: Option<String>,
}

pub fn run(args: DrawArgs) -> Result<()> {
    check_target(&args.out)?;
    require_discrete(&args.model)?;
    let pipeline = DiscretePipeline::load(&args.model, &default_device())?;
    let (h, w) = pipeline.config().grid;
    let (codes, image, prompt_ids, timing) = match &args.codes {
        Some(list) => {
            let codes = parse_codes(list)?;
            let image = pipeline.decode_codes(&codes)?;
            (codes, image, Vec::new(), None)
        }
        None => {
            let mut opts = DrawOptions::with_seed(args.seed);
            opts.cfg_scale = args.cfg_scale;
            opts.sampling.temperature = args.temperature;
            opts.sampling.top_k = args.top_k;
            opts.sampling.top_p = args.top_p;
            let prompt = args.prompt.as_deref().unwrap_or_default();
            let d = pipeline.draw(prompt, &opts, |_, _| {})?;
            (
                d.codes,
                d.image,
                d.prompt_ids,
                Some((d.sample_secs, d.decode_secs)),
            )
        }
    };
    let png = png_bytes(&image)?;
    std::fs::write(&args.out, png).with_context(|| format!("writing {}", args.out.display()))?;
    let (sample, decode) = timing.unwrap_or((0.0, 0.0));
    eprintln!(
        "{} codes ({h}x{w}) {} in {:.0} ms, decoded in {:.0} ms -> {} ({}x{})",
        codes.len(),
        if timing.is_some() { "drawn" } else { "given" },
        sample * 1000.0,
        decode * 1000.0,
        args.out.display(),
        image.width(),
        image.height()
    );
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "prompt": args.prompt,
                "prompt_tokens": prompt_ids.len(),
                "grid": [h, w],
                "codes": codes,
                "cfg": args.cfg_scale,
                "seed": args.seed,
                "temperature": args.temperature,
                "out": args.out,
                "width": image.width(),
                "height": image.height(),
                "sample_ms": sample * 1000.0,
                "decode_ms": decode * 1000.0,
            })
        )?;
    }
    Ok(())
}

/// A directory whose `config.json` is not a discrete-token model is
/// refused naming what it is.
fn require_discrete(dir: &Path) -> Result<()> {
    if !dir.join("config.json").is_file() || is_discrete_dir(dir) {
        // a missing config is the loader's to report
        return Ok(());
    }
    let kind = glimpse_data::read_bounded_text(
        &dir.join("config.json"),
        glimpse_data::MAX_CONFIG_BYTES,
        "config",
    )
    .ok()
    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    .and_then(|v| v.get("model_type")?.as_str().map(str::to_string))
    .unwrap_or_else(|| "unknown".into());
    Err(PipelineError::Usage(format!(
        "{} has no image tokens (model_type {kind:?}): draw needs a discrete-token model ({MODEL_TYPE}), whose vocabulary holds VQ codes",
        dir.display()
    ))
    .into())
}

fn parse_codes(list: &str) -> Result<Vec<u32>> {
    let codes = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| {
                PipelineError::Usage(format!("--codes: {s:?} is not a code (a whole number)"))
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if codes.is_empty() {
        return Err(PipelineError::Usage("--codes is empty".into()).into());
    }
    Ok(codes)
}
