//! Rotary embedding with its own backward pass, for the trainable path.
//! candle 0.11's rope kernels have no backward, and the composed rotation
//! is about nine graph nodes (narrows, four broadcast products, sub, add,
//! cat), each with a zero-filled gradient buffer and an add in backward.
//! The rotation is orthogonal, so its backward is the rotation by −θ:
//! the same kernel with sin negated.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_grad;
use super::rope::RopeStyle;

/// Whether [`rotate`] takes `xs`.
pub(crate) fn applies(xs: &Tensor) -> bool {
    xs.track_op() && cpu_grad::applies(xs) && xs.rank() == 4
}

/// # Shapes
/// `xs`: (B, H, T, d); `cos`, `sin`: (T, d/2) or (B, T, d/2), already cut
/// to T. Returns (B, H, T, d).
pub(crate) fn rotate(xs: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (b, _, t, d) = xs.dims4()?;
    let per_batch = match cos.rank() {
        2 => false,
        3 if cos.dim(0)? == b => true,
        _ => candle_core::bail!("rope: cos {:?} for input {:?}", cos.shape(), xs.shape()),
    };
    let rows = if per_batch { b * t } else { t };
    let flat = |c: &Tensor| -> Result<Vec<f32>> {
        let v = c.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != rows * (d / 2) {
            candle_core::bail!("rope: cos/sin {:?} for input {:?}", c.shape(), xs.shape());
        }
        Ok(v)
    };
    xs.contiguous()?.apply_op1(RopeOp {
        cos: flat(cos)?,
        sin: flat(sin)?,
        per_batch,
        style,
    })
}

#[derive(Clone)]
struct RopeOp {
    /// (rows, d/2): rows = T, or B·T when `per_batch`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    per_batch: bool,
    style: RopeStyle,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-trainable"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = cpu_grad::contiguous_f32(storage, layout)?;
        let (_, h, t, d) = layout.shape().dims4()?;
        let half = d / 2;
        let mut out = vec![0f32; src.len()];
        // one task per (batch, head) plane of T rows
        out.par_chunks_mut(t * d)
            .zip(src.par_chunks(t * d))
            .enumerate()
            .for_each(|(plane, (o, x))| {
                let bi = plane / h;
                for ti in 0..t {
                    let row = if self.per_batch { bi * t + ti } else { ti };
                    let (c, s) = (
                        &self.cos[row * half..(row + 1) * half],
                        &self.sin[row * half..(row + 1) * half],
                    );
                    let (xr, or) = (&x[ti * d..(ti + 1) * d], &mut o[ti * d..(ti + 1) * d]);
                    for i in 0..half {
                        // the pair (a, b) turns by the angle of (c, s)
                        let (ia, ib) = match self.style {
                            RopeStyle::HalfSplit => (i, i + half),
                            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        };
                        let (a, b) = (xr[ia], xr[ib]);
                        or[ia] = a * c[i] - b * s[i];
                        or[ib] = b * c[i] + a * s[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut back = self.clone();
        back.sin.iter_mut().for_each(|s| *s = -*s);
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}
