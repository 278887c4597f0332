//! Linear layer `y = x Wᵀ + b` with HF's (out, in) weight layout.
//!
//! Unlike `candle_nn::Linear`, inputs with several leading dims are
//! flattened into one (N, in) matrix first, so a batch is one gemm rather
//! than a batched matmul over a broadcast weight.

use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::{cpu_grad, linear_op};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    /// `x Wᵀ` without the bias, for callers that fuse the bias into the next op.
    ///
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    pub fn forward_no_bias(&self, xs: &Tensor) -> Result<Tensor> {
        self.project(xs, false)
    }

    fn project(&self, xs: &Tensor, with_bias: bool) -> Result<Tensor> {
        let bias = self.bias.as_ref().filter(|_| with_bias);
        if linear_op::applies(xs, &self.weight, bias) {
            return linear_op::linear(xs, &self.weight, bias);
        }
        let dims = xs.dims();
        let (&inner, lead) = dims
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows: usize = lead.iter().product();
        // (..., in) -> (N, in) x (in, out) -> (N, out)
        let mut ys = xs.reshape((rows, inner))?.matmul(&self.weight.t()?)?;
        if let (true, Some(b)) = (with_bias, &self.bias) {
            ys = add_bias(&ys, b)?;
        }
        let mut out_dims = lead.to_vec();
        out_dims.push(self.weight.dim(0)?);
        // (N, out) -> (..., out)
        ys.reshape(out_dims)
    }
}

impl Module for Linear {
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.project(xs, true)
    }
}

/// `xs + bias`, the bias broadcast over the leading dims. With gradients on
/// an f32 CPU tensor it is one op whose backward sums the bias gradient in one
/// parallel pass ([`cpu_grad::sum_rows`]) rather than candle's broadcast
/// backward.
///
/// # Shapes
/// `xs`: (..., N), `bias`: (N) -> (..., N)
pub fn add_bias(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let tracked = xs.track_op() || bias.track_op();
    if tracked && cpu_grad::applies(xs) && cpu_grad::applies(bias) && bias.rank() == 1 {
        return xs.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd);
    }
    xs.broadcast_add(bias)
}

/// `xs + bias` over contiguous f32 CPU buffers, with its backward.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = cpu_grad::contiguous_f32(s1, l1)?;
        let bias = cpu_grad::contiguous_f32(s2, l2)?;
        let n = bias.len();
        if n == 0 || l1.shape().dims().last() != Some(&n) {
            candle_core::bail!("bias {:?} vs input {:?}", l2.shape(), l1.shape());
        }
        let mut out = vec![0f32; src.len()];
        let block = cpu_grad::rows_per_task(n) * n;
        out.par_chunks_mut(block)
            .zip(src.par_chunks(block))
            .for_each(|(o, i)| {
                for (orow, irow) in o.chunks_exact_mut(n).zip(i.chunks_exact(n)) {
                    for ((o, &x), &b) in orow.iter_mut().zip(irow).zip(bias) {
                        *o = x + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(cpu_grad::sum_rows(grad)?)))
    }
}

/// Weight `weight` (out, in) and bias `bias` (out) under `vb`; initialised
/// like torch's `nn.Linear` when the builder creates variables.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = vb.get_with_hints(
        out_dim,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Linear::new(weight, Some(bias)))
}

pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    Ok(Linear::new(weight, None))
}

/// An embedding table `weight` (n, d) under `vb`; fresh tables are drawn
/// from N(0, 0.02²) as transformers initialises CLIP and SigLIP (candle's
/// default, N(0, 1), swamps the patch signal of a ViT trained from scratch).
pub fn embedding(n: usize, d: usize, vb: VarBuilder) -> Result<candle_nn::Embedding> {
    let weight = vb.get_with_hints(
        (n, d),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?;
    Ok(candle_nn::Embedding::new(weight, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::nn::cpu_grad::max_abs_diff as max_diff;

    /// The bias-add op and candle's broadcast add agree, forward and backward.
    #[test]
    fn bias_add_matches_broadcast_add() -> Result<()> {
        let dev = Device::Cpu;
        // enough rows for several parallel blocks
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 300, 96), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 96, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (7, 300, 96), &dev)?;
        let fused = add_bias(x.as_tensor(), b.as_tensor())?;
        let composed = x.as_tensor().broadcast_add(b.as_tensor())?;
        assert!(max_diff(&fused, &composed)? == 0.0);
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gc = (composed * &probe)?.sum_all()?.backward()?;
        for v in [&x, &b] {
            let (f, c) = (gf.get(v).expect("grad"), gc.get(v).expect("grad"));
            assert_eq!(f.dims(), c.dims());
            let d = max_diff(f, c)?;
            assert!(
                d < 1e-5 * c.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0),
                "{d}"
            );
        }
        Ok(())
    }
}
