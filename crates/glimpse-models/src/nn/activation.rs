//! Activations by their Hugging Face `hidden_act` names.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cpu_grad::{self, contiguous_f32, CHUNK};
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
    /// No activation (HF's `linear`): a LLaVA export of a one-layer
    /// projector runs its `linear_2` (the identity) after it.
    #[serde(rename = "linear", alias = "identity")]
    Identity,
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if *self == Activation::Identity {
            return Ok(xs.clone());
        }
        // Inference on CPU in f32: one fused pass over all cores. candle's
        // element-wise ops run on one thread and quick_gelu takes three of
        // them, which cost a ViT-B/16 more time than its attention softmax.
        // Tensors that track gradients take the same pass with a
        // hand-written backward ([`Deriv`]).
        if fused_applies(xs) {
            return xs.apply_op1_no_bwd(&FusedCpu(*self));
        }
        if cpu_grad::applies(xs) {
            return xs.contiguous()?.apply_op1(FusedCpu(*self));
        }
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
            Activation::Identity => Ok(xs.clone()),
        }
    }

    /// `act(xs + bias)`, the bias broadcast over the last dim: the pass that
    /// adds a linear layer's bias and the activation pass made one.
    ///
    /// # Shapes
    /// `xs`: (..., N), `bias`: (N) -> (..., N)
    pub fn forward_biased(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if *self == Activation::Identity {
            return xs.broadcast_add(bias);
        }
        if fused_applies(xs) && fused_applies(bias) {
            return xs.apply_op2_no_bwd(bias, &FusedCpu(*self));
        }
        if cpu_grad::applies(xs) && cpu_grad::applies(bias) && bias.rank() == 1 {
            return xs
                .contiguous()?
                .apply_op2(&bias.contiguous()?, FusedCpu(*self));
        }
        self.forward(&xs.broadcast_add(bias)?)
    }

    /// The vectorised kernel for this activation, if there is one.
    fn simd_kernel(self) -> Option<simd_act::Kernel> {
        match self {
            Activation::QuickGelu => Some(simd_act::Kernel::QuickGelu),
            Activation::Silu => Some(simd_act::Kernel::Silu),
            Activation::GeluTanh => Some(simd_act::Kernel::GeluTanh),
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
            Activation::Identity => x,
        }
    }

    /// d act / dx, as candle's backward of the composed ops computes it.
    fn derivative(self, x: f32) -> f32 {
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        match self {
            Activation::QuickGelu => {
                let s = sigmoid(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            Activation::Gelu => {
                // Φ(x) + x φ(x)
                const INV_SQRT_2PI: f32 = 0.398_942_3;
                0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
                    + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
            }
            Activation::GeluTanh => {
                const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
                let t = (SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh();
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Activation::Relu => {
                if x >= 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Silu => {
                let s = sigmoid(x);
                s + x * s * (1.0 - s)
            }
            Activation::Identity => 1.0,
        }
    }
}

fn fused_applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op()
}

/// Activation applied in one parallel pass over a contiguous f32 CPU buffer.
struct FusedCpu(Activation);

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

    fn bwd(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = xs.apply_op3_no_bwd(bias, &grad.contiguous()?, &Deriv(self.0))?;
        let db = cpu_grad::sum_rows(&dz)?;
        Ok((Some(dz), Some(db)))
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

    fn bwd(&self, xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            xs.apply_op2_no_bwd(&grad.contiguous()?, &Deriv(self.0))?,
        ))
    }
}

/// The backward of [`FusedCpu`]: `grad · act'(x)` (two inputs) or
/// `grad · act'(x + bias)` (three), in one parallel pass.
struct Deriv(Activation);

impl Deriv {
    /// `out = grad · act'(x + bias)` over whole rows (`bias` empty: no bias).
    fn run(&self, x: &[f32], bias: &[f32], grad: &[f32]) -> Result<Vec<f32>> {
        if grad.len() != x.len() || (!bias.is_empty() && !x.len().is_multiple_of(bias.len())) {
            candle_core::bail!(
                "activation backward: {} inputs, {} gradients, bias {}",
                x.len(),
                grad.len(),
                bias.len()
            );
        }
        let act = self.0;
        let n = bias.len().max(1);
        let block = CHUNK.div_ceil(n) * n;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(grad.par_chunks(block))
            .for_each(|((o, x), g)| {
                if bias.is_empty() {
                    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                        *o = g * act.derivative(x);
                    }
                    return;
                }
                for ((orow, xrow), grow) in o.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                    for (((o, &x), &g), &b) in orow.iter_mut().zip(xrow).zip(grow).zip(bias) {
                        *o = g * act.derivative(x + b);
                    }
                }
            });
        Ok(out)
    }
}

