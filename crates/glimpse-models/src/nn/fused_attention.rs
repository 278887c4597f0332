//! Unmasked scaled-dot-product attention as one CPU pass per (batch, head):
//! `softmax(q kᵀ) v` read straight from the fused qkv projection's output,
//! with the scores kept in a per-task buffer.
//!
//! Why: composed from candle ops, attention runs a separately threaded small
//! gemm for every (batch, head), allocates the (B, H, L, L) scores twice and
//! needs a transpose to merge heads. Here the (batch, head) pairs are the
//! parallel axis, each gemm is single-threaded and reads q, k, v in place
//! through strides, the softmax is done in place and the output is written
//! straight into (B, L, H·hd). This is what
//! PyTorch's fused SDPA CPU kernel does too. ViT-B/16 at batch 8 on two
//! cores: the attention core (scores, softmax, weighted sum, head merge)
//! went from ~19 ms to ~17 ms per layer; the rest of the layer is gemm.
//!
//! The same pass runs over runs of rows of one packed (N, 3, H, hd) input
//! ([`attention_segments`]): Qwen2-VL's tower, where each image or frame
//! attends only to itself, as (segment, head) tasks.
//!
//! Inference only (no backward): callers use it when nothing tracks gradients.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::simd_act;

/// The rows that attend among themselves: (first row, length) runs of the
/// packed (N, 3, H, hd) input, in any order, each written to the same rows
/// of the (N, H·hd) output.
struct FusedAttention {
    segments: Vec<(usize, usize)>,
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each (batch, head) task writes only its own head's columns of
// its own batch rows; no two tasks touch the same element.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the `Send` wrapper, not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused attention takes f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused attention takes a contiguous qkv tensor");
        };
        let qkv = &data[start..end];
        // (B, L, 3, H, hd) is B segments of L rows of (N = B·L, 3, H, hd)
        let (n, three, h, d) = match *layout.shape().dims() {
            [b, l, three, h, d] => (b * l, three, h, d),
            [n, three, h, d] => (n, three, h, d),
            _ => candle_core::bail!(
                "fused attention takes (B, L, 3, H, hd) or (N, 3, H, hd), got {:?}",
                layout.shape()
            ),
        };
        if three != 3 {
            candle_core::bail!(
                "fused attention takes a q, k, v axis of 3, got {:?}",
                layout.shape()
            );
        }
        if let Some(&(s0, len)) = self.segments.iter().find(|&&(s0, len)| s0 + len > n) {
            candle_core::bail!("fused attention: rows {s0}..{} of {n}", s0 + len);
        }
        // q, k and v rows of one token are 3·H·hd apart; a head's columns
        // start hi·hd into its third.
        let row = (3 * h * d) as isize;
        let mut out = vec![0f32; n * h * d];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let segments = &self.segments;
        (0..segments.len() * h).into_par_iter().for_each(|sh| {
            let ((s0, l), hi) = (segments[sh / h], sh % h);
            let base = s0 * 3 * h * d + hi * d;
            let (q, k, v) = (&qkv[base..], &qkv[base + h * d..], &qkv[base + 2 * h * d..]);
            let mut scores = vec![0f32; l * l];
            // SAFETY: q, k, v are read at rows 0..l with row stride 3·H·hd and
            // columns 0..hd from their base, which stays inside `qkv` (the
            // last row of v ends at base + 2·H·hd + (l-1)·3·H·hd + hd ≤ len
            // since s0 + l ≤ N); kᵀ is read through swapped strides.
            unsafe {
                // scores (l, l) = q (l, hd) · kᵀ (hd, l)
                gemm(
                    l,
                    l,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    l as isize,
                    false,
                    q.as_ptr(),
                    1,
                    row,
                    k.as_ptr(),
                    row,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for r in scores.chunks_mut(l) {
                simd_act::softmax_in_place(r);
            }
            // SAFETY: the destination block starts at row s0, column hi·hd
            // of the (N, H·hd) output and spans l rows of hd columns with
            // row stride H·hd: inside `out`, disjoint from other tasks as
            // long as segments do not overlap (`attention_segments` checks;
            // `attention`'s are disjoint by construction).
            unsafe {
                let dst = out_ptr.get().add(s0 * h * d + hi * d);
                // out (l, hd) = scores (l, l) · v (l, hd)
                gemm(
                    l,
                    d,
                    l,
                    dst,
                    1,
                    (h * d) as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    l as isize,
                    v.as_ptr(),
                    1,
                    row,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
        let shape = match *layout.shape().dims() {
            [b, l, ..] if layout.shape().rank() == 5 => Shape::from((b, l, h * d)),
            _ => Shape::from((n, h * d)),
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Whether [`attention`] can take this input.
pub fn applies(qkv: &Tensor) -> bool {
    qkv.device().is_cpu() && qkv.dtype() == candle_core::DType::F32 && !qkv.track_op()
}

/// Self-attention straight from the fused projection's output, read in
/// place (no split into per-head tensors).
///
/// # Shapes
/// `qkv`: (B, L, 3, H, hd) contiguous, q already scaled; returns (B, L, H·hd).
pub fn attention(qkv: &Tensor) -> Result<Tensor> {
    let (b, l) = (qkv.dim(0)?, qkv.dim(1)?);
    qkv.apply_op1_no_bwd(&FusedAttention {
        segments: (0..b).map(|bi| (bi * l, l)).collect(),
    })
}

/// Self-attention within runs of rows (Qwen2-VL's tower: each image or
/// frame attends only to itself; transformers' `cu_seqlens`), read in
/// place from the packed projection.
///
/// # Shapes
/// `qkv`: (N, 3, H, hd) contiguous, q already scaled; `segments`: (first
/// row, length), disjoint, covering the rows to compute (rows outside
/// every segment come out 0); returns (N, H·hd).
pub fn attention_segments(qkv: &Tensor, segments: &[(usize, usize)]) -> Result<Tensor> {
    let mut sorted = segments.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        candle_core::bail!("fused attention: overlapping segments {segments:?}");
    }
    qkv.apply_op1_no_bwd(&FusedAttention { segments: sorted })
}
