//! CPU matmul of f32 activations by a GGUF block-quantized weight, kept in
//! its block storage, for the block types where candle 0.11.1's own CPU path
//! is slow: Q4_1 (candle's `vec_dot` is scalar; kernel in
//! `nn::q4_1_matmul`) and Q8_0 on the shapes candle does not repack
//! (`nn::q8_0_matmul`). This file is the part the kernels share: the work
//! split, candle's worker pool, the runtime SIMD choice and the `CustomOp1`.
//!
//! The K-quants (Q4_K, Q5_K, Q6_K), and Q8_0 on shapes candle repacks, stay
//! on candle's kernels: in candle 0.11.1 they are SIMD already, chosen at run
//! time (`has_avx2_fma` and `repack_x86::level`, not compile-time target
//! features, so glimpse's portable build runs them). Q4_K always, and Q6_K
//! and Q8_0 for some shapes, go to repacked x86 tiles (AVX2, AVX-VNNI,
//! AVX512-VNNI, AMX for Q4_K at m >= 32, each level rounding differently);
//! Q5_K and Q6_K decode use AVX2 `vec_dot`s. Matching those bit for bit
//! would mean one copy per CPU level of kernels that are fast already.
//!
//! Numerics are candle's to the bit, per block type: each kernel quantizes
//! the activations with candle's own `from_float` and does candle's float
//! operations in candle's order (`QMatMul` on the same weight gives the same
//! f32s). Why bit-exact: 8-bit activation rounding makes a quantized decoder
//! chaotic. A 1e-6 relative change of the input embeddings moves
//! SmolLM2-135M's logits by ~1 (measured), so a kernel that only reorders
//! float sums changes the greedy text a few tokens in.
//!
//! Work split: lhs rows are taken 4 at a time, output columns (weight rows)
//! 8 at a time ([`BlockKernel::tile`]). One work item is a chunk of 16
//! columns against every lhs row, so the chunk's weight blocks (15 KiB of
//! Q4_1 at k = 1536) stay in L1 while all rows pass over them: the weight
//! matrix is read from memory once per call, not once per row. Work items
//! run on candle's CPU worker pool, the one its own elementwise and
//! quantized ops use: with rayon's pool instead, decode was ~25% slower on
//! two cores (the two pools' threads competed for them).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use half::f16;

use crate::nn::q4_1_matmul::Q4_1;
use crate::nn::q8_0_matmul::Q8_0;

/// lhs rows per kernel call.
pub(crate) const ROW_TILE: usize = 4;
/// Output columns per kernel call (one per f32 lane of an AVX2 register in
/// the Q4_1 kernel).
pub(crate) const COL_GROUP: usize = 8;
/// Output columns per work item.
const COL_CHUNK: usize = 16;

/// One block type's kernels.
pub(crate) trait BlockKernel {
    /// Values per weight block.
    const BLOCK: usize;
    /// Bytes per weight block.
    const BLOCK_BYTES: usize;
    /// The activations quantized as candle quantizes them for this type.
    type Lhs: Sync;

    /// Whether the SIMD kernel runs here: exactly when candle's own SIMD
    /// `vec_dot` for the type would, where candle has one (its scalar and
    /// SIMD kernels round differently).
    fn simd_available() -> bool;

    /// Quantizes the rows of `lhs` (m, k), k a multiple of [`Self::BLOCK`].
    fn quantize(lhs: &[f32], m: usize, k: usize) -> Self::Lhs;

    /// `out[i][j]` = lhs row `r0 + i` (`i < rows ≤ 4`) times weight row
    /// `w[j]` (`kb` blocks each); `simd` only when [`Self::simd_available`].
    #[allow(clippy::too_many_arguments)]
    fn tile(
        simd: bool,
        lhs: &Self::Lhs,
        r0: usize,
        rows: usize,
        w: &[&[u8]; COL_GROUP],
        kb: usize,
        out: &mut [[f32; COL_GROUP]; ROW_TILE],
    );
}

/// A block-quantized weight (out, in) of a type with a glimpse kernel, kept
/// in its GGUF block storage (borrowed from the `QTensor` at each call, never
/// copied), applied as `xs @ wᵀ`.
#[derive(Debug, Clone)]
pub struct BlockMatmul {
    weight: Arc<QTensor>,
    out_dim: usize,
    in_dim: usize,
}