impl CustomOp2 for Deriv {
    fn name(&self) -> &'static str {
        "activation-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, grad) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        Ok((CpuStorage::F32(self.run(x, &[], grad)?), l1.shape().clone()))
    }
}

impl CustomOp3 for Deriv {
    fn name(&self) -> &'static str {
        "biased-activation-backward"
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
        let (x, bias) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let grad = contiguous_f32(s3, l3)?;
        if l1.shape().dims().last() != Some(&bias.len()) {
            candle_core::bail!("bias {:?} vs input {:?}", l2.shape(), l1.shape());
        }
        Ok((
            CpuStorage::F32(self.run(x, bias, grad)?),
            l1.shape().clone(),
        ))
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
            Activation::Identity,
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

    /// The fused op's hand-written backward and candle's backward of the
    /// composed ops give the same gradients, with and without a bias.
    #[test]
    fn fused_backward_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        // (6, 40, 200): several parallel blocks; values over [-6, 6]
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (6, 40, 200), &dev)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.5, 200, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (6, 40, 200), &dev)?;
        let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5 * scale, "{what}: {d}");
            Ok(())
        };
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
            Activation::Silu,
            Activation::Identity,
        ] {
            let composed = |z: &Tensor| match act {
                Activation::QuickGelu => z * candle_nn::ops::sigmoid(&(z * 1.702)?)?,
                Activation::Gelu => z.gelu_erf(),
                Activation::GeluTanh => z.gelu(),
                Activation::Relu => z.relu(),
                Activation::Silu => z.silu(),
                Activation::Identity => Ok(z.clone()),
            };
            let xs = x.as_tensor();
            let gf = (act.forward(xs)? * &probe)?.sum_all()?.backward()?;
            let gc = (composed(xs)? * &probe)?.sum_all()?.backward()?;
            close(
                gf.get(xs).expect("grad"),
                gc.get(xs).expect("grad"),
                &format!("{act:?}"),
            )?;
            let b = bias.as_tensor();
            let gf = (act.forward_biased(xs, b)? * &probe)?
                .sum_all()?
                .backward()?;
            let gc = (composed(&xs.broadcast_add(b)?)? * &probe)?
                .sum_all()?
                .backward()?;
            for v in [xs, b] {
                let what = format!("{act:?} with bias");
                close(gf.get(v).expect("grad"), gc.get(v).expect("grad"), &what)?;
            }
        }
        Ok(())
    }

    /// HF's `linear` (what a LLaVA export of a one-layer projector names)
    /// passes values through, biased or not.
    #[test]
    fn linear_is_identity() -> Result<()> {
        let act: Activation = serde_json::from_str("\"linear\"").expect("linear parses");
        assert_eq!(act, Activation::Identity);
        let x = Tensor::new(&[[-2f32, 0.5, 3.0]], &Device::Cpu)?;
        let b = Tensor::new(&[1f32, -1.0, 0.25], &Device::Cpu)?;
        assert_eq!(act.forward(&x)?.to_vec2::<f32>()?, [[-2.0, 0.5, 3.0]]);
        assert_eq!(
            act.forward_biased(&x, &b)?.to_vec2::<f32>()?,
            [[-1.0, -0.5, 3.25]]
        );
        Ok(())
    }
}
