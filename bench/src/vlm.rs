//! LLaVA-shaped VLM: time to first token and decode tokens/s for one
//! 224×224 image and a 32-token question, f32. Loads the transformers
//! checkpoint bench/vlm_pytorch.py --write made (CLIP ViT-B/16 tower, 2-layer
//! MLP projector, 12-layer 768-wide Llama) and prints one JSON line;
//! bench/run_vlm.sh runs it next to bench/vlm_pytorch.py --run and
//! BENCHMARKS.md reports the ratios.
//!
//! Preprocessing is excluded (as on the PyTorch side): the input is a
//! synthetic (1, 3, 224, 224) pixel tensor. TTFT = encode_images (tower + projector) +
//! prompt_embeds + prefill of the 229 positions (LM head on the last one) +
//! argmax; decode = --new-tokens steps of embed + forward_embeds + argmax.
//!
//! Usage: bench-vlm --model DIR [--runs N] [--new-tokens 64] [--cuda]

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use common::{flag_value, median};
use glimpse_models::{LogitsFor, Vlm};

/// `<image>` in the benchmark's checkpoint; 196 copies for one image.
const IMAGE_TOKEN_ID: u32 = 32000;

/// 1 + 32 + 196 ids; the same list as bench/vlm_pytorch.py.
fn prompt_ids(image_tokens: usize) -> Vec<u32> {
    let text: Vec<u32> = (0..32u32).map(|i| (1000 + 37 * i) % 31000 + 2).collect();
    let mut ids = vec![1u32];
    ids.extend_from_slice(&text[..16]);
    ids.extend(std::iter::repeat_n(IMAGE_TOKEN_ID, image_tokens));
    ids.extend_from_slice(&text[16..]);
    ids
}

/// A memory line of this process's /proc status (Linux), in MiB: "VmHWM"
/// (peak resident), "VmRSS" (resident now).
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Greedy id from (1, 1, V) logits (copies the id to the host, which also
/// waits for a GPU).
fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits
        .flatten_all()?
        .argmax(D::Minus1)?
        .to_scalar::<u32>()?)
}

/// (TTFT seconds, of which encode_images, decode tok/s, generated ids) of
/// one request.
fn once(
    model: &Vlm,
    ids: &[u32],
    pixels: &Tensor,
    new_tokens: usize,
) -> Result<(f64, f64, f64, Vec<u32>)> {
    let lm = &model.language_model;
    let t = Instant::now();
    let images = model.encode_images(pixels, None)?;
    // (on a GPU this splits the TTFT only roughly: nothing waits here)
    let vision = t.elapsed().as_secs_f64();
    let embeds = model.prompt_embeds(ids, Some(&images))?;
    let mut cache = model.new_cache(1);
    let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
    let mut tok = argmax(&logits)?;
    let ttft = t.elapsed().as_secs_f64();
    let mut generated = vec![tok];
    let t = Instant::now();
    for _ in 0..new_tokens {
        let embeds = lm.embed(&Tensor::from_slice(&[tok], (1, 1), lm.device())?)?;
        let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
        tok = argmax(&logits)?;
        generated.push(tok);
    }
    Ok((
        ttft,
        vision,
        new_tokens as f64 / t.elapsed().as_secs_f64(),
        generated,
    ))
}

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    // As `glimpse` does: without it candle reads /proc/cpuinfo before every matmul.
    glimpse_engine::device::count_threads_once();
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        flag_value("--model").context("--model DIR (see bench/vlm_pytorch.py --write)")?,
    );
    let runs: usize = flag_value("--runs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let new_tokens: usize = flag_value("--new-tokens")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(64);
    let device = if args.iter().any(|a| a == "--cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };

    let model = Vlm::load_dir(&dir, DType::F32, &device)
        .with_context(|| format!("loading {}", dir.display()))?;
    let cfg = model.config();
    anyhow::ensure!(
        cfg.image_token_id == IMAGE_TOKEN_ID,
        "expected the checkpoint of bench/vlm_pytorch.py --write"
    );
    let ids = prompt_ids(cfg.image_tokens()?);
    let s = cfg.vision.image_size;
    // Synthetic pixels, the same as the PyTorch side's (preprocessing
    // excluded on both): sin(0.37 i), so both greedy answers can be compared.
    let pixels = Tensor::arange(0f32, (3 * s * s) as f32, &device)?
        .affine(0.37, 0.0)?
        .sin()?
        .reshape((1, 3, s, s))?;

    // one warm-up request: first-touch page faults and thread-pool start
    once(&model, &ids, &pixels, new_tokens)?;
    let (mut ttfts, mut visions, mut rates, mut generated) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ttft, vision, rate, gen) = once(&model, &ids, &pixels, new_tokens)?;
        ttfts.push(ttft * 1e3);
        visions.push(vision * 1e3);
        rates.push(rate);
        generated = gen;
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "glimpse",
            "mode": "forward",
            "prompt_tokens": ids.len(),
            "new_tokens": new_tokens,
            "runs": runs,
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "ttft_ms_median": median(ttfts.clone()),
            "ttft_ms_all": ttfts,
            "vision_ms_median": median(visions),
            "decode_tok_per_s_median": median(rates.clone()),
            "decode_tok_per_s_all": rates,
            "first_tokens": &generated[..generated.len().min(8)],
            "peak_rss_mib": status_mib("VmHWM"),
            // after loading (the mapped checkpoint is unmapped by then) and the runs
            "rss_end_mib": status_mib("VmRSS"),
        })
    );
    Ok(())
}