impl BlockMatmul {
    /// Whether glimpse's kernel takes this weight: a CPU Q4_1 weight, or a
    /// CPU Q8_0 weight of a shape candle has no repacked kernel for here
    /// (where it has one, that one is fast already and rounds differently).
    pub fn supports(weight: &QTensor) -> bool {
        if !weight.device().is_cpu() {
            return false;
        }
        let Ok((n, k)) = weight.shape().dims2() else {
            return false;
        };
        match weight.dtype() {
            GgmlDType::Q4_1 => true,
            GgmlDType::Q8_0 => !candle_repacks_q8_0(n, k),
            _ => false,
        }
    }

    /// `weight`: (out, in) on the CPU, of a type [`Self::supports`] names,
    /// `in` a multiple of the block size.
    pub fn new(weight: Arc<QTensor>) -> Result<Self> {
        let dtype = weight.dtype();
        let block_bytes = match dtype {
            GgmlDType::Q4_1 => Q4_1::BLOCK_BYTES,
            GgmlDType::Q8_0 => Q8_0::BLOCK_BYTES,
            _ => candle_core::bail!("block matmul: no glimpse kernel for {dtype:?}"),
        };
        if !weight.device().is_cpu() {
            candle_core::bail!("block matmul: weight must be on the CPU");
        }
        let (out_dim, in_dim) = weight.shape().dims2()?;
        let block = dtype.block_size();
        if !in_dim.is_multiple_of(block) {
            candle_core::bail!(
                "block matmul: {dtype:?} in dim {in_dim} is not a multiple of {block}"
            );
        }
        let bytes = weight.data()?.len();
        if bytes != out_dim * (in_dim / block) * block_bytes {
            candle_core::bail!(
                "block matmul: {bytes} bytes for a ({out_dim}, {in_dim}) {dtype:?} weight"
            );
        }
        Ok(Self {
            weight,
            out_dim,
            in_dim,
        })
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// The block tensor this matmul reads.
    pub fn tensor(&self) -> &Arc<QTensor> {
        &self.weight
    }
}

impl CustomOp1 for BlockMatmul {
    fn name(&self) -> &'static str {
        "block-matmul"
    }

    /// # Shapes
    /// input `(..., in)` f32 -> `(..., out)` f32
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("block matmul: input must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("block matmul: input must be contiguous");
        };
        let dims = layout.shape().dims();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("block matmul: input is a scalar");
        };
        if k != self.in_dim {
            candle_core::bail!(
                "block matmul: input last dim {k}, weight in dim {}",
                self.in_dim
            );
        }
        let m: usize = lead.iter().product();
        let n = self.out_dim;
        let w = self.weight.data()?;
        // A CPU QTensor lends its bytes; an owned copy would be a silent
        // per-call copy of the whole weight.
        debug_assert!(matches!(w, Cow::Borrowed(_)));
        let mut dst = vec![0f32; m * n];
        let lhs = &data[start..end];
        match self.weight.dtype() {
            GgmlDType::Q4_1 => matmul::<Q4_1>(lhs, m, k, &w, n, &mut dst, Q4_1::simd_available()),
            GgmlDType::Q8_0 => matmul::<Q8_0>(lhs, m, k, &w, n, &mut dst, Q8_0::simd_available()),
            other => candle_core::bail!("block matmul: no glimpse kernel for {other:?}"),
        }
        let mut out_dims = lead.to_vec();
        out_dims.push(n);
        Ok((CpuStorage::F32(dst), Shape::from(out_dims)))
    }
}

/// Whether candle 0.11.1's `QMatMul` takes its x86 repacked path for an
/// (n, k) Q8_0 weight (`repack_x86::select`, private there): AVX512-VNNI or
/// AVX-VNNI detected (and not disabled by its `MISTRALRS_FORCE_*` switches),
/// `n` a multiple of 16 and `k` of 256.
fn candle_repacks_q8_0(n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if k == 0 || !n.is_multiple_of(16) || !k.is_multiple_of(256) {
            return false;
        }
        let forced = |v: &str| std::env::var(v).as_deref() == Ok("1");
        let (force_avx2, force_vnni) = (
            forced("MISTRALRS_FORCE_AVX2"),
            forced("MISTRALRS_FORCE_AVXVNNI"),
        );
        if !force_avx2
            && !force_vnni
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni")
        {
            return true;
        }
        !force_avx2
            && (force_vnni || is_x86_feature_detected!("avxvnni"))
            && is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (n, k);
        false
    }
}

