//! ViT-B/16 vision tower throughput (images/s) with random weights, f32.
//! Prints one JSON line per batch size; bench/run_vit.sh runs it next to
//! bench/vit_pytorch.py and BENCHMARKS.md reports the ratio.
//!
//! Usage: bench-vit [--batch 1,8] [--runs N] [--cuda]

mod common;

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{flag_value, median};
use glimpse_models::vision::{VisionTransformer, VitConfig};

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    // As `glimpse` does: without it candle reads /proc/cpuinfo before every matmul.
    glimpse_engine::device::count_threads_once();
    let args: Vec<String> = std::env::args().collect();
    let batches: Vec<usize> = flag_value("--batch")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .map(|s| s.parse().context("--batch takes comma-separated integers"))
        .collect::<Result<_>>()?;
    let runs: usize = flag_value("--runs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let device = if args.iter().any(|a| a == "--cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };

    let cfg = VitConfig::clip_vit_b16();
    // Random weights from a VarMap's initialisers, then detached: a loaded
    // checkpoint holds plain tensors, and frozen weights take the inference
    // fast paths (fused qkv, fused activations) that trainable `Var`s skip.
    let varmap = VarMap::new();
    VisionTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let weights = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let model =
        VisionTransformer::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &device))?;
    drop(varmap);

    for &b in &batches {
        let pixels = Tensor::randn(0f32, 1.0, (b, 3, cfg.image_size, cfg.image_size), &device)?;
        // one warm-up pass: first-touch page faults and thread-pool start
        model.forward_pooled(&pixels)?.to_device(&Device::Cpu)?;
        let mut rates = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let out = model.forward_pooled(&pixels)?;
            out.to_device(&Device::Cpu)?; // waits for the GPU when there is one
            rates.push(b as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "{}",
            serde_json::json!({
                "impl": "glimpse",
                "batch": b,
                "runs": runs,
                "images_per_s_median": median(rates.clone()),
                "images_per_s_all": rates,
                "peak_rss_mib": peak_rss_mib(),
            })
        );
    }
    Ok(())
}
