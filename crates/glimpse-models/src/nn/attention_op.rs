//! The attention core `softmax(q·kᵀ·scale + mask)·v` as one autograd node,
//! for the trainable f32 CPU path (self-attention of the vision and text
//! towers, the decoder's causal grouped-query attention).
//!
//! Why: composed from candle ops the core is about ten graph nodes (head
//! split copies, kᵀ, batched matmul, scale, mask add, softmax, matmul, head
//! merge), and candle 0.11's backward gives each node's input a zero-filled
//! gradient buffer plus an add, besides the transposed copies themselves.
//! Here the forward is one parallel pass over (batch, kv head): per query
//! head of the group two single-threaded gemms that read q, k, v in place
//! through strides, the softmax in between, and the output written straight
//! into (B, T, H·hd). The probabilities are kept for backward, which runs
//! the same pass with four gemms per head (FlashAttention's backward
//! equations, Dao et al. 2022, Alg. 2, without the tiling):
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)),
//! dQ = dS·K·scale, dK = dSᵀ·Q·scale.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu_grad;

/// Whether [`attention`] takes these operands: f32 CPU tensors of which at
/// least one tracks gradients, each with unit stride along the head dim,
/// and a constant mask.
pub(crate) fn applies(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> bool {
    let unit_last = |t: &Tensor| t.layout().stride().last() == Some(&1);
    (q.track_op() || k.track_op() || v.track_op())
        && [q, k, v]
            .iter()
            .all(|t| cpu_grad::applies(t) && matches!(t.rank(), 3 | 4) && unit_last(t))
        && mask.is_none_or(|m| cpu_grad::applies(m) && !m.track_op())
}

/// # Shapes
/// `q`: (B, T, H·hd) as the projection writes it, or (B, H, T, hd);
/// `k`, `v`: (B, S, Hkv·hd) or (B, Hkv, S, hd) (strided views are read in
/// place); `mask`: additive, broadcastable to (B, H, T, S). Query head h
/// reads kv head h / (H / Hkv), as transformers' `repeat_kv`. Returns
/// (B, T, H·hd).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    num_heads: usize,
    num_kv_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        candle_core::bail!("attention: {num_heads} query heads over {num_kv_heads} kv heads");
    }
    let (b, _, t, _) = View::of(q.layout(), num_heads)?.dims();
    let (_, _, s, _) = View::of(k.layout(), num_kv_heads)?.dims();
    // (.., T, S) -> (B, H, T, S): stride 0 along the broadcast dims, read in
    // place; a mask with a non-unit last stride is copied first
    let mask = match mask {
        Some(m) if m.layout().stride().last() == Some(&1) => {
            Some(m.broadcast_as((b, num_heads, t, s))?)
        }
        Some(m) => Some(m.contiguous()?.broadcast_as((b, num_heads, t, s))?),
        None => None,
    };
    q.apply_op3(
        k,
        v,
        AttentionOp {
            num_heads,
            num_kv_heads,
            scale: scale as f32,
            mask,
            probs: OnceLock::new(),
        },
    )
}

struct AttentionOp {
    num_heads: usize,
    num_kv_heads: usize,
    scale: f32,
    /// (B, H, T, S), broadcast strides allowed, unit last stride.
    mask: Option<Tensor>,
    /// Softmax probabilities (B, H, T, S) contiguous, saved by forward.
    probs: OnceLock<Vec<f32>>,
}

/// Where element (b, h, t, d) of a q/k/v-like operand lives:
/// `offset + b·sb + h·sh + t·st + d`.
#[derive(Clone, Copy, Debug)]
struct View {
    /// 3 for (B, T, n·hd), 4 for (B, n, T, hd).
    rank: usize,
    b: usize,
    n: usize,
    t: usize,
    hd: usize,
    offset: usize,
    sb: usize,
    sh: usize,
    st: usize,
}