#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// A raw pointer that work items on other threads write through, each to its
/// own disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Runs `f` over `0..n_items` split in ranges across candle's CPU workers.
fn parallel_for<F: Fn(std::ops::Range<usize>) + Sync>(n_items: usize, f: F) {
    candle_core::utils::barrier_pool().execute_chunked(n_items, f);
}

/// Runs `quantize_rows` over the `m` rows of an (m, k) input, across the
/// workers when the input is large enough to pay for it.
pub(crate) fn for_rows<F: Fn(std::ops::Range<usize>) + Sync>(m: usize, k: usize, quantize_rows: F) {
    if m * k >= 1 << 14 {
        parallel_for(m, quantize_rows);
    } else {
        quantize_rows(0..m);
    }
}

/// `dst (m, n) = lhs (m, k) @ wᵀ`, `w` the (n, k) blocks of `K`, row-major.
/// Panics when a slice length does not match the shapes.
pub(crate) fn matmul<K: BlockKernel>(
    lhs: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    dst: &mut [f32],
    simd: bool,
) {
    assert!(k.is_multiple_of(K::BLOCK), "block matmul: k = {k}");
    assert_eq!(lhs.len(), m * k, "block matmul: lhs length");
    let kb = k / K::BLOCK;
    assert_eq!(
        w.len(),
        n * kb * K::BLOCK_BYTES,
        "block matmul: weight length"
    );
    assert_eq!(dst.len(), m * n, "block matmul: dst length");
    if m == 0 || n == 0 || k == 0 {
        dst.fill(0.0);
        return;
    }
    let q = K::quantize(lhs, m, k);
    let w_row = kb * K::BLOCK_BYTES;
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    let chunks = n.div_ceil(COL_CHUNK);
    let run = |range: std::ops::Range<usize>| {
        for chunk in range {
            let c_end = n.min((chunk + 1) * COL_CHUNK);
            for r0 in (0..m).step_by(ROW_TILE) {
                let rows = ROW_TILE.min(m - r0);
                for c0 in (chunk * COL_CHUNK..c_end).step_by(COL_GROUP) {
                    let cols = COL_GROUP.min(c_end - c0);
                    // Past the last column, repeat it; those lanes are dropped.
                    let wc: [&[u8]; COL_GROUP] = std::array::from_fn(|j| {
                        let c = c0 + j.min(cols - 1);
                        &w[c * w_row..(c + 1) * w_row]
                    });
                    let mut out = [[0f32; COL_GROUP]; ROW_TILE];
                    K::tile(simd, &q, r0, rows, &wc, kb, &mut out);
                    for (i, row) in out.iter().enumerate().take(rows) {
                        for (j, &v) in row.iter().enumerate().take(cols) {
                            // SAFETY: (r0 + i, c0 + j) lies in this chunk's
                            // columns, written by this work item only.
                            unsafe { *dst_ptr.get().add((r0 + i) * n + c0 + j) = v };
                        }
                    }
                }
            }
        }
    };
    if chunks > 1 {
        parallel_for(chunks, run);
    } else {
        run(0..chunks);
    }
}

/// What the kernels' tests share: running a kernel and candle's `QMatMul`
/// on one weight and comparing the f32s bit for bit.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Module, Tensor};

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
        diff / scale
    }

    /// Asserts `got` equals `want` to the bit, reporting the relative error
    /// if not.
    pub(crate) fn assert_bit_equal(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let differ = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert!(
            differ == 0,
            "{what}: {differ} of {} outputs differ, max rel err {}",
            got.len(),
            rel_err(got, want)
        );
    }

    /// Kernel `K` on `w` (n, k) and `x` (m, k), SIMD or scalar.
    pub(crate) fn ours<K: BlockKernel>(
        w: &Arc<QTensor>,
        x: &Tensor,
        simd: bool,
    ) -> anyhow::Result<Vec<f32>> {
        let (n, k) = w.shape().dims2()?;
        let m = x.dim(0)?;
        let mut dst = vec![0f32; m * n];
        matmul::<K>(
            &x.flatten_all()?.to_vec1()?,
            m,
            k,
            &w.data()?,
            n,
            &mut dst,
            simd,
        );
        Ok(dst)
    }

    pub(crate) fn candle(w: &Arc<QTensor>, x: &Tensor) -> anyhow::Result<Vec<f32>> {
        Ok(QMatMul::from_arc(w.clone())?
            .forward(x)?
            .flatten_all()?
            .to_vec1()?)
    }
}
