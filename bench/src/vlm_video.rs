//! Qwen2-VL video and image (issue 20's benchmark): time to first token for
//! an 8-frame 224² video (a folder of PNG frames) and for a 448×448 PNG
//! through the whole path a user runs (`glimpse ask`'s): read and decode the
//! files (`--frames 8`), the video / image processor (smart_resize, patch
//! rows, frames paired per temporal patch), the tower with its per-frame
//! attention and 2×2 merger, prefill with M-RoPE positions, first greedy
//! token. bench/run_vlm_video.sh runs it next to bench/vlm_video_pytorch.py
//! on the same checkpoint and files.
//!
//! Nothing is cached between runs: the encoded-image cache is cleared before
//! each one (videos are not cached).
//!
//! Usage: bench-vlm-video --model DIR [--runs N]   (DIR/frames/, DIR/bench.png)

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use common::{flag_value, runs_flag, ttft_runs};
use glimpse_data::FrameSampling;
use glimpse_engine::pipeline::vlm::VlmPipeline;
use glimpse_engine::VideoInput;
use glimpse_infer::GenerationConfig;
use serde_json::{json, Value};

/// The prompts, the same text as bench/vlm_video_pytorch.py.
const VIDEO_PROMPT: &str = "<|vision_start|><|video_pad|><|vision_end|>Describe the video.";
const IMAGE_PROMPT: &str = "<|vision_start|><|image_pad|><|vision_end|>Describe the picture.";
const FRAMES: usize = 8;

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    glimpse_engine::device::count_threads_once();
    let dir = PathBuf::from(
        flag_value("--model").context("--model DIR (see bench/vlm_video_pytorch.py --write)")?,
    );
    let runs = runs_flag(3)?;
    let pipeline = VlmPipeline::load(&dir, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    let video = [VideoInput::new(
        dir.join("frames"),
        FrameSampling::frames(FRAMES),
    )];
    let image = [dir.join("bench.png")];
    let gen = GenerationConfig::new(1);

    for input in ["video", "image"] {
        let ((positions, first), mut line) = ttft_runs(runs, || {
            pipeline.clear_image_cache();
            let t = Instant::now();
            let prompt = if input == "video" {
                pipeline.prompt_with_videos(VIDEO_PROMPT, &[], &video, true)?
            } else {
                pipeline.prompt(IMAGE_PROMPT, &image, true)?
            };
            let out = pipeline.generate(&prompt, &gen, |_| Ok(()))?;
            let first = out.tokens.first().copied().unwrap_or(u32::MAX);
            Ok((
                t.elapsed().as_secs_f64(),
                prompt.vision_secs,
                (prompt.ids.len(), first),
            ))
        })?;
        line.insert("input".into(), json!(input));
        line.insert("prompt_tokens".into(), json!(positions));
        line.insert("first_token".into(), json!(first));
        println!("{}", Value::Object(line));
    }
    Ok(())
}
