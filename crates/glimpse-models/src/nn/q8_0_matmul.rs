//! The Q8_0 kernels of `nn::block_matmul`: candle 0.11.1's Q8_0 `vec_dot`
//! to the bit, with the weight block read once for 4 lhs rows.
//!
//! candle's x86 `QMatMul` on a Q8_0 weight runs one of three kernels:
//! - its repacked AVX512-VNNI / AVX-VNNI tiles (Q8_K activations), where the
//!   CPU has VNNI and the shape suits (`n % 16 == 0`, `k % 256 == 0`): fast
//!   already, and `BlockMatmul::supports` leaves those weights to candle;
//! - else `avx::vec_dot_q8_0_q8_0` where AVX2 and FMA are detected at run
//!   time: per block, the 32 products summed in fours (exact i32 in 8 f32
//!   lanes) and `acc = fma(d_w·d_x, lanes, acc)`, the 8 lanes summed at the
//!   end as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`: [`avx2::tile`]
//!   repeats those operations per (row, column);
//! - else `vec_dot_unopt`: `sum += (isum as f32 · d_w) · d_x` per block:
//!   [`tile_scalar`].
//!
//! At SmolLM2's k = 576 this is 1.1-2x faster than candle's path (decode,
//! a batched LM head, prefill; shared 2-core machine, noisy) and about as
//! fast per weight byte as the Q4_1 kernel: candle's reloads a weight block
//! for every lhs row and runs one FMA chain per dot, this kernel shares the
//! block across 4 rows and interleaves up to 8 columns' chains.
//!
//! Block layout (candle `k_quants.rs`, `#[repr(C)]`, little-endian):
//! Q8_0, 34 bytes: `d: f16, qs: [i8; 32]`, value `d·q`; the activations are
//! Q8_0 too, quantized by candle's `BlockQ8_0::from_float`.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};

use crate::nn::block_matmul::{f16_at, for_rows, BlockKernel, SendPtr, COL_GROUP, ROW_TILE};

/// Values per block.
const QK: usize = 32;
/// Bytes of one Q8_0 block.
const Q8_0_BYTES: usize = 34;

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BYTES);

/// The Q8_0 kernels, driven by `nn::block_matmul`.
pub(crate) struct Q8_0;

/// The activations quantized to Q8_0, split for the kernels.
pub(crate) struct Q8Lhs {
    /// (m, kb, 32) quantized values
    qs: Vec<i8>,
    /// (m, kb): each block's `d`, as f32
    ds: Vec<f32>,
}

impl BlockKernel for Q8_0 {
    const BLOCK: usize = QK;
    const BLOCK_BYTES: usize = Q8_0_BYTES;
    type Lhs = Q8Lhs;

    /// candle's own test (`k_quants::has_avx2_fma`): its AVX kernel rounds
    /// differently from its scalar one, so ours follows its choice.
    fn simd_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
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
        let ds = &q.ds[r0 * kb..(r0 + rows) * kb];
        debug_assert!(w.iter().all(|w| w.len() == kb * Q8_0_BYTES));
        #[cfg(target_arch = "x86_64")]
        if simd {
            let w = w.map(<[u8]>::as_ptr);
            // SAFETY: `simd` is only true when AVX2 and FMA were detected;
            // the slice lengths were checked above and by the driver.
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
        let _ = simd;
        tile_scalar(rows, w, kb, qs, ds, out);
    }
}

/// Quantizes the rows of `lhs` (m, k) with candle's `BlockQ8_0::from_float`.
fn quantize_lhs(lhs: &[f32], m: usize, k: usize) -> Q8Lhs {
    let kb = k / QK;
    let mut qs = vec![0i8; m * k];
    let mut ds = vec![0f32; m * kb];
    let qs_ptr = SendPtr(qs.as_mut_ptr());
    let ds_ptr = SendPtr(ds.as_mut_ptr());
    for_rows(m, k, |rows: std::ops::Range<usize>| {
        let mut blocks = vec![BlockQ8_0::zeros(); kb];
        for r in rows {
            // SAFETY: row `r` of `qs` and `ds` is written by this work item only.
            let (row_qs, row_ds) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qs_ptr.get().add(r * k), k),
                    std::slice::from_raw_parts_mut(ds_ptr.get().add(r * kb), kb),
                )
            };
            BlockQ8_0::from_float(&lhs[r * k..(r + 1) * k], &mut blocks);
            // SAFETY: `BlockQ8_0` is `#[repr(C)] { d: f16, qs: [i8; 32] }` of
            // 34 bytes (asserted above), so its bytes can be read as such.
            let bytes = unsafe {
                std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), kb * Q8_0_BYTES)
            };
            for (b, blk) in bytes.chunks_exact(Q8_0_BYTES).enumerate() {
                row_ds[b] = f16_at(blk, 0);
                for (q, &byte) in row_qs[b * QK..(b + 1) * QK].iter_mut().zip(&blk[2..]) {
                    *q = byte as i8;
                }
            }
        }
    });
    Q8Lhs { qs, ds }
}

