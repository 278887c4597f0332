//! `glimpse eval vq` (a VQ's held-out reconstruction PSNR and codebook
//! use, optionally with the inputs and reconstructions classified by a
//! CLIP judge) and `glimpse eval draw` (a discrete-token model's drawings
//! of every "a {color} {shape}" over several seeds, judged zero-shot by a
//! CLIP model).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use glimpse_data::vq_processor::VqProcessor;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{DiscretePipeline, DrawOptions, DualPipeline, PipelineError};
use glimpse_eval::{evaluate_drawing, evaluate_vq, load_image_attributes, Accuracy};
use glimpse_infer::SamplingConfig;
use glimpse_models::vq::VqTokenizer;

use super::{pct, table, DEFAULT_DUAL};

#[derive(Args)]
#[command(
    about = "A VQ image tokenizer's reconstruction PSNR and codebook usage on an easy-VQA split"
)]
pub struct VqArgs {
    /// A VQ model directory (glimpse_vq, Chameleon, Janus, Emu3) or a discrete-token model
    #[arg(long)]
    model: PathBuf,
    /// easy-VQA split directory (images/ + questions.json)
    #[arg(long)]
    data: PathBuf,
    /// Only the first N images
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Also classify the images as the VQ reads them and their reconstructions zero-shot with
    /// this CLIP / SigLIP model
    #[arg(long, value_name = "DIR")]
    judge: Option<PathBuf>,
    /// Write the first 16 images as the VQ reads them (top row) over their
    /// reconstructions (bottom row) to this PNG, each pixel drawn 4x4
    #[arg(long, value_name = "OUT.png")]
    examples: Option<PathBuf>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

/// Pairs of images as two rows (first of each pair above), every pixel a
/// `scale`-wide square, 2 pixels apart.
fn pair_grid(pairs: &[(image::RgbImage, image::RgbImage)], scale: u32) -> image::RgbImage {
    let (w, h) = pairs.first().map_or((1, 1), |(a, _)| a.dimensions());
    let (cw, ch) = (w * scale + 2, h * scale + 2);
    let mut out =
        image::RgbImage::from_pixel(cw * pairs.len() as u32, ch * 2, image::Rgb([255; 3]));
    for (k, (a, b)) in pairs.iter().enumerate() {
        for (row, img) in [a, b].into_iter().enumerate() {
            for (x, y, p) in img.enumerate_pixels() {
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (ox, oy) = (
                            k as u32 * cw + x * scale + dx,
                            row as u32 * ch + y * scale + dy,
                        );
                        if ox < out.width() && oy < out.height() {
                            out.put_pixel(ox, oy, *p);
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn vq(args: VqArgs) -> Result<()> {
    if let Some(p) = &args.examples {
        glimpse_cli::heatmap::check_target(p)?;
    }
    if args.limit == Some(0) {
        return Err(PipelineError::Usage("--limit must be at least 1".into()).into());
    }
    let mut images = load_image_attributes(&args.data)?;
    super::require_examples(&images, &args.data)?;
    if let Some(n) = args.limit {
        images.truncate(n);
    }
    let device = default_device();
    let tokenizer = VqTokenizer::load(&args.model, &device)?;
    let processor = VqProcessor::from_file(&args.model.join("preprocessor_config.json"))?;
    let judge = args
        .judge
        .as_deref()
        .map(|d| DualPipeline::load(d, &device))
        .transpose()?;
    let start = Instant::now();
    let keep = if args.examples.is_some() { 16 } else { 0 };
    let r = evaluate_vq(
        &tokenizer,
        &processor,
        &images,
        judge.as_ref(),
        keep,
        !args.json,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(p) = &args.examples {
        pair_grid(&r.examples, 4)
            .save_with_format(p, image::ImageFormat::Png)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    if args.json {
        let mut out = r.to_json();
        out["model"] = args.model.display().to_string().into();
        out["data"] = args.data.display().to_string().into();
        out["judge"] = args.judge.as_ref().map(|j| j.display().to_string()).into();
        out["seconds"] = seconds.into();
        outln!("{out}")?;
        return Ok(());
    }
    outln!(
        "VQ reconstruction: {} on {} ({} images, {}x{} codes each, {seconds:.1} s)",
        args.model.display(),
        args.data.display(),
        r.images,
        r.grid.0,
        r.grid.1
    )?;
    let mut rows = vec![
        vec![
            "PSNR (dB, mean over images)".into(),
            format!("{:.2}", r.psnr_db),
        ],
        vec![
            "codebook usage".into(),
            format!(
                "{} ({} of {})",
                pct(r.usage),
                r.codes_used,
                r.num_embeddings
            ),
        ],
        vec!["perplexity".into(), format!("{:.1}", r.perplexity)],
    ];
    for (name, j) in [
        ("judged inputs, both right", &r.judged_inputs),
        (
            "judged reconstructions, both right",
            &r.judged_reconstructions,
        ),
    ] {
        if let Some(j) = j {
            rows.push(vec![name.into(), pct(j.both.fraction())]);
        }
    }
    outln!("{}", table(&["figure", "value"], &rows))?;
    Ok(())
}

#[derive(Args)]
#[command(
    about = "Drawings of a discrete-token model for every \"a {color} {shape}\", judged zero-shot by a CLIP model"
)]
pub struct DrawArgs {
    /// Discrete-token model directory (glimpse_discrete)
    #[arg(long)]
    model: PathBuf,
    /// CLIP / SigLIP model that judges the drawings (default: ./models/glimpse-easy-vqa-clip,
    /// else the copy built into glimpse)
    #[arg(long, value_name = "DIR")]
    judge: Option<PathBuf>,
    /// Drawings per prompt, seeds FIRST..FIRST+N
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// The first seed (settings chosen on some seeds are best reported on others)
    #[arg(long, value_name = "FIRST", default_value_t = 0)]
    first_seed: u64,
    /// Classifier-free guidance scale
    #[arg(long = "cfg", value_name = "S", default_value_t = 4.0)]
    cfg_scale: f32,
    /// Sampling temperature of each code (0 = greedy)
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Keep only the K most likely codes at each draw
    #[arg(long)]
    top_k: Option<usize>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

pub fn draw(args: DrawArgs) -> Result<()> {
    if args.seeds == 0 {
        return Err(PipelineError::Usage("--seeds must be at least 1".into()).into());
    }
    let device = default_device();
    let judge_dir = crate::commands::model_dir(args.judge, DEFAULT_DUAL)?;
    let model = DiscretePipeline::load(&args.model, &device)?;
    let judge = DualPipeline::load(&judge_dir, &device)?;
    let end = args
        .first_seed
        .checked_add(args.seeds)
        .ok_or_else(|| PipelineError::Usage("--first-seed + --seeds overflows".into()))?;
    let seeds: Vec<u64> = (args.first_seed..end).collect();
    let opts = DrawOptions {
        cfg_scale: args.cfg_scale,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            ..SamplingConfig::greedy()
        },
    };
    let start = Instant::now();
    let r = evaluate_drawing(&model, &judge, &seeds, &opts, !args.json)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let mut out = r.to_json();
        out["model"] = args.model.display().to_string().into();
        out["judge"] = judge_dir.display().to_string().into();
        out["top_k"] = args.top_k.into();
        out["seconds"] = seconds.into();
        outln!("{out}")?;
        return Ok(());
    }
    outln!(
        "Drawings judged zero-shot: {} by {} ({} prompts x {} seeds, cfg {}, temperature {}, {seconds:.1} s)",
        args.model.display(),
        judge_dir.display(),
        r.per_prompt.len(),
        seeds.len(),
        args.cfg_scale,
        args.temperature
    )?;
    let mut rows: Vec<Vec<String>> = r
        .per_prompt
        .iter()
        .map(|(p, a)| {
            vec![
                p.clone(),
                pct(a.fraction()),
                a.correct.to_string(),
                a.total.to_string(),
            ]
        })
        .collect();
    let all: [(&str, Accuracy); 3] = [
        ("colour right", r.judged.color),
        ("shape right", r.judged.shape),
        ("overall (both right)", r.judged.both),
    ];
    for (name, a) in all {
        rows.push(vec![
            name.into(),
            pct(a.fraction()),
            a.correct.to_string(),
            a.total.to_string(),
        ]);
    }
    outln!(
        "{}",
        table(&["prompt", "judged right", "correct", "total"], &rows)
    )?;
    Ok(())
}
