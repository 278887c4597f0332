//! Shared helpers for the glimpse-train tests: the PyTorch reference JSON and comparisons.
#![allow(dead_code)]

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub fn reference() -> Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/losses/reference.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(serde_json::from_str(&text)?)
}

fn flatten(v: &Value, out: &mut Vec<f64>, shape: &mut Vec<usize>, depth: usize) -> Result<()> {
    match v {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            }
            for item in items {
                flatten(item, out, shape, depth + 1)?;
            }
        }
        Value::Number(n) => out.push(n.as_f64().context("number")?),
        other => anyhow::bail!("unexpected JSON value {other}"),
    }
    Ok(())
}

/// A nested JSON array (or number) as a tensor of `dtype`.
pub fn tensor(v: &Value, dtype: DType) -> Result<Tensor> {
    let (mut data, mut shape) = (Vec::new(), Vec::new());
    flatten(v, &mut data, &mut shape, 0)?;
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

pub fn num(v: &Value) -> Result<f64> {
    v.as_f64().context("expected a number")
}

/// Max absolute difference between a tensor and a JSON reference.
pub fn max_diff(t: &Tensor, v: &Value) -> Result<f64> {
    let r = tensor(v, DType::F64)?;
    anyhow::ensure!(
        t.dims() == r.dims() || t.elem_count() == r.elem_count(),
        "shape {:?} vs {:?}",
        t.dims(),
        r.dims()
    );
    let t = t.to_dtype(DType::F64)?.reshape(r.shape())?;
    Ok((t - r)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

pub fn assert_close(t: &Tensor, v: &Value, tol: f64, what: &str) -> Result<()> {
    let d = max_diff(t, v)?;
    anyhow::ensure!(d <= tol, "{what}: max |diff| {d:e} > {tol:e}");
    Ok(())
}

pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}