impl View {
    /// Reads (B, T, n·hd) or (B, n, T, hd) from a layout with unit last stride.
    fn of(layout: &Layout, heads: usize) -> Result<Self> {
        let stride = layout.stride();
        let offset = layout.start_offset();
        match *layout.shape().dims() {
            [b, t, width] if stride[2] == 1 && width.is_multiple_of(heads) => Ok(Self {
                rank: 3,
                b,
                n: heads,
                t,
                hd: width / heads,
                offset,
                sb: stride[0],
                sh: width / heads,
                st: stride[1],
            }),
            [b, n, t, hd] if stride[3] == 1 && n == heads => Ok(Self {
                rank: 4,
                b,
                n,
                t,
                hd,
                offset,
                sb: stride[0],
                sh: stride[1],
                st: stride[2],
            }),
            _ => candle_core::bail!(
                "attention: operand {:?} (strides {stride:?}) is neither (B, T, {heads}·hd) \
                 nor (B, {heads}, T, hd) with unit last stride",
                layout.shape()
            ),
        }
    }

    /// The same shape stored contiguously: the layout of its gradient.
    fn contiguous(self) -> Self {
        let (_, n, t, hd) = self.dims();
        let (sb, sh, st) = if self.rank == 3 {
            (t * n * hd, hd, n * hd)
        } else {
            (n * t * hd, t * hd, hd)
        };
        Self {
            offset: 0,
            sb,
            sh,
            st,
            ..self
        }
    }

    fn dims(&self) -> (usize, usize, usize, usize) {
        (self.b, self.n, self.t, self.hd)
    }

    /// Index of element (b, h, 0, 0).
    fn base(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.sb + h * self.sh
    }

    /// Errors unless every element lies inside a buffer of `len`: the
    /// gemms below read through raw pointers.
    fn check(&self, len: usize) -> Result<()> {
        if self.b * self.n * self.t * self.hd == 0 {
            return Ok(());
        }
        let last = self.base(self.b - 1, self.n - 1) + (self.t - 1) * self.st + self.hd - 1;
        if last >= len {
            candle_core::bail!("attention: view {self:?} overruns a buffer of {len}");
        }
        Ok(())
    }
}

/// A raw pointer shared by tasks that touch disjoint elements.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: each (batch, kv head) task writes only the elements of its own
// batch row and heads (query heads of its group, its kv head); no two
// tasks write the same element, and nothing reads what another writes.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// A method, so closures capture the `Send` wrapper, not its raw field.
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers pass indices checked by `View::check`.
        unsafe { self.0.add(i) }
    }
}

/// `dst (m×n) = alpha·dst + beta·lhs (m×k)·rhs (k×n)`, single-threaded,
/// each operand given by its pointer, column stride and row stride.
///
/// # Safety
/// Every element addressed through the strides must be inside its buffer,
/// and `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm1(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.1 as isize,
        dst.2 as isize,
        accumulate,
        lhs.0,
        lhs.1 as isize,
        lhs.2 as isize,
        rhs.0,
        rhs.1 as isize,
        rhs.2 as isize,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

fn f32_data(storage: &CpuStorage) -> Result<&[f32]> {
    match storage {
        CpuStorage::F32(d) => Ok(d),
        _ => candle_core::bail!("attention takes f32"),
    }
}

