//! Rewrites a GGUF decoder with other block types (`gguf_requant`):
//!
//!     cargo run --release -p glimpse-models --example requant_gguf -- SRC.gguf DST.gguf q8_0|q4_k_m
//!
//! Prints how many tensors got each block type. `scripts/make_kquant_smollm2.sh`
//! runs it on the fetched SmolLM2 Q4_1 file.

use std::collections::BTreeMap;
use std::path::Path;

use glimpse_models::gguf_requant::{requantize, RequantPlan};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dst, plan] = args.as_slice() else {
        anyhow::bail!("usage: requant_gguf SRC.gguf DST.gguf q8_0|q4_k_m");
    };
    let types = requantize(Path::new(src), Path::new(dst), RequantPlan::parse(plan)?)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t) in &types {
        *counts.entry(format!("{t:?}")).or_default() += 1;
    }
    eprintln!("{dst}: {counts:?}");
    Ok(())
}
