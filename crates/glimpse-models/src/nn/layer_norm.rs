//! LayerNorm (torch `nn.LayerNorm`) that stays differentiable.
//!
//! `candle_nn::LayerNorm` runs a custom op without a backward pass on
//! contiguous inputs, so gradients stop there silently. Here that op serves
//! frozen inference only (the numbers `candle_nn::LayerNorm` gives); anything
//! that tracks gradients (trainable weights, or an input that does) takes the
//! composed ops, which are the ones `candle_nn::LayerNorm` runs on
//! non-contiguous inputs, except for f32 on the CPU: there one op with a
//! hand-written backward ([`LayerNormGrad`]) replaces the chain, whose weight
//! and bias gradients went through candle's single-threaded reduce.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::cpu_grad;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// `weight` (ones) and `bias` (zeros) of width `size` under `vb`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get_with_hints(size, "weight", Init::Const(1.))?,
        vb.get_with_hints(size, "bias", Init::Const(0.))?,
        eps,
    ))
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// # Shapes
    /// `xs`: (..., size) -> (..., size)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let frozen = !xs.track_op() && !self.weight.track_op() && !self.bias.track_op();
        if frozen && xs.is_contiguous() {
            return candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps as f32);
        }
        if !frozen
            && [xs, &self.weight, &self.bias]
                .iter()
                .all(|t| cpu_grad::applies(t))
            && self.weight.rank() == 1
            && self.bias.rank() == 1
        {
            return xs.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &self.bias.contiguous()?,
                LayerNormGrad {
                    eps: self.eps as f32,
                },
            );
        }
        // Composed ops: differentiable, and statistics in f32 for f16/bf16.
        let dtype = xs.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let size = xs.dim(D::Minus1)? as f64;
        let x = xs.to_dtype(internal)?;
        let x = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / size)?)?;
        let var = (x.sqr()?.sum_keepdim(D::Minus1)? / size)?;
        let normed = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// LayerNorm over the last dim of a contiguous f32 CPU tensor, statistics as
/// the composed path computes them; its backward is [`LayerNormBackward`].
#[derive(Clone, Copy)]
struct LayerNormGrad {
    eps: f32,
}

