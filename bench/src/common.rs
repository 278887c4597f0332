//! What the benchmarks share: command-line flags, medians, the
//! time-to-first-token loop of the VLM benchmarks, and for training, step
//! timings and reproducible token ids.
#![allow(dead_code)] // each benchmark binary uses its own subset

use anyhow::Result;
use serde_json::{json, Map, Value};

/// The value after `flag` on this process's command line.
pub fn flag_value(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--runs N` (default `default`).
pub fn runs_flag(default: usize) -> Result<usize> {
    Ok(flag_value("--runs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

/// Time to first token over `runs` requests after one warm-up (first-touch
/// page faults, thread-pool start). `once` runs a request and returns its
/// TTFT and vision seconds and what it reports. Returns the warm-up's
/// report and the JSON fields every TTFT line carries (`runs`, `threads`,
/// medians and every run's TTFT, in ms), for the caller's own fields.
pub fn ttft_runs<T>(
    runs: usize,
    mut once: impl FnMut() -> Result<(f64, f64, T)>,
) -> Result<(T, Map<String, Value>)> {
    let (_, _, report) = once()?;
    let (mut ttfts, mut visions) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ttft, vision, _) = once()?;
        ttfts.push(ttft * 1e3);
        visions.push(vision * 1e3);
    }
    let mut fields = Map::new();
    fields.insert("impl".into(), json!("glimpse"));
    fields.insert("mode".into(), json!("forward"));
    fields.insert("runs".into(), json!(runs));
    let threads = std::env::var("RAYON_NUM_THREADS").ok();
    fields.insert("threads".into(), json!(threads));
    fields.insert("ttft_ms_median".into(), json!(median(ttfts.clone())));
    fields.insert("ttft_ms_all".into(), json!(ttfts));
    fields.insert("vision_ms_median".into(), json!(median(visions)));
    Ok((report, fields))
}

/// The median of `xs` (upper middle for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Deterministic ids in `0..below` (a 64-bit LCG; the values only need to be
/// valid tokens).
pub fn random_ids(n: usize, below: u32, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % below as u64) as u32
        })
        .collect()
}

/// Seconds of each phase of one step, and the loss.
pub struct StepTimes {
    pub forward_backward: f64,
    pub optimizer: f64,
    pub loss_value: f32,
}

impl StepTimes {
    pub fn total(&self) -> f64 {
        self.forward_backward + self.optimizer
    }
}
