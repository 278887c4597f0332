//! The trainable-path `Linear` as one autograd node.
//!
//! Composed from candle ops, `x·Wᵀ + b` on (..., in) input is five graph
//! nodes (flatten, transpose of W, matmul, bias add, unflatten), and
//! candle 0.11's backward gives each node's input a zero-filled gradient
//! buffer plus an add: three extra passes over the output, one over the
//! input, and a strided add of the transposed weight gradient. Here the
//! forward is one gemm (bias as its initial value) and the backward two
//! matmuls whose results are already in the layout of x and W.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};

use super::cpu_grad;

/// Whether [`linear`] takes these operands: f32 CPU tensors on the
/// trainable path (inference keeps candle's matmul and its fused paths).
pub(crate) fn applies(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let tracked = xs.track_op() || weight.track_op() || bias.is_some_and(|b| b.track_op());
    tracked
        && xs.rank() >= 2
        && cpu_grad::applies(xs)
        && cpu_grad::applies(weight)
        && bias.is_none_or(cpu_grad::applies)
}

/// # Shapes
/// `xs`: (..., in); `weight`: (out, in); `bias`: (out). Returns (..., out).
pub(crate) fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let xs = xs.contiguous()?;
    let weight = weight.contiguous()?;
    match bias {
        Some(b) => xs.apply_op3(&weight, &b.contiguous()?, LinearOp),
        None => xs.apply_op2(&weight, LinearOp),
    }
}

struct LinearOp;

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// (rows, in) · (out, in)ᵀ [+ bias] -> (rows, out), row-major, with the
/// output shape (..., out) of the input's leading dims.
fn forward(
    x: &[f32],
    xl: &Layout,
    w: &[f32],
    wl: &Layout,
    bias: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let (out_dim, in_dim) = wl.shape().dims2()?;
    let dims = xl.shape().dims();
    if dims.last() != Some(&in_dim) || bias.is_some_and(|b| b.len() != out_dim) {
        candle_core::bail!(
            "linear: input {:?} vs weight {:?}{}",
            xl.shape(),
            wl.shape(),
            bias.map(|b| format!(" and bias ({})", b.len()))
                .unwrap_or_default()
        );
    }
    let rows = x.len() / in_dim.max(1);
    let mut out = match bias {
        Some(b) => b.repeat(rows),
        None => vec![0f32; rows * out_dim],
    };
    if rows > 0 && out_dim > 0 && in_dim > 0 {
        // SAFETY: out is rows × out_dim row-major (column stride 1, row stride
        // out_dim); x is rows × in_dim row-major; Wᵀ is read from W (out_dim ×
        // in_dim, row-major) with swapped strides: element (k, j) at j·in + k.
        unsafe {
            gemm(
                rows,
                out_dim,
                in_dim,
                out.as_mut_ptr(),
                1,
                out_dim as isize,
                bias.is_some(),
                x.as_ptr(),
                1,
                in_dim as isize,
                w.as_ptr(),
                in_dim as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                threads(),
            );
        }
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = out_dim;
    Ok((CpuStorage::F32(out), Shape::from(shape)))
}

/// dx = dy · W, dW = dyᵀ · x (contiguous (out, in), like W); each only
/// when its operand tracks gradients (a frozen decoder under a trainable
/// projector needs dx but no dW; pixels need no dx).
fn input_and_weight_grads(
    xs: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (out_dim, in_dim) = weight.dims2()?;
    // (..., out) -> (rows, out); (..., in) -> (rows, in)
    let g = grad.contiguous()?.reshape(((), out_dim))?;
    let dx = if xs.track_op() {
        Some(g.matmul(weight)?.reshape(xs.shape())?)
    } else {
        None
    };
    let dw = if weight.track_op() {
        Some(g.t()?.matmul(&xs.reshape(((), in_dim))?)?)
    } else {
        None
    };
    Ok((dx, dw))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_grad::contiguous_f32(s1, l1)?;
        let w = cpu_grad::contiguous_f32(s2, l2)?;
        forward(x, l1, w, l2, None)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        input_and_weight_grads(xs, weight, grad)
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-bias"
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
        let x = cpu_grad::contiguous_f32(s1, l1)?;
        let w = cpu_grad::contiguous_f32(s2, l2)?;
        let b = cpu_grad::contiguous_f32(s3, l3)?;
        forward(x, l1, w, l2, Some(b))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = input_and_weight_grads(xs, weight, grad)?;
        let db = if bias.track_op() {
            Some(cpu_grad::sum_rows(grad)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        cpu_grad::max_abs_diff(a, b).unwrap()
    }

    /// Values and gradients equal candle's composed ops', with and without
    /// bias, on a 3-D input whose loss weighs every output differently.
    #[test]
    fn matches_composed_ops() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (3, 5, 4), &dev).unwrap();
        for with_bias in [false, true] {
            let bias = with_bias.then(|| b.as_tensor());
            assert!(applies(&x, &w, bias));
            let fused = linear(&x, &w, bias).unwrap();
            let mut composed = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            if let Some(b) = bias {
                composed = composed.broadcast_add(b).unwrap();
            }
            assert_eq!(fused.dims(), &[3, 5, 4]);
            assert!(close(&fused, &composed) < 1e-5);
            let gf = cpu_grad::grads_of_weighted_sum(&fused, &weights).unwrap();
            let gc = cpu_grad::grads_of_weighted_sum(&composed, &weights).unwrap();
            for v in [&x, &w] {
                let (a, c) = (gf.get(v).unwrap(), gc.get(v).unwrap());
                assert!(a.is_contiguous());
                assert!(close(a, c) < 1e-4, "{}", close(a, c));
            }
            if with_bias {
                assert!(close(gf.get(&b).unwrap(), gc.get(&b).unwrap()) < 1e-4);
            } else {
                assert!(gf.get(&b).is_none());
            }
        }
    }

    /// A frozen weight under a trainable input: dx only, equal to candle's.
    #[test]
    fn frozen_weight_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 7), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 7), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        assert!(applies(&x, &w, Some(&b)));
        let fused = linear(&x, &w, Some(&b)).unwrap();
        let composed = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let gf = fused.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gc = composed
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(close(gf.get(&x).unwrap(), gc.get(&x).unwrap()) < 1e-4);
        assert!(gf.get(&w).is_none() && gf.get(&b).is_none());
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let dev = Device::Cpu;
        let x = Var::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 5), candle_core::DType::F32, &dev).unwrap();
        let e = linear(&x, &w, None).unwrap_err().to_string();
        assert!(e.contains("weight"), "{e}");
    }
}
