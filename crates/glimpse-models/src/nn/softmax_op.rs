//! Softmax over the last dim with its own backward pass, for the trainable
//! path. candle 0.11's fused softmax has no backward, and the composed one
//! (max, sub, exp, sum, div with broadcasts) is five graph nodes, each with
//! a zero-filled gradient buffer, an add and a single-threaded broadcast
//! reduce in backward. Here: one parallel pass forward, one backward from
//! the saved output, dx = y ⊙ (g − Σ g⊙y) per row.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_grad;

/// Whether [`softmax_last_dim`] takes `xs`.
pub(crate) fn applies(xs: &Tensor) -> bool {
    xs.track_op() && cpu_grad::applies(xs) && xs.rank() >= 1
}

/// # Shapes
/// `xs`: (..., n) -> (..., n)
pub(crate) fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(SoftmaxLastDim)
}

struct SoftmaxLastDim;

fn last_dim(layout: &Layout) -> Result<usize> {
    layout
        .shape()
        .dims()
        .last()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("softmax on a scalar".into()))
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = cpu_grad::contiguous_f32(storage, layout)?;
        let n = last_dim(layout)?;
        let mut out = vec![0f32; src.len()];
        if n > 0 {
            let block = cpu_grad::rows_per_task(n) * n;
            out.par_chunks_mut(block)
                .zip(src.par_chunks(block))
                .for_each(|(o, i)| {
                    for (orow, irow) in o.chunks_exact_mut(n).zip(i.chunks_exact(n)) {
                        let max = irow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for (y, &x) in orow.iter_mut().zip(irow) {
                            *y = (x - max).exp();
                            sum += *y;
                        }
                        let inv = 1.0 / sum;
                        orow.iter_mut().for_each(|y| *y *= inv);
                    }
                });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxGrad)?))
    }
}

/// (y, g) -> y ⊙ (g − Σ_row g⊙y)
struct SoftmaxGrad;

impl candle_core::CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = cpu_grad::contiguous_f32(s1, l1)?;
        let g = cpu_grad::contiguous_f32(s2, l2)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("softmax grad {:?} vs {:?}", l2.shape(), l1.shape());
        }
        let n = last_dim(l1)?;
        let mut out = vec![0f32; y.len()];
        if n > 0 {
            let block = cpu_grad::rows_per_task(n) * n;
            out.par_chunks_mut(block)
                .zip(y.par_chunks(block).zip(g.par_chunks(block)))
                .for_each(|(o, (yb, gb))| {
                    for ((orow, yrow), grow) in o
                        .chunks_exact_mut(n)
                        .zip(yb.chunks_exact(n))
                        .zip(gb.chunks_exact(n))
                    {
                        let dot: f32 = yrow.iter().zip(grow).map(|(a, b)| a * b).sum();
                        for ((d, &yv), &gv) in orow.iter_mut().zip(yrow).zip(grow) {
                            *d = yv * (gv - dot);
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        cpu_grad::max_abs_diff(a, b).unwrap()
    }

    /// Values and gradients equal candle's composed softmax, with a row
    /// that has a masked (-inf) entry.
    #[test]
    fn matches_composed_softmax() {
        let dev = Device::Cpu;
        let mut data: Vec<f32> = Tensor::randn(0f32, 3.0, 2 * 3 * 5, &dev)
            .unwrap()
            .to_vec1()
            .unwrap();
        data[4] = f32::NEG_INFINITY;
        let x = Var::from_vec(data, (2, 3, 5), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        assert!(applies(&x));
        let fused = softmax_last_dim(&x).unwrap();
        let composed = candle_nn::ops::softmax(&x, candle_core::D::Minus1).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-6);
        assert_eq!(
            fused
                .get(0)
                .unwrap()
                .get(0)
                .unwrap()
                .get(4)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let gf = cpu_grad::grads_of_weighted_sum(&fused, &w).unwrap();
        let gc = cpu_grad::grads_of_weighted_sum(&composed, &w).unwrap();
        let (a, c) = (gf.get(&x).unwrap(), gc.get(&x).unwrap());
        assert!(max_diff(a, c) < 1e-5, "{}", max_diff(a, c));
    }
}
