//! CPU matmul of f32 activations by a GGUF Q4_1 weight, in place of
//! candle 0.11.1's scalar `BlockQ4_1::vec_dot` (SmolLM2-135M Q4_1 decoded at
//! 13 tok/s on two AVX2 cores with it).
//!
//! Numerics are candle's to the bit (and so ggml's `ggml_vec_dot_q4_1_q8_1`
//! up to float summation order): each activation row is quantized to Q8_1
//! blocks by candle's own `BlockQ8_1::from_float`, then, block by block,
//!   `y[r][c] += isum·d4·d8 + m4·s8`,  `isum = Σ_j q4_j·q8_j` (exact)
//! with candle's operations in candle's order and no fused multiply-adds.
//! Why bit-exact: Q8_1 rounding makes a quantized decoder chaotic. A 1e-6
//! relative change of the input embeddings moves SmolLM2-135M's logits by
//! ~1 (measured), so a kernel that only reorders float sums changes the
//! greedy text a few tokens in; this one keeps it token for token.
//!
//! Block layouts (candle `k_quants.rs`, both `#[repr(C)]`, little-endian):
//! - Q4_1, 20 bytes: `d: f16, m: f16, qs: [u8; 16]`; element `j` is
//!   `qs[j] & 0xF`, element `j + 16` is `qs[j] >> 4`, value `d·q + m`.
//! - Q8_1, 36 bytes: `d: f16, s: f16` (= `d·Σq`), `qs: [i8; 32]`.
//!
//! Work split, worker pool and the `CustomOp1`: `nn::block_matmul`, shared
//! with the other block kernels.
//!
//! The AVX2 kernel (runtime-detected AVX2+FMA+F16C), per block: the 32
//! nibbles of each of the 8 columns unpacked into one 256-bit register, their
//! `d4`, `m4` gathered into two 8-lane f32 vectors; then per lhs row
//! `maddubs` (u4 × i8 → i16 pair sums) per column, a `hadd` tree that
//! leaves each column's two half-block sums in lane j of the two 128-bit
//! halves (each ≤ 16·15·128 = 30720, inside i16), widened and added to the
//! exact i32 block sums of the 8 columns, then the float update in 8 lanes.

use candle_core::quantized::k_quants::{BlockQ8_1, GgmlType};

use crate::nn::block_matmul::{f16_at, for_rows, BlockKernel, SendPtr, COL_GROUP, ROW_TILE};

/// Values per block (Q4_1 and Q8_1).
const QK: usize = 32;
/// Bytes of one Q4_1 block.
const Q4_1_BYTES: usize = 20;
/// Bytes of one Q8_1 block.
const Q8_1_BYTES: usize = 36;

const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == Q8_1_BYTES);

/// The Q4_1 kernels, driven by `nn::block_matmul`.
pub(crate) struct Q4_1;

impl BlockKernel for Q4_1 {
    const BLOCK: usize = QK;
    const BLOCK_BYTES: usize = Q4_1_BYTES;
    type Lhs = Q8Lhs;

    /// candle's Q4_1 `vec_dot` is scalar everywhere and the AVX2 kernel
    /// matches it to the bit, so any AVX2 machine can use it.
    fn simd_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    fn quantize(lhs: &[f32], m: usize, k: usize) -> Q8Lhs {
        quantize_lhs(lhs, m, k)
    }

    fn tile(
        simd: bool,
        q: &Q8Lhs,
        r0: usize,
        rows: usize,
        w: &[&[u8]; COL_GROUP],
        kb: usize,
        out: &mut [[f32; COL_GROUP]; ROW_TILE],
    ) {
        let k = kb * QK;
        let qs = &q.qs[r0 * k..(r0 + rows) * k];
        let ds = &q.ds[r0 * kb * 2..(r0 + rows) * kb * 2];
        tile(simd, rows, w, kb, qs, ds, out);
    }
}

/// The activations quantized to Q8_1, split for the kernels.
pub(crate) struct Q8Lhs {
    /// (m, kb, 32) quantized values
    qs: Vec<i8>,
    /// (m, kb, 2): `d8` and `s8` of each block, as f32
    ds: Vec<f32>,
}

