//! Pieces shared by the CPU f32 ops that carry their own backward pass
//! (bias add, LayerNorm, RMSNorm, activations on the trainable path).
//!
//! candle 0.11's autograd differentiates a broadcast bias or a norm's scale
//! through `sum_keepdim` over the leading dims, a single-threaded strided
//! reduce that cost more than the matmul next to it; these ops reduce in one
//! parallel pass over row blocks instead.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling is noise next to the math.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Whether `t` can take the CPU f32 ops of this module.
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// The f32 slice of a contiguous CPU tensor.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("the op takes f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("the op takes a contiguous tensor"),
    }
}

/// The largest |a − b| over all elements: what the tests of the ops with
/// a hand-written backward compare against candle's composed ops.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Gradients of Σ t ⊙ probe: a loss that weighs every output differently,
/// so a wrong index or sign in a backward shows.
#[cfg(test)]
pub(crate) fn grads_of_weighted_sum(
    t: &Tensor,
    probe: &Tensor,
) -> Result<candle_core::backprop::GradStore> {
    (t * probe)?.sum_all()?.backward()
}

/// Rows per parallel task for rows of width `n`.
pub(crate) fn rows_per_task(n: usize) -> usize {
    CHUNK.div_ceil(n.max(1)).max(1)
}

/// Element-wise sum of per-task partial rows (each of width `n`).
pub(crate) fn add_partials(partials: Vec<Vec<f32>>, n: usize) -> Vec<f32> {
    partials.into_iter().fold(vec![0f32; n], |mut acc, p| {
        acc.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        acc
    })
}

/// Sum over every dim but the last: (..., n) -> (n). The gradient of a bias
/// broadcast over the leading dims.
pub(crate) fn sum_rows(t: &Tensor) -> Result<Tensor> {
    if !applies(t) {
        let n = t.dim(candle_core::D::Minus1)?;
        return t.reshape(((), n))?.sum(0);
    }
    t.contiguous()?.apply_op1_no_bwd(&SumRows)
}

struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "sum-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout)?;
        let n = *layout
            .shape()
            .dims()
            .last()
            .ok_or_else(|| candle_core::Error::Msg("sum-rows on a scalar".into()))?;
        let partials: Vec<Vec<f32>> = src
            .par_chunks(rows_per_task(n) * n)
            .map(|block| {
                let mut acc = vec![0f32; n];
                for row in block.chunks_exact(n) {
                    acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x);
                }
                acc
            })
            .collect();
        Ok((CpuStorage::F32(add_partials(partials, n)), Shape::from(n)))
    }
}
