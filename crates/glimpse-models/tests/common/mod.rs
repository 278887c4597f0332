//! Helpers the parity tests share: reading ids from a reference JSON and
//! comparing tensors.
#![allow(dead_code)] // each test binary uses its own subset

use anyhow::Result;
use candle_core::Tensor;
use serde_json::Value;

/// A JSON array of token ids (anything else: none).
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect()
    })
}

/// The largest |a − b|, the shapes required equal.
pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}
