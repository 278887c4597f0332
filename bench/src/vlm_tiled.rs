//! Tiled VLMs: time to first token for one 672×672 PNG through the whole
//! path a user runs (`glimpse ask`'s): read and decode the file, the
//! family's processor (LLaVA-NeXT: best pinpoint, fit, pad, crops + the
//! whole image; Idefics3: longest-edge resize, tiles + the global image),
//! every tile through the tower as one batch, projector, prefill, first
//! greedy token. bench/run_vlm_tiled.sh runs it next to
//! bench/vlm_tiled_pytorch.py on the same checkpoint and PNG.
//!
//! Nothing is cached between runs: the encoded-image cache is cleared before
//! each one.
//!
//! Usage: bench-vlm-tiled --model DIR [--runs N]   (DIR/bench.png is the image)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use glimpse_engine::pipeline::vlm::VlmPipeline;
use glimpse_infer::GenerationConfig;

/// The question after the image, the same text as bench/vlm_tiled_pytorch.py.
pub const QUESTION: &str = "Describe the picture in detail.";

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    glimpse_engine::device::count_threads_once();
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dir = PathBuf::from(
        value("--model").context("--model DIR (see bench/vlm_tiled_pytorch.py --write)")?,
    );
    let runs: usize = value("--runs").map(|s| s.parse()).transpose()?.unwrap_or(3);
    let image = dir.join("bench.png");
    let pipeline = VlmPipeline::load(&dir, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    // `<image>` then the question, tokenised with the tokenizer's specials,
    // as the Python side's processor(text=...) does.
    let text = format!("<image>\n{QUESTION}");
    let gen = GenerationConfig::new(1);

    let once = || -> Result<(f64, f64, usize, Vec<usize>, u32)> {
        pipeline.clear_image_cache();
        let t = Instant::now();
        let prompt = pipeline.prompt(&text, std::slice::from_ref(&image), true)?;
        let out = pipeline.generate(&prompt, &gen, |_| Ok(()))?;
        let ttft = t.elapsed().as_secs_f64();
        Ok((
            ttft,
            prompt.vision_secs,
            prompt.ids.len(),
            prompt.tiles.clone(),
            out.tokens.first().copied().unwrap_or(u32::MAX),
        ))
    };
    // one warm-up request: first-touch page faults and thread-pool start
    let (_, _, positions, tiles, first) = once()?;
    let (mut ttfts, mut visions) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ttft, vision, ..) = once()?;
        ttfts.push(ttft * 1e3);
        visions.push(vision * 1e3);
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "glimpse",
            "mode": "forward",
            "family": format!("{:?}", pipeline.model.config().format),
            "prompt_tokens": positions,
            "tiles": tiles,
            "runs": runs,
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "ttft_ms_median": median(ttfts.clone()),
            "ttft_ms_all": ttfts,
            "vision_ms_median": median(visions),
            "first_token": first,
        })
    );
    Ok(())
}