/// The portable kernel, candle's `BlockQ8_0::vec_dot_unopt` to the bit.
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
        let dr = &ds[i * kb..(i + 1) * kb];
        for (wr, o) in w.iter().zip(out_row.iter_mut()) {
            let mut sum = 0f32;
            let blocks = wr.chunks_exact(Q8_0_BYTES).zip(qr.chunks_exact(QK));
            for ((wb, yb), &d8) in blocks.zip(dr) {
                let isum: i32 = wb[2..]
                    .iter()
                    .zip(yb)
                    .map(|(&x, &y)| x as i8 as i32 * y as i32)
                    .sum();
                sum += isum as f32 * f16_at(wb, 0) * d8;
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{COL_GROUP, Q8_0_BYTES, QK, ROW_TILE};
    use half::f16;
    use std::arch::x86_64::*;

    /// candle's `hsum_float_8`.
    #[inline(always)]
    unsafe fn hsum(x: __m256) -> f32 {
        let res = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// See `Q8_0::tile`: `R` lhs rows against the 8 weight rows at `w`;
    /// each (row, column) is candle's `avx::vec_dot_q8_0_q8_0`, instruction
    /// for instruction, with a weight block's load, `|w|` and scale shared
    /// by the `R` rows. Columns go `8 / R` at a time (2 for R > 2), so up to
    /// 8 independent accumulator chains hide the FMA latency at R = 1.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; each `w[j]` points at `kb` Q8_0
    /// blocks, `qs` at `R · kb · 32` values, `ds` at `R · kb` floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        w: &[*const u8; COL_GROUP],
        kb: usize,
        qs: *const i8,
        ds: *const f32,
        out: &mut [[f32; COL_GROUP]; ROW_TILE],
    ) {
        match R {
            1 => {
                for j0 in (0..COL_GROUP).step_by(8) {
                    columns::<R, 8>(w, j0, kb, qs, ds, out);
                }
            }
            2 => {
                for j0 in (0..COL_GROUP).step_by(4) {
                    columns::<R, 4>(w, j0, kb, qs, ds, out);
                }
            }
            _ => {
                for j0 in (0..COL_GROUP).step_by(2) {
                    columns::<R, 2>(w, j0, kb, qs, ds, out);
                }
            }
        }
    }

    /// `R` rows against the `C` weight rows from `w[j0]`.
    #[inline(always)]
    unsafe fn columns<const R: usize, const C: usize>(
        w: &[*const u8; COL_GROUP],
        j0: usize,
        kb: usize,
        qs: *const i8,
        ds: *const f32,
        out: &mut [[f32; COL_GROUP]; ROW_TILE],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..kb {
            let mut dw = [0f32; C];
            let mut bx = [_mm256_setzero_si256(); C];
            let mut ax = [_mm256_setzero_si256(); C];
            for c in 0..C {
                let blk = w[j0 + c].add(b * Q8_0_BYTES);
                dw[c] = f16::from_bits(std::ptr::read_unaligned(blk.cast::<u16>())).to_f32();
                bx[c] = _mm256_loadu_si256(blk.add(2).cast::<__m256i>());
                ax[c] = _mm256_sign_epi8(bx[c], bx[c]);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let by = _mm256_loadu_si256(qs.add((r * kb + b) * QK).cast::<__m256i>());
                let dx = *ds.add(r * kb + b);
                for c in 0..C {
                    let sy = _mm256_sign_epi8(by, bx[c]);
                    // i16 pair sums, then fours as i32 (exact), as f32
                    let dot = _mm256_maddubs_epi16(ax[c], sy);
                    let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                    let d = _mm256_set1_ps(dw[c] * dx);
                    acc[c] = _mm256_fmadd_ps(d, q, acc[c]);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            for (c, acc) in acc.into_iter().enumerate() {
                o[j0 + c] = hsum(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::block_matmul::testing::{assert_bit_equal, candle, ours};
    use crate::nn::block_matmul::BlockMatmul;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use std::sync::Arc;

    /// A random (n, k) Q8_0 weight and a random (m, k) input.
    fn case(m: usize, k: usize, n: usize) -> anyhow::Result<(Arc<QTensor>, Tensor)> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let w = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        Ok((w, x))
    }

    /// candle's scalar reference, `BlockQ8_0::vec_dot_unopt`, per output.
    fn candle_unopt(w: &Arc<QTensor>, x: &Tensor) -> anyhow::Result<Vec<f32>> {
        let (n, k) = w.shape().dims2()?;
        let m = x.dim(0)?;
        let kb = k / QK;
        let wdata = w.data()?;
        // candle stores the blocks as a `Vec<BlockQ8_0>`: aligned.
        assert!(wdata.as_ptr().cast::<BlockQ8_0>().is_aligned());
        // SAFETY: n·kb blocks of 34 bytes (checked by the length), aligned.
        let wb = unsafe {
            assert_eq!(wdata.len(), n * kb * Q8_0_BYTES);
            std::slice::from_raw_parts(wdata.as_ptr().cast::<BlockQ8_0>(), n * kb)
        };
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut out = Vec::with_capacity(m * n);
        for r in 0..m {
            let mut xb = vec![BlockQ8_0::zeros(); kb];
            BlockQ8_0::from_float(&xs[r * k..(r + 1) * k], &mut xb);
            for c in 0..n {
                out.push(BlockQ8_0::vec_dot_unopt(k, &wb[c * kb..(c + 1) * kb], &xb));
            }
        }
        Ok(out)
    }

    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 576, 576),
        (1, 576, 1536),
        (3, 576, 960),
        (128, 576, 1536),
        (128, 1536, 576),
        (1, 1536, 576),
        (5, 576, 193),
        (7, 64, 17),
        (2, 32, 3),
    ];

    /// The AVX2 kernel against candle's `QMatMul` where candle runs its
    /// AVX2 `vec_dot` (the shapes `BlockMatmul` takes), the scalar kernel
    /// against `vec_dot_unopt` everywhere.
    #[test]
    fn matches_candle() -> anyhow::Result<()> {
        for &(m, k, n) in &SHAPES {
            let (w, x) = case(m, k, n)?;
            assert_bit_equal(
                &ours::<Q8_0>(&w, &x, false)?,
                &candle_unopt(&w, &x)?,
                &format!("scalar {m}x{k}x{n}"),
            );
            if Q8_0::simd_available() && BlockMatmul::supports(&w) {
                assert_bit_equal(
                    &ours::<Q8_0>(&w, &x, true)?,
                    &candle(&w, &x)?,
                    &format!("avx2 {m}x{k}x{n}"),
                );
            }
        }
        Ok(())
    }

    /// Extreme blocks: every weight ±127 (d chosen so), every activation
    /// ±127, mixed signs, zero blocks.
    #[test]
    fn extreme_blocks_match_candle() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (9usize, 96usize);
        let w: Vec<f32> = (0..n * k)
            .map(|i| match i / k {
                0 => 1.0,
                1 => -1.0,
                2 => 0.0,
                3 => {
                    if i.is_multiple_of(2) {
                        3.0
                    } else {
                        -3.0
                    }
                }
                r => ((i * 7919 % 255) as f32 - 127.0) / (r as f32),
            })
            .collect();
        let w = Arc::new(QTensor::quantize(
            &Tensor::from_vec(w, (n, k), &dev)?,
            GgmlDType::Q8_0,
        )?);
        let x: Vec<f32> = [1f32, -1.0, 0.0]
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, k))
            .collect();
        let x = Tensor::from_vec(x, (3, k), &dev)?;
        assert_bit_equal(
            &ours::<Q8_0>(&w, &x, false)?,
            &candle_unopt(&w, &x)?,
            "scalar",
        );
        if Q8_0::simd_available() {
            assert_bit_equal(&ours::<Q8_0>(&w, &x, true)?, &candle(&w, &x)?, "avx2");
        }
        Ok(())
    }

    #[test]
    fn custom_op_keeps_leading_dims() -> anyhow::Result<()> {
        let (w, x) = case(6, 64, 40)?;
        let op = BlockMatmul::new(w.clone())?;
        // (2, 3, 64) -> (2, 3, 40)
        let ys = x.reshape((2, 3, 64))?.apply_op1_no_bwd(&op)?;
        assert_eq!(ys.dims(), &[2, 3, 40]);
        let want = if Q8_0::simd_available() {
            candle(&w, &x)?
        } else {
            candle_unopt(&w, &x)?
        };
        assert_bit_equal(&ys.flatten_all()?.to_vec1()?, &want, "custom op");
        Ok(())
    }

    /// `cargo test --release -p glimpse-models --lib q8_0_matmul::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench() -> anyhow::Result<()> {
        use std::time::Instant;
        for &(m, k, n) in &[
            (1, 576, 1536),
            (1, 1536, 576),
            (1, 576, 960),
            // SmolLM2's tied Q8_0 LM head: decode, 8 sequences batched
            (1, 576, 49152),
            (8, 576, 49152),
            (128, 576, 1536),
            (128, 1536, 576),
        ] {
            let (w, x) = case(m, k, n)?;
            let op = BlockMatmul::new(w.clone())?;
            let qm = QMatMul::from_arc(w.clone())?;
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
            let gb = w.data()?.len() as f64 / 1e9;
            println!(
                "m={m:4} k={k:5} n={n:6}: ours {:9.1} us ({:5.2} GB/s of weight), candle {:9.1} us ({:5.2} GB/s), x{:.1}{}",
                t_ours * 1e6,
                gb / t_ours,
                t_candle * 1e6,
                gb / t_candle,
                t_candle / t_ours,
                if BlockMatmul::supports(&w) { "" } else { " (candle repacks this shape: qlinear uses candle's)" }
            );
        }
        Ok(())
    }
}