/// Quantizes the rows of `lhs` (m, k) with candle's `BlockQ8_1::from_float`.
fn quantize_lhs(lhs: &[f32], m: usize, k: usize) -> Q8Lhs {
    let kb = k / QK;
    let mut qs = vec![0i8; m * k];
    let mut ds = vec![0f32; m * kb * 2];
    let qs_ptr = SendPtr(qs.as_mut_ptr());
    let ds_ptr = SendPtr(ds.as_mut_ptr());
    for_rows(m, k, |rows: std::ops::Range<usize>| {
        let mut blocks = vec![BlockQ8_1::zeros(); kb];
        for r in rows {
            // SAFETY: row `r` of `qs` and `ds` is written by this work item only.
            let (row_qs, row_ds) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qs_ptr.get().add(r * k), k),
                    std::slice::from_raw_parts_mut(ds_ptr.get().add(r * kb * 2), kb * 2),
                )
            };
            BlockQ8_1::from_float(&lhs[r * k..(r + 1) * k], &mut blocks);
            // SAFETY: `BlockQ8_1` is `#[repr(C)] { d: f16, s: f16, qs: [i8; 32] }`
            // of 36 bytes (asserted above), so its bytes can be read as such.
            let bytes = unsafe {
                std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), kb * Q8_1_BYTES)
            };
            for (b, blk) in bytes.chunks_exact(Q8_1_BYTES).enumerate() {
                row_ds[2 * b] = f16_at(blk, 0);
                row_ds[2 * b + 1] = f16_at(blk, 2);
                for (q, &byte) in row_qs[b * QK..(b + 1) * QK].iter_mut().zip(&blk[4..]) {
                    *q = byte as i8;
                }
            }
        }
    });
    Q8Lhs { qs, ds }
}

/// `out[i][j]` = lhs row `i` of the tile (`rows` ≤ 4) times weight row
/// `w[j]` (`kb` blocks each). `qs`, `ds`: the tile's rows of [`Q8Lhs`].
#[inline(always)]
fn tile(
    avx2: bool,
    rows: usize,
    w: &[&[u8]; COL_GROUP],
    kb: usize,
    qs: &[i8],
    ds: &[f32],
    out: &mut [[f32; COL_GROUP]; ROW_TILE],
) {
    debug_assert!(w.iter().all(|w| w.len() == kb * Q4_1_BYTES));
    debug_assert_eq!(qs.len(), rows * kb * QK);
    debug_assert_eq!(ds.len(), rows * kb * 2);
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        let w = w.map(<[u8]>::as_ptr);
        // SAFETY: `avx2` is only true when AVX2, FMA and F16C were detected;
        // the slice lengths were checked above and by the caller.
        unsafe {
            match rows {
                4 => avx2::tile::<4>(&w, kb, qs.as_ptr(), ds.as_ptr(), out),
                3 => avx2::tile::<3>(&w, kb, qs.as_ptr(), ds.as_ptr(), out),
                2 => avx2::tile::<2>(&w, kb, qs.as_ptr(), ds.as_ptr(), out),
                _ => avx2::tile::<1>(&w, kb, qs.as_ptr(), ds.as_ptr(), out),
            }
        }
        return;
    }
    let _ = avx2;
    tile_scalar(rows, w, kb, qs, ds, out);
}