/// Mean and 1 / std of one row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `(x, weight, bias)` as slices, `weight` and `bias` as wide as `x`'s last dim.
fn operands<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
    let (a, b, c) = (
        cpu_grad::contiguous_f32(s1, l1)?,
        cpu_grad::contiguous_f32(s2, l2)?,
        cpu_grad::contiguous_f32(s3, l3)?,
    );
    if b.is_empty() || l1.shape().dims().last() != Some(&b.len()) {
        candle_core::bail!(
            "layer norm: weight {:?} vs input {:?}",
            l2.shape(),
            l1.shape()
        );
    }
    Ok((a, b, c))
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = operands((s1, l1), (s2, l2), (s3, l3))?;
        if b.len() != w.len() {
            candle_core::bail!(
                "layer norm: bias {:?} vs weight {:?}",
                l3.shape(),
                l2.shape()
            );
        }
        let n = w.len();
        let mut out = vec![0f32; x.len()];
        let block = cpu_grad::rows_per_task(n) * n;
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(o, x)| {
                for (orow, xrow) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    for (((o, &x), &w), &b) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
                        *o = (x - mean) * rstd * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = weight.elem_count();
        let rows = xs.elem_count() / n;
        // (rows + 2, n): dx rows, then d weight, then d bias
        let packed = xs.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormBackward { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(xs.shape())?;
        let dw = packed.get(rows)?;
        let db = packed.get(rows + 1)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, weight, dy)` -> `(rows + 2, n)`: with `x̂ = (x − mean)·rstd` and
/// `g = dy·weight`, `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` per row, then
/// `Σ dy·x̂` and `Σ dy` over rows, in one pass over row blocks.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = operands((s1, l1), (s2, l2), (s3, l3))?;
        if dy.len() != x.len() {
            candle_core::bail!(
                "layer norm backward: grad {:?} vs input {:?}",
                l3.shape(),
                l1.shape()
            );
        }
        let n = w.len();
        let rows = x.len() / n;
        let mut out = vec![0f32; (rows + 2) * n];
        let block = cpu_grad::rows_per_task(n) * n;
        let partials: Vec<(Vec<f32>, Vec<f32>)> = out[..rows * n]
            .par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(dy.par_chunks(block))
            .map(|((dx, x), dy)| {
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                for ((dxr, xr), dyr) in dx
                    .chunks_exact_mut(n)
                    .zip(x.chunks_exact(n))
                    .zip(dy.chunks_exact(n))
                {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                    for i in 0..n {
                        let xhat = (xr[i] - mean) * rstd;
                        let g = dyr[i] * w[i];
                        sum_g += g;
                        sum_gx += g * xhat;
                        dw[i] += dyr[i] * xhat;
                        db[i] += dyr[i];
                    }
                    let (mean_g, mean_gx) = (sum_g / n as f32, sum_gx / n as f32);
                    for i in 0..n {
                        let xhat = (xr[i] - mean) * rstd;
                        dxr[i] = rstd * (dyr[i] * w[i] - mean_g - xhat * mean_gx);
                    }
                }
                (dw, db)
            })
            .collect();
        let (dw, db): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
        out[rows * n..(rows + 1) * n].copy_from_slice(&cpu_grad::add_partials(dw, n));
        out[(rows + 1) * n..].copy_from_slice(&cpu_grad::add_partials(db, n));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    #[test]
    fn matches_candle_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2.0, (3, 5, 16), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 16, &dev)?;
        let b = Tensor::randn(0f32, 0.1, 16, &dev)?;
        let reference = candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5);
        let frozen = LayerNorm::new(w.clone(), b.clone(), 1e-5);
        // frozen: exactly candle's numbers, contiguous or not
        let strided = xs.transpose(0, 1)?;
        for x in [&xs, &strided] {
            let d = (frozen.forward(x)? - reference.forward(x)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(d, 0.0);
        }
        // trainable: the composed path, same numbers within rounding, with gradients
        let (wv, bv) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?);
        let xv = Var::from_tensor(&xs)?;
        let trainable = LayerNorm::new(wv.as_tensor().clone(), bv.as_tensor().clone(), 1e-5);
        let ys = trainable.forward(xv.as_tensor())?;
        let d = (&ys - frozen.forward(&xs)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        let probe = Tensor::randn(0f32, 1.0, ys.shape(), &dev)?;
        let grads = (ys * probe)?.sum_all()?.backward()?;
        for v in [&wv, &bv, &xv] {
            let g = grads.get(v.as_tensor()).expect("gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }

    /// The op's hand-written backward against candle's backward of the
    /// composed ops (taken here by a strided input).
    #[test]
    fn fused_backward_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        // (40, 30, 96): several parallel row blocks
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (40, 30, 96), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 96, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 96, &dev)?)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let probe = Tensor::randn(0f32, 1.0, (40, 30, 96), &dev)?;
        let fused = ln.forward(x.as_tensor())?;
        let gf = (&fused * &probe)?.sum_all()?.backward()?;
        // (30, 40, 96) non-contiguous -> composed path; transposed back
        let xt = x.as_tensor().transpose(0, 1)?;
        let composed = ln.forward(&xt)?.transpose(0, 1)?;
        let gc = (&composed * &probe)?.sum_all()?.backward()?;
        let max = |t: &Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
        assert!(max(&(&fused - &composed)?)? < 1e-5);
        for v in [&x, &w, &b] {
            let (f, c) = (gf.get(v).expect("grad"), gc.get(v).expect("grad"));
            let d = max(&(f - c)?)?;
            assert!(d < 1e-5 * max(c)?.max(1.0), "{:?}: {d}", v.dims());
        }
        Ok(())
    }
}