impl AttentionOp {
    fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// The three operand views, checked against each other and their buffers.
    fn views(
        &self,
        (q, ql): (&[f32], &Layout),
        (k, kl): (&[f32], &Layout),
        (v, vl): (&[f32], &Layout),
    ) -> Result<(View, View, View)> {
        let qv = View::of(ql, self.num_heads)?;
        let kv = View::of(kl, self.num_kv_heads)?;
        let vv = View::of(vl, self.num_kv_heads)?;
        if qv.b != kv.b || kv.dims() != vv.dims() || qv.hd != kv.hd {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        qv.check(q.len())?;
        kv.check(k.len())?;
        vv.check(v.len())?;
        Ok((qv, kv, vv))
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-core"
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
        let (q, k, v) = (f32_data(s1)?, f32_data(s2)?, f32_data(s3)?);
        let (qv, kv, vv) = self.views((q, l1), (k, l2), (v, l3))?;
        let (b, h, t, hd) = qv.dims();
        let s = kv.t;
        let group = self.group();
        let mask_guard = self.mask.as_ref().map(|m| m.storage_and_layout());
        let mask = match &mask_guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(CpuStorage::F32(d)) => Some((d.as_slice(), *layout)),
                _ => candle_core::bail!("attention: the mask must be f32 on the CPU"),
            },
            None => None,
        };
        // (B, T, H·hd), written by head columns
        let out_view = View {
            rank: 3,
            b,
            n: h,
            t,
            hd,
            offset: 0,
            sb: t * h * hd,
            sh: hd,
            st: h * hd,
        };
        let mut out = vec![0f32; b * t * h * hd];
        let out_ptr = Ptr(out.as_mut_ptr());
        let mut probs = vec![0f32; b * h * t * s];
        if t * s > 0 {
            // probs (B, Hkv, G, T, S): one contiguous block per task
            probs
                .par_chunks_mut(group * t * s)
                .enumerate()
                .for_each(|(task, p)| {
                    let (bi, hk) = (task / self.num_kv_heads, task % self.num_kv_heads);
                    let (kp, vp) = (&k[kv.base(bi, hk)..], &v[vv.base(bi, hk)..]);
                    for (g, scores) in p.chunks_exact_mut(t * s).enumerate() {
                        let hi = hk * group + g;
                        // SAFETY: q and k are read at rows 0..t (0..s) with
                        // their row strides and columns 0..hd from the bases
                        // of their (batch, head) blocks, checked by
                        // `View::check`; kᵀ is k with swapped strides.
                        unsafe {
                            // scores (t, s) = scale · q (t, hd) · kᵀ (hd, s)
                            gemm1(
                                (t, s, hd),
                                (scores.as_mut_ptr(), 1, s),
                                false,
                                (q[qv.base(bi, hi)..].as_ptr(), 1, qv.st),
                                (kp.as_ptr(), kv.st, 1),
                                self.scale,
                            );
                        }
                        for (ti, row) in scores.chunks_exact_mut(s).enumerate() {
                            if let Some((m, ml)) = mask {
                                let st = ml.stride();
                                let at = ml.start_offset() + bi * st[0] + hi * st[1] + ti * st[2];
                                row.iter_mut()
                                    .zip(&m[at..at + s])
                                    .for_each(|(x, a)| *x += a);
                            }
                            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let inv = 1.0 / super::simd_act::exp_shifted_sum(row, max);
                            row.iter_mut().for_each(|x| *x *= inv);
                        }
                        // SAFETY: the output block of (bi, hi) is t rows of
                        // hd columns at row stride H·hd inside `out`, disjoint
                        // from every other task's; v as q above.
                        unsafe {
                            // out (t, hd) = probs (t, s) · v (s, hd)
                            gemm1(
                                (t, hd, s),
                                (out_ptr.at(out_view.base(bi, hi)), 1, out_view.st),
                                false,
                                (scores.as_ptr(), 1, s),
                                (vp.as_ptr(), 1, vv.st),
                                1.0,
                            );
                        }
                    }
                });
        }
        // bwd runs at most after this forward; a second forward of the
        // same op object never happens (candle applies an op once).
        let _ = self.probs.set(probs);
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(probs) = self.probs.get() else {
            candle_core::bail!("attention: backward before forward");
        };
        let grad = grad.contiguous()?;
        let (need_q, need_k, need_v) = (q.track_op(), k.track_op(), v.track_op());
        let (dq, dk, dv) = {
            let guards = [q, k, v, res, &grad].map(|t| t.storage_and_layout());
            let mut data = Vec::with_capacity(5);
            for (storage, _) in &guards {
                match &**storage {
                    Storage::Cpu(CpuStorage::F32(d)) => data.push(d.as_slice()),
                    _ => candle_core::bail!("attention takes f32 CPU tensors"),
                }
            }
            let (qd, kd, vd, od, gd) = (data[0], data[1], data[2], data[3], data[4]);
            let views = self.views((qd, guards[0].1), (kd, guards[1].1), (vd, guards[2].1))?;
            let (ol, gl) = (guards[3].1, guards[4].1);
            let out_len = views.0.b * views.0.t * views.0.n * views.0.hd;
            if ol.shape() != gl.shape()
                || ol.shape().elem_count() != out_len
                || !ol.is_contiguous()
                || !gl.is_contiguous()
            {
                candle_core::bail!("attention: gradient {:?} vs output {:?}", gl.shape(), ol);
            }
            let o = &od[ol.start_offset()..ol.start_offset() + out_len];
            let g = &gd[gl.start_offset()..gl.start_offset() + out_len];
            self.backward((qd, kd, vd), views, (o, g), probs, (need_q, need_k, need_v))
        };
        let wrap = |d: Option<Vec<f32>>, like: &Tensor| -> Result<Option<Tensor>> {
            d.map(|d| Tensor::from_vec(d, like.shape(), like.device()))
                .transpose()
        };
        Ok((wrap(dq, q)?, wrap(dk, k)?, wrap(dv, v)?))
    }
}

