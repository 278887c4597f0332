//! Root-mean-square LayerNorm (Zhang & Sennrich 2019; HF `LlamaRMSNorm`):
//! `x / sqrt(mean(x²) + eps) * weight`, statistics in f32 whatever the
//! activation dtype, as transformers computes them.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_grad;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// # Shapes
    /// `xs`: (..., D) -> (..., D)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let tracked = self.weight.is_variable() || xs.track_op();
        if tracked && cpu_grad::applies(xs) && cpu_grad::applies(&self.weight) {
            // f32 on the CPU: one op with a hand-written backward.
            return xs.contiguous()?.apply_op2(
                &self.weight.contiguous()?,
                RmsNormGrad {
                    eps: self.eps as f32,
                },
            );
        }
        if tracked {
            // Composed ops: differentiable, for training.
            let dtype = xs.dtype();
            let x = xs.to_dtype(DType::F32)?;
            let inv = x
                .sqr()?
                .mean_keepdim(candle_core::D::Minus1)?
                .affine(1.0, self.eps)?
                .sqrt()?
                .recip()?;
            return x
                .broadcast_mul(&inv)?
                .to_dtype(dtype)?
                .broadcast_mul(&self.weight);
        }
        // candle's fused kernel accumulates in f32 for f16/bf16 inputs.
        candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps as f32)
    }
}

/// RMSNorm over the last dim of a contiguous f32 CPU tensor, statistics as
/// the composed path computes them; its backward is [`RmsNormBackward`].
#[derive(Clone, Copy)]
struct RmsNormGrad {
    eps: f32,
}

/// 1 / rms of one row.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|&x| x * x).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// `x` and `weight` as slices, the weight as wide as `x`'s last dim.
fn operands<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    let (x, w) = (
        cpu_grad::contiguous_f32(s1, l1)?,
        cpu_grad::contiguous_f32(s2, l2)?,
    );
    if w.is_empty() || l1.shape().dims().last() != Some(&w.len()) {
        candle_core::bail!(
            "rms norm: weight {:?} vs input {:?}",
            l2.shape(),
            l1.shape()
        );
    }
    Ok((x, w))
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = operands((s1, l1), (s2, l2))?;
        let n = w.len();
        let mut out = vec![0f32; x.len()];
        let block = cpu_grad::rows_per_task(n) * n;
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(o, x)| {
                for (orow, xrow) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    let inv = inv_rms(xrow, self.eps);
                    for ((o, &x), &w) in orow.iter_mut().zip(xrow).zip(w) {
                        *o = x * inv * w;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = xs.elem_count() / weight.elem_count();
        // (rows + 1, n): dx rows, then d weight
        let packed = xs.apply_op2_no_bwd(
            &grad.contiguous()?,
            &RmsNormBackward {
                eps: self.eps,
                weight: weight.flatten_all()?.to_vec1()?,
            },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(xs.shape())?;
        Ok((Some(dx), Some(packed.get(rows)?)))
    }
}

/// `(x, dy)` -> `(rows + 1, n)`: with `x̂ = x·rstd` and `g = dy·weight`,
/// `dx = rstd·(g − x̂·mean(g·x̂))` per row, then `Σ dy·x̂` over rows.
struct RmsNormBackward {
    eps: f32,
    weight: Vec<f32>,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_grad::contiguous_f32(s1, l1)?;
        let dy = cpu_grad::contiguous_f32(s2, l2)?;
        let (w, n) = (&self.weight, self.weight.len());
        if n == 0 || dy.len() != x.len() || l1.shape().dims().last() != Some(&n) {
            candle_core::bail!(
                "rms norm backward: grad {:?} vs input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let rows = x.len() / n;
        let mut out = vec![0f32; (rows + 1) * n];
        let block = cpu_grad::rows_per_task(n) * n;
        let partials: Vec<Vec<f32>> = out[..rows * n]
            .par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(dy.par_chunks(block))
            .map(|((dx, x), dy)| {
                let mut dw = vec![0f32; n];
                for ((dxr, xr), dyr) in dx
                    .chunks_exact_mut(n)
                    .zip(x.chunks_exact(n))
                    .zip(dy.chunks_exact(n))
                {
                    let rstd = inv_rms(xr, self.eps);
                    let mut sum_gx = 0f32;
                    for i in 0..n {
                        let xhat = xr[i] * rstd;
                        sum_gx += dyr[i] * w[i] * xhat;
                        dw[i] += dyr[i] * xhat;
                    }
                    let mean_gx = sum_gx / n as f32;
                    for i in 0..n {
                        dxr[i] = rstd * (dyr[i] * w[i] - xr[i] * rstd * mean_gx);
                    }
                }
                dw
            })
            .collect();
        out[rows * n..].copy_from_slice(&cpu_grad::add_partials(partials, n));
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_equals_composed() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2.0, (3, 5, 16), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 16, &dev)?;
        let fused = RmsNorm::new(w.clone(), 1e-6).forward(&xs)?;
        let composed =
            RmsNorm::new(Var::from_tensor(&w)?.as_tensor().clone(), 1e-6).forward(&xs)?;
        let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    /// The op's hand-written backward against candle's backward of the
    /// composed ops, written out here as the pre-op trainable path was.
    #[test]
    fn fused_backward_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        // (40, 30, 96): several parallel row blocks
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (40, 30, 96), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 96, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (40, 30, 96), &dev)?;
        let fused = RmsNorm::new(w.as_tensor().clone(), 1e-5).forward(x.as_tensor())?;
        let gf = (&fused * &probe)?.sum_all()?.backward()?;
        let xs = x.as_tensor();
        let inv = xs
            .sqr()?
            .mean_keepdim(candle_core::D::Minus1)?
            .affine(1.0, 1e-5)?
            .sqrt()?
            .recip()?;
        let composed = xs.broadcast_mul(&inv)?.broadcast_mul(w.as_tensor())?;
        let gc = (&composed * &probe)?.sum_all()?.backward()?;
        let max = |t: &Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
        assert!(max(&(&fused - &composed)?)? < 1e-5);
        for v in [&x, &w] {
            let (f, c) = (gf.get(v).expect("grad"), gc.get(v).expect("grad"));
            let d = max(&(f - c)?)?;
            assert!(d < 1e-5 * max(c)?.max(1.0), "{:?}: {d}", v.dims());
        }
        Ok(())
    }
}
