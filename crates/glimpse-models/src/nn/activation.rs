//! Activations by their Hugging Face `hidden_act` names.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
        if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 && !xs.track_op() {
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

/// Activation applied in one parallel pass over a contiguous f32 CPU buffer.
struct FusedCpu(Activation);

impl CustomOp1 for FusedCpu {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused activation takes f32");
        };
        let src: &[f32] = match layout.contiguous_offsets() {
            Some((start, end)) => &data[start..end],
            None => candle_core::bail!("fused activation takes a contiguous tensor"),
        };
        let act = self.0;
        let mut out = vec![0f32; src.len()];
        // Chunks large enough that scheduling is noise next to the math.
        out.par_chunks_mut(16 * 1024)
            .zip(src.par_chunks(16 * 1024))
            .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = act.scalar(x)));
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
        }
        Ok(())
    }
}