/// Gradients of q, k, v (each in the contiguous layout of its operand's
/// shape), only those asked for.
type Grads = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

impl AttentionOp {
    fn backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (qv, kv, vv): (View, View, View),
        (o, g): (&[f32], &[f32]),
        probs: &[f32],
        (need_q, need_k, need_v): (bool, bool, bool),
    ) -> Grads {
        let (b, h, t, hd) = qv.dims();
        let s = kv.t;
        let group = self.group();
        let scale = self.scale;
        // the layouts of the gradients: contiguous in each operand's shape
        let (dqv, dkv, dvv) = (qv.contiguous(), kv.contiguous(), vv.contiguous());
        let mut dq = vec![0f32; if need_q { b * h * t * hd } else { 0 }];
        let mut dk = vec![0f32; if need_k { b * kv.n * s * hd } else { 0 }];
        let mut dv = vec![0f32; if need_v { b * vv.n * s * hd } else { 0 }];
        let (dq_ptr, dk_ptr, dv_ptr) = (
            Ptr(dq.as_mut_ptr()),
            Ptr(dk.as_mut_ptr()),
            Ptr(dv.as_mut_ptr()),
        );
        // dO and O are (B, T, H·hd) contiguous
        let ost = h * hd;
        if t * s * hd > 0 {
            probs
                .par_chunks(group * t * s)
                .enumerate()
                .for_each(|(task, p)| {
                    let (bi, hk) = (task / self.num_kv_heads, task % self.num_kv_heads);
                    let mut ds = vec![0f32; t * s];
                    let mut rowdot = vec![0f32; t];
                    for (gi, ph) in p.chunks_exact(t * s).enumerate() {
                        let hi = hk * group + gi;
                        let obase = bi * t * ost + hi * hd;
                        // SAFETY (all gemms below): operands are read at the
                        // rows and columns of their (batch, head) blocks,
                        // checked by `View::check` (the gradient views are
                        // contiguous layouts of the same shapes); dq rows of
                        // head hi and dk, dv rows of kv head hk of batch bi
                        // belong to this task alone.
                        if need_v {
                            // dv (s, hd) (+)= pᵀ (s, t) · dO (t, hd)
                            unsafe {
                                gemm1(
                                    (s, hd, t),
                                    (dv_ptr.at(dvv.base(bi, hk)), 1, dvv.st),
                                    gi > 0,
                                    (ph.as_ptr(), s, 1),
                                    (g[obase..].as_ptr(), 1, ost),
                                    1.0,
                                );
                            }
                        }
                        if !(need_q || need_k) {
                            continue;
                        }
                        // dP (t, s) = dO (t, hd) · vᵀ (hd, s)
                        unsafe {
                            gemm1(
                                (t, s, hd),
                                (ds.as_mut_ptr(), 1, s),
                                false,
                                (g[obase..].as_ptr(), 1, ost),
                                (v[vv.base(bi, hk)..].as_ptr(), vv.st, 1),
                                1.0,
                            );
                        }
                        // rowdot_t = Σ_d dO ⊙ O = Σ_s P ⊙ dP (the softmax
                        // backward's row term), from the saved output
                        for (ti, r) in rowdot.iter_mut().enumerate() {
                            let at = obase + ti * ost;
                            *r = g[at..at + hd]
                                .iter()
                                .zip(&o[at..at + hd])
                                .map(|(a, b)| a * b)
                                .sum();
                        }
                        // dS = P ⊙ (dP − rowdot), in place
                        for ((drow, prow), r) in
                            ds.chunks_exact_mut(s).zip(ph.chunks_exact(s)).zip(&rowdot)
                        {
                            drow.iter_mut()
                                .zip(prow)
                                .for_each(|(d, &pv)| *d = pv * (*d - r));
                        }
                        if need_q {
                            // dq (t, hd) = scale · dS (t, s) · k (s, hd)
                            unsafe {
                                gemm1(
                                    (t, hd, s),
                                    (dq_ptr.at(dqv.base(bi, hi)), 1, dqv.st),
                                    false,
                                    (ds.as_ptr(), 1, s),
                                    (k[kv.base(bi, hk)..].as_ptr(), 1, kv.st),
                                    scale,
                                );
                            }
                        }
                        if need_k {
                            // dk (s, hd) (+)= scale · dSᵀ (s, t) · q (t, hd)
                            unsafe {
                                gemm1(
                                    (s, hd, t),
                                    (dk_ptr.at(dkv.base(bi, hk)), 1, dkv.st),
                                    gi > 0,
                                    (ds.as_ptr(), s, 1),
                                    (q[qv.base(bi, hi)..].as_ptr(), 1, qv.st),
                                    scale,
                                );
                            }
                        }
                    }
                });
        }
        (
            need_q.then_some(dq),
            need_k.then_some(dk),
            need_v.then_some(dv),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// candle's composed ops: repeat kv heads, q·kᵀ·scale + mask, softmax, ·v.
    ///
    /// # Shapes
    /// `q`: (B, H, T, hd); `k`, `v`: (B, Hkv, S, hd); returns (B, T, H·hd).
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let (b, h, t, hd) = q.dims4().unwrap();
        let (_, hkv, s, _) = k.dims4().unwrap();
        // (B, Hkv, S, hd) -> (B, Hkv, G, S, hd) -> (B, H, S, hd)
        let repeat = |x: &Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, hkv, h / hkv, s, hd))
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((b, h, s, hd))
                .unwrap()
        };
        let (k, v) = (repeat(k), repeat(v));
        let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        if let Some(m) = mask {
            scores = scores.broadcast_add(m).unwrap();
        }
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        // (B, H, T, hd) -> (B, T, H, hd) -> (B, T, H·hd)
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h * hd))
            .unwrap()
    }

    /// (B, T, n·hd) -> (B, T, n, hd) -> (B, n, T, hd)
    fn heads(x: &Tensor, n: usize) -> Tensor {
        let (b, t, w) = x.dims3().unwrap();
        x.reshape((b, t, n, w / n))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    fn var(shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Values and the gradients of `vars` equal the composed ops' within
    /// 1e-5 of the gradient's scale.
    fn assert_matches(fused: &Tensor, composed: &Tensor, vars: &[&Var]) {
        assert_eq!(fused.dims(), composed.dims());
        let d = cpu_grad::max_abs_diff(fused, composed).unwrap();
        assert!(d < 1e-5, "values differ by {d}");
        let probe = Tensor::randn(0f32, 1.0, fused.shape(), &Device::Cpu).unwrap();
        let gf = cpu_grad::grads_of_weighted_sum(fused, &probe).unwrap();
        let gc = cpu_grad::grads_of_weighted_sum(composed, &probe).unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (a, c) = (gf.get(v).unwrap(), gc.get(v).unwrap());
            let scale = c
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0);
            let d = cpu_grad::max_abs_diff(a, c).unwrap();
            assert!(
                d < 1e-5 * scale,
                "gradient {i} differs by {d} (scale {scale})"
            );
        }
    }

    /// Self-attention as the vision tower runs it: q, k, v straight from
    /// their projections (B, L, D), no mask; q a strided view.
    #[test]
    fn unmasked_token_major_matches_composed() {
        let (b, l, h, hd) = (2, 7, 3, 4);
        let qq = var(&[b, l, 2 * h * hd]);
        let (k, v) = (var(&[b, l, h * hd]), var(&[b, l, h * hd]));
        // (B, L, 2D) -> (B, L, D), row stride 2D
        let q = qq.narrow(2, h * hd, h * hd).unwrap();
        let scale = (hd as f64).powf(-0.5);
        assert!(applies(&q, &k, &v, None));
        let fused = attention(&q, &k, &v, None, h, h, scale).unwrap();
        let composed = composed(&heads(&q, h), &heads(&k, h), &heads(&v, h), None, scale);
        assert_matches(&fused, &composed, &[&qq, &k, &v]);
    }

    /// The decoder's case: grouped-query heads, q and k per head (after
    /// rope), v from its projection, a padding + causal mask with a fully
    /// masked (padding) query row.
    #[test]
    fn grouped_query_masked_matches_composed() {
        let (b, t, h, hkv, hd) = (2, 6, 4, 2, 8);
        let (q, k, v) = (
            var(&[b, h, t, hd]),
            var(&[b, hkv, t, hd]),
            var(&[b, t, hkv * hd]),
        );
        let valid = vec![vec![true; t], [vec![false; 2], vec![true; t - 2]].concat()];
        let mask = super::super::causal_attention::build_mask(&valid, 0, t, None, &Device::Cpu)
            .unwrap()
            // (B, 1, 1, T, S) -> (B, 1, T, S)
            .squeeze(1)
            .unwrap();
        let scale = (hd as f64).powf(-0.5);
        assert!(applies(&q, &k, &v, Some(&mask)));
        let fused = attention(&q, &k, &v, Some(&mask), h, hkv, scale).unwrap();
        let composed = composed(&q, &k, &heads(&v, hkv), Some(&mask), scale);
        assert_matches(&fused, &composed, &[&q, &k, &v]);
    }

    /// A causal -inf mask broadcast over batch and heads (CLIP's text
    /// tower), and a frozen k: no gradient for it.
    #[test]
    fn causal_mask_and_frozen_operand() {
        let (b, l, h, hd) = (3, 5, 2, 4);
        let (q, v) = (var(&[b, l, h * hd]), var(&[b, l, h * hd]));
        let k = Tensor::randn(0f32, 1.0, (b, l, h * hd), &Device::Cpu).unwrap();
        let mask = super::super::attention::causal_mask(l, &Device::Cpu).unwrap();
        let scale = 0.3;
        assert!(applies(&q, &k, &v, Some(&mask)));
        let fused = attention(&q, &k, &v, Some(&mask), h, h, scale).unwrap();
        let composed = composed(
            &heads(&q, h),
            &heads(&k, h),
            &heads(&v, h),
            Some(&mask),
            scale,
        );
        assert_matches(&fused, &composed, &[&q, &v]);
        let probe = Tensor::ones(fused.shape(), candle_core::DType::F32, &Device::Cpu).unwrap();
        let g = cpu_grad::grads_of_weighted_sum(&fused, &probe).unwrap();
        assert!(g.get(&k).is_none());
    }

    #[test]
    fn mismatched_heads_are_an_error() {
        // hd 3 for q, 4 for k and v
        let q = var(&[1, 3, 12]);
        let k = var(&[1, 3, 8]);
        let e = attention(&q, &k, &k, None, 4, 2, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
