//! Emu3's temporal layers (transformers' `Emu3VQVAEConv3d`,
//! `Emu3VQVAETemporalResnetBlock`, `...TemporalDownsample`,
//! `...TemporalUpsample`), on clips laid out (B, T, C, H, W).
//!
//! candle has no 3D convolution, so a (kt, kh, kw) conv is kt 2D convs,
//! one per temporal tap, each over the frames that tap reads, summed: the
//! same sums in another order, and differentiable as conv2d is.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::blocks::swish;

/// Frames of zero padding before the clip: every Emu3 conv is causal in
/// time, padded by 2 in front whatever its temporal kernel.
const CAUSAL_PAD: usize = 2;

/// A 3D conv with Emu3's padding: 2 frames in front, spatially
/// (k−1)/2 on each side (k odd in every Emu3 conv), no spatial stride.
pub struct Conv3d {
    /// One (C_out, C_in, kh, kw) kernel per temporal tap.
    taps: Vec<Tensor>,
    bias: Tensor,
    stride_t: usize,
    pad_hw: usize,
}

impl Conv3d {
    /// Reads `conv.weight` (C_out, C_in, kt, k, k) and `conv.bias` under `vb`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        stride_t: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (kt, k) = kernel;
        let vb = vb.pp("conv");
        let weight = vb.get_with_hints(
            (c_out, c_in, kt, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.))?;
        let taps = (0..kt)
            .map(|t| weight.narrow(2, t, 1)?.squeeze(2)?.contiguous())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            taps,
            bias,
            stride_t,
            pad_hw: (k - 1) / 2,
        })
    }

    /// # Shapes
    /// (B, T, C_in, H, W) -> (B, T', C_out, H, W), T' = (T + 2 − kt)/stride + 1
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = xs.dims5()?;
        let kt = self.taps.len();
        let padded_t = t + CAUSAL_PAD;
        if padded_t < kt {
            candle_core::bail!("{t} frames are too few for a temporal kernel of {kt}");
        }
        let t_out = (padded_t - kt) / self.stride_t + 1;
        let mut xs = xs.pad_with_zeros(1, CAUSAL_PAD, 0)?;
        if self.pad_hw > 0 {
            xs = xs
                .pad_with_zeros(3, self.pad_hw, self.pad_hw)?
                .pad_with_zeros(4, self.pad_hw, self.pad_hw)?;
        }
        let (hp, wp) = (h + 2 * self.pad_hw, w + 2 * self.pad_hw);
        let mut sum: Option<Tensor> = None;
        for (dt, kernel) in self.taps.iter().enumerate() {
            let frames: Vec<u32> = (0..t_out)
                .map(|i| (i * self.stride_t + dt) as u32)
                .collect();
            let idx = Tensor::new(frames.as_slice(), xs.device())?;
            // (B, T', C, Hp, Wp) -> (B·T', C, Hp, Wp)
            let picked = xs.index_select(&idx, 1)?.reshape((b * t_out, c, hp, wp))?;
            let y = picked.conv2d(kernel, 0, 1, 1, 1)?;
            sum = Some(match sum {
                Some(s) => (s + y)?,
                None => y,
            });
        }
        let Some(sum) = sum else {
            candle_core::bail!("a 3D conv needs at least one temporal tap")
        };
        let c_out = self.bias.dim(0)?;
        // (B·T', C_out, H, W) -> (B, T', C_out, H, W)
        sum.broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)?
            .reshape((b, t_out, c_out, h, w))
    }
}

/// `BatchNorm3d` at inference: the running statistics, eps 1e-5.
pub struct BatchNorm {
    /// (C,) scale and shift folded from weight, bias and the statistics.
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        // fresh (training from scratch): the identity, as torch initialises it
        let weight = vb.get_with_hints(c, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(c, "bias", Init::Const(0.))?;
        let mean = vb.get_with_hints(c, "running_mean", Init::Const(0.))?;
        let var = vb.get_with_hints(c, "running_var", Init::Const(1.))?;
        // frozen statistics: y = x·w/√(var+eps) + (b − mean·w/√(var+eps))
        let scale = (weight / (var + 1e-5)?.sqrt()?)?;
        let shift = (bias - (mean * &scale)?)?;
        Ok(Self { scale, shift })
    }

    /// # Shapes
    /// (B, T, C, H, W) -> (B, T, C, H, W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = self.scale.dim(0)?;
        xs.broadcast_mul(&self.scale.reshape((1, 1, c, 1, 1))?)?
            .broadcast_add(&self.shift.reshape((1, 1, c, 1, 1))?)
    }
}

/// BN → swish → 3x3x3 conv, twice, plus the input.
pub struct TemporalResnetBlock {
    norm1: BatchNorm,
    conv1: Conv3d,
    norm2: BatchNorm,
    conv2: Conv3d,
}

impl TemporalResnetBlock {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: BatchNorm::new(c, vb.pp("norm1"))?,
            conv1: Conv3d::new(c, c, (3, 3), 1, vb.pp("conv1"))?,
            norm2: BatchNorm::new(c, vb.pp("norm2"))?,
            conv2: Conv3d::new(c, c, (3, 3), 1, vb.pp("conv2"))?,
        })
    }

    /// # Shapes
    /// (B, T, C, H, W) -> (B, T, C, H, W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&swish(&self.norm1.forward(xs)?)?)?;
        let h = self.conv2.forward(&swish(&self.norm2.forward(&h)?)?)?;
        xs + h
    }
}

/// Halves the frames: a (4, 3, 3) conv with temporal stride 2.
pub fn temporal_downsample(c: usize, vb: VarBuilder) -> Result<Conv3d> {
    Conv3d::new(c, c, (4, 3), 2, vb.pp("conv"))
}

/// Doubles the frames (each repeated, nearest), then a (3, 3, 3) conv.
pub struct TemporalUpsample {
    conv: Conv3d,
}

impl TemporalUpsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv3d::new(c, c, (3, 3), 1, vb.pp("conv"))?,
        })
    }

    /// # Shapes
    /// (B, T, C, H, W) -> (B, 2T, C, H, W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let t = xs.dim(1)?;
        let frames: Vec<u32> = (0..2 * t).map(|i| (i / 2) as u32).collect();
        let idx = Tensor::new(frames.as_slice(), xs.device())?;
        self.conv.forward(&xs.index_select(&idx, 1)?)
    }
}
