//! Memory read bandwidth probe and the decode speed bound it implies.
//!
//! Sums a large `u64` buffer (1 GiB by default, far past any cache) with N
//! threads, each over its own contiguous half (or 1/N), several passes, and
//! reports the best and median GB/s (10^9 bytes per second). With `--gguf`
//! it also reads the file's tensor table and prints the bytes one decoded
//! token has to stream from memory: every weight tensor once (a tied
//! embedding counts once, as the LM head that reads all of it; the embedding
//! lookup itself reads one row) plus the KV cache read by attention at the
//! benchmark's mean decode context. `bound_tok_per_s` = bandwidth / that.
//! Prints one JSON line; bench/run_llm.sh puts it under the decoder table.
//!
//! Usage: bench-membw [--threads 2] [--mib 1024] [--passes 10]
//!                    [--gguf FILE --kv-positions 192 --kv-bytes 2]

mod common;

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use common::{flag_value, median};

/// Sum of a slice with 8 independent accumulators (vectorises to SIMD adds,
/// so the loop is bound by loads, not by one long add chain).
fn sum(xs: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let mut s = tail.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    for a in acc {
        s = s.wrapping_add(a);
    }
    s
}

/// One timed pass: each of `threads` scoped threads sums its own part.
fn pass(buf: &[u64], threads: usize) -> (f64, u64) {
    let part = buf.len().div_ceil(threads);
    let t = Instant::now();
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || sum(c))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sum thread panicked"))
            .fold(0u64, u64::wrapping_add)
    });
    let secs = t.elapsed().as_secs_f64();
    (std::mem::size_of_val(buf) as f64 / secs / 1e9, total)
}

struct ModelBytes {
    weights: u64,
    n_layer: u64,
    kv_width: u64,
}

/// Weight bytes of every tensor in the file, and the KV width per layer
/// (n_kv_heads * head_dim) from the llama metadata.
fn model_bytes(path: &str) -> Result<ModelBytes> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let content = gguf_file::Content::read(&mut f).with_context(|| format!("reading {path}"))?;
    let mut weights = 0u64;
    for info in content.tensor_infos.values() {
        let dt = info.ggml_dtype;
        let elems = info.shape.elem_count();
        weights += (elems / dt.block_size() * dt.type_size()) as u64;
    }
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "llama".into());
    let get = |key: &str| -> Result<u64> {
        let k = format!("{arch}.{key}");
        Ok(content
            .metadata
            .get(&k)
            .with_context(|| format!("no {k} in {path}"))?
            .to_u32()? as u64)
    };
    let n_layer = get("block_count")?;
    let n_embd = get("embedding_length")?;
    let n_head = get("attention.head_count")?;
    let n_kv_head = get("attention.head_count_kv").unwrap_or(n_head);
    Ok(ModelBytes {
        weights,
        n_layer,
        kv_width: n_kv_head * (n_embd / n_head),
    })
}

fn main() -> Result<()> {
    let threads: usize = flag_value("--threads")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    let mib: usize = flag_value("--mib")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let passes: usize = flag_value("--passes")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let kv_positions: u64 = flag_value("--kv-positions")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(192);
    let kv_bytes: u64 = flag_value("--kv-bytes")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);

    // Written (not just allocated) so every page is resident before timing;
    // distinct values so nothing can be folded away.
    let buf: Vec<u64> = (0..(mib << 20) / 8).map(|i| i as u64).collect();
    pass(&buf, threads); // warm-up: thread start, TLB
    let mut rates = Vec::with_capacity(passes);
    let mut check = 0u64;
    for _ in 0..passes {
        let (gbs, s) = pass(&buf, threads);
        check ^= s;
        rates.push(gbs);
    }
    let best = rates.iter().copied().fold(0.0, f64::max);
    let med = median(rates.clone());
    let mut out = serde_json::json!({
        "impl": "membw",
        "threads": threads,
        "buffer_mib": mib,
        "read_gb_per_s_best": best,
        "read_gb_per_s_median": med,
        "read_gb_per_s_all": rates,
        "checksum": check,
    });
    if let Some(path) = flag_value("--gguf") {
        let m = model_bytes(&path)?;
        // K and V, every layer, every cached position.
        let kv = 2 * m.n_layer * m.kv_width * kv_positions * kv_bytes;
        let per_token = m.weights + kv;
        out["weight_bytes"] = m.weights.into();
        out["kv_positions"] = kv_positions.into();
        out["kv_bytes_per_elem"] = kv_bytes.into();
        out["kv_bytes"] = kv.into();
        out["bytes_per_token"] = per_token.into();
        out["bound_tok_per_s_best"] = (best * 1e9 / per_token as f64).into();
        out["bound_tok_per_s_median"] = (med * 1e9 / per_token as f64).into();
    }
    println!("{out}");
    Ok(())
}
