//! `glimpse eval retrieval`: image → text and text → image recall@K.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::DualPipeline;
use glimpse_eval::{evaluate_retrieval, load_captions, RecallAtK};

use super::{pct, table, DEFAULT_DUAL};

#[derive(Args)]
#[command(
    about = "Image-text retrieval recall@1/5/10 over distinct captions (easy-VQA split or caption JSONL)"
)]
pub struct RetrievalArgs {
    /// CLIP or SigLIP directory (default: ./models/glimpse-easy-vqa-clip, else the copy built into glimpse)
    #[arg(long)]
    model: Option<PathBuf>,
    /// easy-VQA split directory or image-caption JSONL
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

pub fn run(args: RetrievalArgs) -> Result<()> {
    let records = load_captions(&args.data)?;
    super::require_examples(&records, &args.data)?;
    let dir = crate::commands::model_dir(args.model, DEFAULT_DUAL)?;
    let dual = DualPipeline::load(&dir, &default_device())?;
    let start = Instant::now();
    let r = evaluate_retrieval(&dual, &records, !args.json)?;
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
        "Retrieval: {} on {} ({} images, {} distinct captions, {seconds:.1} s)",
        dir.display(),
        args.data.display(),
        r.images,
        r.captions
    )?;
    let row = |name: String, k: RecallAtK| vec![name, pct(k.r1), pct(k.r5), pct(k.r10)];
    let rows = [
        row(
            format!("image → text ({} images)", r.images),
            r.image_to_text,
        ),
        row(
            format!("text → image ({} distinct captions)", r.captions),
            r.text_to_image,
        ),
    ];
    outln!("{}", table(&["direction", "R@1", "R@5", "R@10"], &rows))?;
    Ok(())
}
