//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("fixtures")
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs reference {:?}",
        a.dims(),
        b.dims()
    );
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> anyhow::Result<()> {
    let diff = max_abs_diff(got, want).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    eprintln!("{what}: max |diff| = {diff:.3e}");
    anyhow::ensure!(diff <= tol, "{what}: max |diff| {diff:.3e} > {tol:.1e}");
    Ok(())
}
