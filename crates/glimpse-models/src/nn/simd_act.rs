//! AVX2+FMA kernels for the exp-based activations (quick_gelu, silu,
//! gelu_pytorch_tanh) and the attention softmax.
//!
//! Why: the default x86-64 target has no AVX, and libm's `expf` is an
//! opaque call, so the activation loop ran one element at a time (~9 ms for
//! a ViT-B/16 MLP at batch 8 on two cores). Compiled for AVX2 behind a
//! runtime check and with an inlinable `exp`, the same loop runs 8 lanes wide.
//!
//! `exp` here: range reduction to 2^n · e^r with |r| ≤ ln2/2 and Cephes'
//! degree-6 polynomial for e^r; within 2 ulp of `f32::exp` for the inputs
//! that matter (below -87 it flushes to 0, above 88 it saturates).

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two so r = x - n·ln2 keeps its low bits
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// adding and removing 1.5·2^23 rounds to nearest without a `round` call
const SHIFTER: f32 = 12_582_912.0;

#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + SHIFTER) - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127).clamp(0, 255) as u32) << 23)
}

#[inline(always)]
fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `0.5·x·(1 + tanh(y))`, `y = √(2/π)·(x + 0.044715·x³)`, as the equal
/// `x / (1 + e^{−2y})` on the inlinable `exp`: libm's `tanhf` is an opaque
/// call (SigLIP towers' MLPs spent ~10 ns an element in it), and this form
/// has no cancellation where tanh nears −1.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + exp(-2.0 * y))
}

/// Which kernel, if any, covers an activation.
#[derive(Clone, Copy)]
pub enum Kernel {
    QuickGelu,
    Silu,
    GeluTanh,
}

macro_rules! avx2_kernel {
    ($name:ident, $f:ident) => {
        /// `dst[i] = f(src[i] + bias[i mod n])`, or without bias when it is empty.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name(src: &[f32], bias: &[f32], dst: &mut [f32]) {
            if bias.is_empty() {
                for (o, &x) in dst.iter_mut().zip(src) {
                    *o = $f(x);
                }
            } else {
                for (orow, irow) in dst.chunks_mut(bias.len()).zip(src.chunks(bias.len())) {
                    for ((o, &x), &b) in orow.iter_mut().zip(irow).zip(bias) {
                        *o = $f(x + b);
                    }
                }
            }
        }
    };
}

avx2_kernel!(quick_gelu_avx2, quick_gelu);
avx2_kernel!(silu_avx2, silu);
avx2_kernel!(gelu_tanh_avx2, gelu_tanh);

/// Runs the AVX2 kernel when the CPU has it; returns false (and writes
/// nothing) when the caller must take the scalar path. `src` must hold
/// whole rows of `bias.len()` when `bias` is not empty.
pub fn run(kernel: Kernel, src: &[f32], bias: &[f32], dst: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected on this CPU.
            unsafe {
                match kernel {
                    Kernel::QuickGelu => quick_gelu_avx2(src, bias, dst),
                    Kernel::Silu => silu_avx2(src, bias, dst),
                    Kernel::GeluTanh => gelu_tanh_avx2(src, bias, dst),
                }
            }
            return true;
        }
    }
    let _ = (kernel, src, bias, dst);
    false
}

/// `r ← softmax(r)` in place, with the inlinable `exp` 8 lanes wide.
///
/// Why: in the fused attention core a row of L scores costs L exps against
/// 4·L·hd flops of gemm, so at L = 576–1024 (Idefics3's and Qwen2-VL's
/// towers) libm's one-at-a-time `expf` took as long as the two gemms.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(r: &mut [f32]) {
    // eight running maxima / sums, so the loops vectorise without
    // reassociating one float chain
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = r.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; 8];
    let mut chunks = r.chunks_exact_mut(8);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in r.iter_mut() {
        *x *= inv;
    }
}

/// Softmax of one row in place: the AVX2 kernel when the CPU has it, else
/// libm's `exp` one element at a time.
pub fn softmax_in_place(r: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected on this CPU.
            unsafe { softmax_avx2(r) };
            return;
        }
    }
    let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in r.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    r.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_close_to_libm() {
        let mut worst = 0f32;
        let mut x = -80f32;
        while x < 80.0 {
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
    }

    /// The kernel's gelu_pytorch_tanh is the f64 one within float
    /// rounding (relative, down to outputs of 1e-6; absolute below).
    #[test]
    fn gelu_tanh_close_to_f64() {
        let mut worst = 0f64;
        let mut x = -12f32;
        while x < 12.0 {
            let xd = x as f64;
            let y = 0.797_884_6 * xd * (1.0 + 0.044_715 * xd * xd);
            let want = 0.5 * xd * (1.0 + y.tanh());
            let err = (super::gelu_tanh(x) as f64 - want).abs() / want.abs().max(1e-6);
            worst = worst.max(err);
            x += 0.00731;
        }
        assert!(worst < 5e-6, "relative error {worst}");
    }

    /// The kernel's softmax equals the libm one within float rounding, for
    /// rows longer and shorter than a lane group.
    #[test]
    fn softmax_close_to_libm() {
        for len in [1usize, 7, 8, 13, 576, 1024] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.21)
                .collect();
            let mut fast = row.clone();
            super::softmax_in_place(&mut fast);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for (a, b) in fast.iter().zip(&e) {
                assert!(
                    (a - b / sum).abs() <= 1e-6 * (b / sum).max(1e-3),
                    "len {len}: {a} vs {}",
                    b / sum
                );
            }
            assert!((fast.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
