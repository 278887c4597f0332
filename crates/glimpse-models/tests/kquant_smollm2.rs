//! SmolLM2-135M requantized from the fetched Q4_1 file to Q8_0 and to a
//! Q4_K_M-like mix (`gguf_requant`): glimpse's block kernels and candle's
//! `QMatMul` give the same prompt logits to the bit and the same greedy
//! tokens. One test in its own binary: it flips the process-wide kernel
//! choice (`qlinear::use_glimpse_kernels`).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use glimpse_models::gguf_requant::{requantize, RequantPlan};
use glimpse_models::nn::block_matmul::BlockMatmul;
use glimpse_models::nn::qlinear::use_glimpse_kernels;
use glimpse_models::{Decoder, GgufFile, LogitsFor};

/// `SmolLM2-135M-Instruct.Q4_1.gguf`, fetched by `scripts/fetch_smollm2.sh`;
/// `None` (test skipped) without it, a failure under CI.
fn smollm2() -> Option<PathBuf> {
    let path = match std::env::var_os("GLIMPSE_SMOLLM2") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("GLIMPSE_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glimpse"))
                })?;
            cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: scripts/fetch_test_data.sh should have fetched it",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} is absent; run scripts/fetch_smollm2.sh",
        path.display()
    );
    None
}

/// The chat prompt of `fixtures/smollm2/reference.json`.
fn prompt_ids() -> Result<Vec<u32>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2/reference.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(r["prompt"]["ids"]
        .as_array()
        .expect("prompt.ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect())
}

/// The prompt's logits at every position (B = 1) and `new` greedy tokens.
fn run(model: &Decoder, ids: &[u32], new: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let dev = Device::Cpu;
    let mut cache = model.new_cache(1);
    let input = Tensor::from_slice(ids, (1, ids.len()), &dev)?;
    // (1, T, V)
    let logits = model.forward(&input, None, &mut cache, LogitsFor::All)?;
    let bits: Vec<u32> = logits
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let mut next = logits
        .squeeze(0)?
        .get(ids.len() - 1)?
        .argmax(0)?
        .to_scalar::<u32>()?;
    let mut out = vec![next];
    while out.len() < new {
        let input = Tensor::from_slice(&[next], (1, 1), &dev)?;
        let logits = model.forward(&input, None, &mut cache, LogitsFor::Last)?;
        next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        out.push(next);
    }
    Ok((bits, out))
}

#[test]
fn requantized_smollm2_decodes_as_with_candle_kernels() -> Result<()> {
    let Some(q4_1) = smollm2() else {
        return Ok(());
    };
    let ids = prompt_ids()?;
    let tmp = tempfile::tempdir()?;
    for plan in [RequantPlan::Q8_0, RequantPlan::Q4KM] {
        let path = tmp.path().join(format!("smollm2.{}.gguf", plan.tag()));
        let types = requantize(&q4_1, &path, plan)?;
        // The test means something only if glimpse's kernels take some of
        // the weights (Q8_0 at k = 576 here).
        let scan = GgufFile::open(&path)?;
        let mut ours = 0;
        for (name, info) in &scan.content().tensor_infos {
            let t = scan.raw_tensor(name, info.shape.dims(), &Device::Cpu)?;
            ours += usize::from(t.rank() == 2 && BlockMatmul::supports(&t));
        }
        assert!(ours > 0, "{plan:?}: no weight for glimpse's kernels");
        if plan == RequantPlan::Q4KM {
            let k = types
                .iter()
                .filter(|(_, t)| format!("{t:?}").ends_with('K'))
                .count();
            assert!(k >= 30, "{plan:?}: only {k} K-quant tensors");
        }

        use_glimpse_kernels(true);
        let glimpse = Decoder::load_gguf(&GgufFile::open(&path)?, None, &Device::Cpu)?;
        let (logits_g, tokens_g) = run(&glimpse, &ids, 24)?;
        drop(glimpse);
        use_glimpse_kernels(false);
        let candle = Decoder::load_gguf(&GgufFile::open(&path)?, None, &Device::Cpu)?;
        let (logits_c, tokens_c) = run(&candle, &ids, 24)?;
        use_glimpse_kernels(true);

        let differ = logits_g
            .iter()
            .zip(&logits_c)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{plan:?}: {differ} prompt logits differ");
        assert_eq!(tokens_g, tokens_c, "{plan:?}: greedy tokens");
        eprintln!("{plan:?}: {ours} weights on glimpse's kernels; tokens {tokens_g:?}");
    }
    Ok(())
}
