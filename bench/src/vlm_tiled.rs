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

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use common::{flag_value, runs_flag, ttft_runs};
use glimpse_engine::pipeline::vlm::VlmPipeline;
use glimpse_infer::GenerationConfig;
use serde_json::{json, Value};

/// The question after the image, the same text as bench/vlm_tiled_pytorch.py.
pub const QUESTION: &str = "Describe the picture in detail.";

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    glimpse_engine::device::count_threads_once();
    let dir = PathBuf::from(
        flag_value("--model").context("--model DIR (see bench/vlm_tiled_pytorch.py --write)")?,
    );
    let runs = runs_flag(3)?;
    let image = dir.join("bench.png");
    let pipeline = VlmPipeline::load(&dir, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    // `<image>` then the question, tokenised with the tokenizer's specials,
    // as the Python side's processor(text=...) does.
    let text = format!("<image>\n{QUESTION}");
    let gen = GenerationConfig::new(1);

    let ((positions, tiles, first), mut line) = ttft_runs(runs, || {
        pipeline.clear_image_cache();
        let t = Instant::now();
        let prompt = pipeline.prompt(&text, std::slice::from_ref(&image), true)?;
        let out = pipeline.generate(&prompt, &gen, |_| Ok(()))?;
        let ttft = t.elapsed().as_secs_f64();
        let first = out.tokens.first().copied().unwrap_or(u32::MAX);
        Ok((
            ttft,
            prompt.vision_secs,
            (prompt.ids.len(), prompt.tiles.clone(), first),
        ))
    })?;
    let family = format!("{:?}", pipeline.model.config().format);
    line.insert("family".into(), json!(family));
    line.insert("prompt_tokens".into(), json!(positions));
    line.insert("tiles".into(), json!(tiles));
    line.insert("first_token".into(), json!(first));
    println!("{}", Value::Object(line));
    Ok(())
}
