//! Shared by the gradient-parity tests: fixture paths, tensor differences,
//! and integer rows from the fixtures' JSON.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    max_abs(&(a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?)
}

pub fn rows<T: TryFrom<i64>>(v: &Value) -> Result<Vec<Vec<T>>> {
    v.as_array()
        .context("rows")?
        .iter()
        .map(|r| {
            r.as_array()
                .context("row")?
                .iter()
                .map(|x| {
                    let x = x.as_i64().context("integer")?;
                    T::try_from(x).map_err(|_| anyhow::anyhow!("{x} out of range"))
                })
                .collect()
        })
        .collect()
}
