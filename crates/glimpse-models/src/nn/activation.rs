//! Activations by their Hugging Face `hidden_act` names.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::simd_act;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's approximation.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU with erf (`nn.GELU()`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation (`gelu_pytorch_tanh`, a.k.a. `gelu_new`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Inference on CPU in f32: one fused pass over all cores. candle's
        // element-wise ops run on one thread and quick_gelu takes three of
        // them, which cost a ViT-B/16 more time than its attention softmax.
        // Autograd needs the composed ops, so tensors that track gradients
        // take the general path.
        if fused_applies(xs) {
            return xs.apply_op1_no_bwd(&FusedCpu(*self));
        }
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }

    /// `act(xs + bias)`, the bias broadcast over the last dim: the pass that
    /// adds a linear layer's bias and the activation pass made one.
    ///
    /// # Shapes
    /// `xs`: (..., N), `bias`: (N) -> (..., N)
    pub fn forward_biased(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if fused_applies(xs) && fused_applies(bias) {
            return xs.apply_op2_no_bwd(bias, &FusedCpu(*self));
        }
        self.forward(&xs.broadcast_add(bias)?)
    }

    /// The vectorised kernel for this activation, if there is one.
    fn simd_kernel(self) -> Option<simd_act::Kernel> {
        match self {
            Activation::QuickGelu => Some(simd_act::Kernel::QuickGelu),
            Activation::Silu => Some(simd_act::Kernel::Silu),
            _ => None,
        }
    }

    /// The scalar function, with the formulas candle's own ops use so both
    /// paths give the same numbers.
    fn scalar(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Gelu => {
                (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0)
                    * 0.5
                    * x
            }
            Activation::GeluTanh => {
                const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

fn fused_applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op()
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fused activation takes f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused activation takes a contiguous tensor"),
    }
}

/// Activation applied in one parallel pass over a contiguous f32 CPU buffer.
struct FusedCpu(Activation);

/// Rows per parallel task: large enough that scheduling is noise next to the math.
const CHUNK: usize = 16 * 1024;

impl CustomOp2 for FusedCpu {
    fn name(&self) -> &'static str {
        "fused-bias-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (src, bias) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let n = bias.len();
        if n == 0 || l1.shape().dims().last() != Some(&n) {
            candle_core::bail!(
                "bias {:?} does not match the last dim of {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let act = self.0;
        let kernel = act.simd_kernel();
        let mut out = vec![0f32; src.len()];
        // whole rows per task so the bias lines up with each chunk
        let rows = CHUNK.div_ceil(n).max(1) * n;
        out.par_chunks_mut(rows)
            .zip(src.par_chunks(rows))
            .for_each(|(o, i)| {
                if kernel.is_some_and(|k| simd_act::run(k, i, bias, o)) {
                    return;
                }
                for (orow, irow) in o.chunks_mut(n).zip(i.chunks(n)) {
                    for ((o, &x), &b) in orow.iter_mut().zip(irow).zip(bias) {
                        *o = act.scalar(x + b);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

impl CustomOp1 for FusedCpu {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout)?;
        let act = self.0;
        let kernel = act.simd_kernel();
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, i)| {
                if !kernel.is_some_and(|k| simd_act::run(k, i, &[], o)) {
                    o.iter_mut().zip(i).for_each(|(o, &x)| *o = act.scalar(x));
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused pass and the autograd path agree.
    #[test]
    fn fused_matches_composed() -> Result<()> {
        let x = Tensor::arange(-400f32, 400., &Device::Cpu)?.affine(0.01, 0.)?;
        let tracked = Var::from_tensor(&x)?;
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
            Activation::Silu,
        ] {
            let fused = act.forward(&x)?;
            let composed = act.forward(tracked.as_tensor())?;
            let diff = (fused - composed)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{act:?}: {diff}");
            // (4, 200) + bias (200)
            let x2 = x.reshape((4, 200))?;
            let bias = Tensor::arange(0f32, 200., &Device::Cpu)?.affine(0.01, -1.0)?;
            let fused = act.forward_biased(&x2, &bias)?;
            let composed = act.forward(&x2.broadcast_add(&bias)?)?;
            let diff = (fused - composed)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{act:?} with bias: {diff}");
        }
        Ok(())
    }
}