/// The portable kernel, candle's `BlockQ4_1::vec_dot_unopt` to the bit.
fn tile_scalar(
    rows: usize,
    w: &[&[u8]; COL_GROUP],
    kb: usize,
    qs: &[i8],
    ds: &[f32],
    out: &mut [[f32; COL_GROUP]; ROW_TILE],
) {
    for (i, out_row) in out.iter_mut().enumerate().take(rows) {
        let qr = &qs[i * kb * QK..(i + 1) * kb * QK];
        let dr = &ds[i * kb * 2..(i + 1) * kb * 2];
        for (wr, o) in w.iter().zip(out_row.iter_mut()) {
            let mut sum = 0f32;
            let blocks = wr.chunks_exact(Q4_1_BYTES).zip(qr.chunks_exact(QK));
            for ((wb, yb), d8s8) in blocks.zip(dr.chunks_exact(2)) {
                let mut isum = 0i32;
                for (jj, &byte) in wb[4..].iter().enumerate() {
                    isum += (byte & 0xF) as i32 * yb[jj] as i32;
                    isum += (byte >> 4) as i32 * yb[jj + QK / 2] as i32;
                }
                sum += isum as f32 * f16_at(wb, 0) * d8s8[0] + f16_at(wb, 2) * d8s8[1];
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{COL_GROUP, Q4_1_BYTES, QK, ROW_TILE};
    use std::arch::x86_64::*;

    /// See `super::tile`: `R` lhs rows against the 8 weight rows at `w`.
    /// Lanes are the 8 weight rows; each lane's arithmetic is candle's
    /// scalar `vec_dot_unopt`, operation for operation (exact integer block
    /// sums, then `sum += isum·d4·d8 + m4·s8` without fused multiply-adds),
    /// so the results are bit-identical.
    ///
    /// # Safety
    /// AVX2 and F16C must be available; each `w[j]` points at `kb` Q4_1
    /// blocks, `qs` at `R · kb · 32` values, `ds` at `R · kb · 2` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const R: usize>(
        w: &[*const u8; COL_GROUP],
        kb: usize,
        qs: *const i8,
        ds: *const f32,
        out: &mut [[f32; COL_GROUP]; ROW_TILE],
    ) {
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let low_half = _mm256_set1_epi32(0xFFFF);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let at = b * Q4_1_BYTES;
            // 32 weights of each column: low nibbles are elements 0..16
            // (low 128 bits), high nibbles elements 16..32.
            let wv: [__m256i; COL_GROUP] = std::array::from_fn(|j| {
                let raw = _mm_loadu_si128(w[j].add(at + 4).cast::<__m128i>());
                _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), low_nibbles)
            });
            // [d, m] f16 pairs of the 8 columns -> d4 (8 × f32), m4 (8 × f32)
            let dm: [i32; COL_GROUP] =
                std::array::from_fn(|j| std::ptr::read_unaligned(w[j].add(at).cast::<i32>()));
            let dm = _mm256_loadu_si256(dm.as_ptr().cast::<__m256i>());
            let dm =
                _mm256_packus_epi32(_mm256_and_si256(dm, low_half), _mm256_srli_epi32::<16>(dm));
            // [d0..4 m0..4 | d4..8 m4..8] -> [d0..8 | m0..8]
            let dm = _mm256_permute4x64_epi64::<0xD8>(dm);
            let d4 = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
            let m4 = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(dm));
            for (r, acc) in acc.iter_mut().enumerate() {
                let y = _mm256_loadu_si256(qs.add((r * kb + b) * QK).cast::<__m256i>());
                // i16 pair sums, |.| ≤ 2·15·128; three pairwise adds keep
                // each half-block sum (16 products) ≤ 30720, inside i16.
                let p: [__m256i; COL_GROUP] =
                    std::array::from_fn(|j| _mm256_maddubs_epi16(wv[j], y));
                let h01 = _mm256_hadd_epi16(p[0], p[1]);
                let h23 = _mm256_hadd_epi16(p[2], p[3]);
                let h45 = _mm256_hadd_epi16(p[4], p[5]);
                let h67 = _mm256_hadd_epi16(p[6], p[7]);
                let h = _mm256_hadd_epi16(_mm256_hadd_epi16(h01, h23), _mm256_hadd_epi16(h45, h67));
                // column j: lane j of the low half (elements 0..16) plus
                // lane j of the high half (elements 16..32)
                let isum = _mm256_add_epi32(
                    _mm256_cvtepi16_epi32(_mm256_castsi256_si128(h)),
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(h)),
                );
                let d8 = _mm256_broadcast_ss(&*ds.add((r * kb + b) * 2));
                let s8 = _mm256_broadcast_ss(&*ds.add((r * kb + b) * 2 + 1));
                let t = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(isum), d4), d8),
                    _mm256_mul_ps(m4, s8),
                );
                *acc = _mm256_add_ps(*acc, t);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::block_matmul::testing::{assert_bit_equal, candle};
    use crate::nn::block_matmul::BlockMatmul;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use std::sync::Arc;

    /// A random (n, k) Q4_1 weight and a random (m, k) input.
    fn case(m: usize, k: usize, n: usize, seed: u64) -> anyhow::Result<(Arc<QTensor>, Tensor)> {
        let dev = Device::Cpu;
        // Offset weights so the `m4` terms matter.
        let w = (Tensor::rand(-1f32, 1.5, (n, k), &dev)? * (seed as f64 + 1.0))?;
        let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1)?);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        Ok((w, x))
    }

    fn ours(w: &Arc<QTensor>, x: &Tensor, avx2: bool) -> anyhow::Result<Vec<f32>> {
        crate::nn::block_matmul::testing::ours::<Q4_1>(w, x, avx2)
    }

    fn has_avx2() -> bool {
        Q4_1::simd_available()
    }

    /// Both kernels against candle's `QMatMul` (decode, short and long
    /// prefill, column and row tails).
    #[test]
    fn matches_candle_qmatmul() -> anyhow::Result<()> {
        for (i, &(m, k, n)) in [
            (1, 64, 192),
            (3, 576, 576),
            (128, 576, 1536),
            (128, 1536, 576),
            (1, 1536, 576),
            (3, 64, 1536),
            (5, 576, 193),
            (7, 1536, 17),
            (2, 32, 3),
            (1, 576, 49152),
        ]
        .iter()
        .enumerate()
        {
            let (w, x) = case(m, k, n, i as u64)?;
            let want = candle(&w, &x)?;
            assert_bit_equal(&ours(&w, &x, false)?, &want, &format!("scalar {m}x{k}x{n}"));
            if has_avx2() {
                assert_bit_equal(&ours(&w, &x, true)?, &want, &format!("avx2 {m}x{k}x{n}"));
            }
        }
        Ok(())
    }

    /// The largest block sums (every nibble 15, every q8 ±127) and zero
    /// scales (a constant weight block, an all-zero input row).
    #[test]
    fn extreme_blocks_match_candle() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (9usize, 96usize);
        // Rows 0..4: one 0 then 1s per block (d = 1/15, nibbles 15);
        // rows 4..: constant (d = 0).
        let w: Vec<f32> = (0..n * k)
            .map(|i| match (i / k < 4, i.is_multiple_of(QK)) {
                (true, true) => 0.0,
                (true, false) => 1.0,
                (false, _) => -0.25,
            })
            .collect();
        let w = Arc::new(QTensor::quantize(
            &Tensor::from_vec(w, (n, k), &dev)?,
            GgmlDType::Q4_1,
        )?);
        // rows: all +1 (q8 127), all -1 (q8 -127), all 0
        let x: Vec<f32> = [1f32, -1.0, 0.0]
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, k))
            .collect();
        let x = Tensor::from_vec(x, (3, k), &dev)?;
        let want = candle(&w, &x)?;
        assert_bit_equal(&ours(&w, &x, false)?, &want, "scalar");
        if has_avx2() {
            assert_bit_equal(&ours(&w, &x, true)?, &want, "avx2");
        }
        Ok(())
    }

    #[test]
    fn custom_op_keeps_leading_dims() -> anyhow::Result<()> {
        let (w, x) = case(6, 64, 40, 3)?;
        let op = BlockMatmul::new(w.clone())?;
        // (2, 3, 64) -> (2, 3, 40)
        let ys = x.reshape((2, 3, 64))?.apply_op1_no_bwd(&op)?;
        assert_eq!(ys.dims(), &[2, 3, 40]);
        let want = candle(&w, &x)?;
        assert_bit_equal(&ys.flatten_all()?.to_vec1()?, &want, "custom op");
        Ok(())
    }

    /// `cargo test --release -p glimpse-models --lib q4_1_matmul::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench() -> anyhow::Result<()> {
        use std::time::Instant;
        for &(m, k, n) in &[
            (1, 576, 1536),
            (1, 1536, 576),
            (1, 576, 49152),
            (128, 576, 1536),
            (128, 1536, 576),
        ] {
            let (w, x) = case(m, k, n, 0)?;
            let op = BlockMatmul::new(w.clone())?;
            let qm = QMatMul::from_arc(w)?;
            let iters = if m == 1 { 400 } else { 20 };
            let time = |f: &dyn Fn() -> anyhow::Result<Tensor>| -> anyhow::Result<f64> {
                f()?;
                let t = Instant::now();
                for _ in 0..iters {
                    f()?;
                }
                Ok(t.elapsed().as_secs_f64() / iters as f64)
            };
            let t_ours = time(&|| Ok(x.apply_op1_no_bwd(&op)?))?;
            let t_candle = time(&|| Ok(qm.forward(&x)?))?;
            let gflop = 2.0 * (m * k * n) as f64 / 1e9;
            println!(
                "m={m:4} k={k:5} n={n:6}: ours {:9.1} us ({:6.1} GFLOP/s), candle {:9.1} us ({:6.1} GFLOP/s), x{:.1}",
                t_ours * 1e6,
                gflop / t_ours,
                t_candle * 1e6,
                gflop / t_candle,
                t_candle / t_ours
            );
        }
        Ok(())
    }
}
