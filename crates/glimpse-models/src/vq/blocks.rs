//! The VQGAN's building blocks (taming-transformers' `ResnetBlock`,
//! `AttnBlock`, `Downsample`, `Upsample`, as transformers'
//! `ChameleonVQVAEEncoder*` / `JanusVQVAE*` hold them).
//!
//! Training note: every op here has a backward in candle 0.11: conv2d,
//! candle-nn's GroupNorm (composed from sums and broadcasts, not a fused
//! kernel), `pad_with_zeros` (a concatenation), `upsample_nearest2d` (integer
//! factors), silu via [`Activation`], and the attention softmax through
//! `nn::attention::softmax_last_dim`, which picks a differentiable path when
//! its input tracks gradients.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};

use super::config::GROUPS;
use crate::nn::attention::softmax_last_dim;
use crate::nn::Activation;

/// GroupNorm epsilon of every norm in these models.
const EPS: f64 = 1e-6;

pub(crate) fn group_norm(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    candle_nn::group_norm(GROUPS, channels, EPS, vb)
}

/// A conv with bias, square kernel `k`, "same" padding for odd kernels
/// unless `padding` says otherwise.
pub(crate) fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(c_in, c_out, k, cfg, vb)
}

/// `x * sigmoid(x)`, the nonlinearity after every norm.
pub(crate) fn swish(xs: &Tensor) -> Result<Tensor> {
    Activation::Silu.forward(xs)
}

/// A res block's norm: plain GroupNorm, or Emu3's decoder norm modulated
/// by the codes (`Emu3VQVAESpatialNorm`, from MoVQ): GroupNorm(x)·conv_y(q)
/// + conv_b(q), q the quantised latents resized to x's grid.
pub enum Norm {
    Group(GroupNorm),
    Spatial {
        norm_layer: GroupNorm,
        conv_y: Conv2d,
        conv_b: Conv2d,
    },
}

impl Norm {
    /// GroupNorm, or a spatial norm when `quant_channels` is given.
    pub fn new(c: usize, quant_channels: Option<usize>, vb: VarBuilder) -> Result<Self> {
        Ok(match quant_channels {
            None => Norm::Group(group_norm(c, vb)?),
            Some(q) => Norm::Spatial {
                norm_layer: group_norm(c, vb.pp("norm_layer"))?,
                conv_y: conv(q, c, 1, 1, 0, vb.pp("conv_y"))?,
                conv_b: conv(q, c, 1, 1, 0, vb.pp("conv_b"))?,
            },
        })
    }

    /// # Shapes
    /// `xs`: (N, C, H, W); `quant`: (N, Q, h, w), h and w dividing H and W
    /// -> (N, C, H, W)
    pub fn forward(&self, xs: &Tensor, quant: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Norm::Group(n) => n.forward(xs),
            Norm::Spatial {
                norm_layer,
                conv_y,
                conv_b,
            } => {
                let Some(q) = quant else {
                    candle_core::bail!("a spatial norm needs the quantised latents")
                };
                let (_, _, h, w) = xs.dims4()?;
                let q = q.upsample_nearest2d(h, w)?;
                norm_layer
                    .forward(xs)?
                    .mul(&conv_y.forward(&q)?)?
                    .add(&conv_b.forward(&q)?)
            }
        }
    }
}

/// norm → swish → conv3x3, twice, plus the input (through a 1x1 conv when
/// the width changes).
pub struct ResnetBlock {
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Self::new_with(c_in, c_out, None, vb)
    }

    /// With spatial norms conditioned on `quant_channels`-wide latents
    /// (Emu3's decoder) when given.
    pub fn new_with(
        c_in: usize,
        c_out: usize,
        quant_channels: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: Norm::new(c_in, quant_channels, vb.pp("norm1"))?,
            conv1: conv(c_in, c_out, 3, 1, 1, vb.pp("conv1"))?,
            norm2: Norm::new(c_out, quant_channels, vb.pp("norm2"))?,
            conv2: conv(c_out, c_out, 3, 1, 1, vb.pp("conv2"))?,
            nin_shortcut: (c_in != c_out)
                .then(|| conv(c_in, c_out, 1, 1, 0, vb.pp("nin_shortcut")))
                .transpose()?,
        })
    }

    /// # Shapes
    /// (B, C_in, H, W) -> (B, C_out, H, W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, None)
    }

    /// With the quantised latents a spatial norm reads.
    ///
    /// # Shapes
    /// `xs`: (B, C_in, H, W), `quant`: (B, Q, h, w) -> (B, C_out, H, W)
    pub fn forward_with(&self, xs: &Tensor, quant: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .conv1
            .forward(&swish(&self.norm1.forward(xs, quant)?)?)?;
        // dropout is 0 in every released config and off at inference
        let h = self
            .conv2
            .forward(&swish(&self.norm2.forward(&h, quant)?)?)?;
        let residual = match &self.nin_shortcut {
            Some(c) => c.forward(xs)?,
            None => xs.clone(),
        };
        residual + h
    }
}

/// Single-head self-attention over the H·W positions, q/k/v/out as 1x1
/// convs, scaled by C^-1/2, added to the input.
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(c, vb.pp("norm"))?,
            q: conv(c, c, 1, 1, 0, vb.pp("q"))?,
            k: conv(c, c, 1, 1, 0, vb.pp("k"))?,
            v: conv(c, c, 1, 1, 0, vb.pp("v"))?,
            proj_out: conv(c, c, 1, 1, 0, vb.pp("proj_out"))?,
        })
    }

    /// # Shapes
    /// (B, C, H, W) -> (B, C, H, W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        // (B, C, H, W) -> (B, C, HW) -> (B, HW, C)
        let q = self
            .q
            .forward(&normed)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        // (B, C, H, W) -> (B, C, HW)
        let k = self.k.forward(&normed)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&normed)?.reshape((b, c, h * w))?;
        // (B, HW query, HW key)
        let weights = softmax_last_dim(&(q.matmul(&k)? * (c as f64).powf(-0.5))?)?;
        // (B, C, HW key) x (B, HW key, HW query) -> (B, C, HW) -> (B, C, H, W)
        let out = v
            .matmul(&weights.transpose(1, 2)?.contiguous()?)?
            .reshape((b, c, h, w))?;
        xs + self.proj_out.forward(&out)?
    }
}

/// Halves each side: zero padding on the bottom and right only, then a
/// stride-2 3x3 conv (torch convs pad symmetrically, hence the explicit pad).
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(c, c, 3, 2, 0, vb.pp("conv"))?,
        })
    }

    /// # Shapes
    /// (B, C, H, W) -> (B, C, ⌊(H-2)/2⌋+1, ⌊(W-2)/2⌋+1)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let padded = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
        self.conv.forward(&padded)
    }
}

/// Doubles each side: nearest-neighbour upsampling, then a 3x3 conv.
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(c, c, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    /// # Shapes
    /// (B, C, H, W) -> (B, C, 2H, 2W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        self.conv.forward(&xs.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// The middle of encoder and decoder: res block, optional attention, res block.
pub struct MidBlock {
    block_1: ResnetBlock,
    attn_1: Option<AttnBlock>,
    block_2: ResnetBlock,
}

impl MidBlock {
    pub fn new(c: usize, attn: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(c, c, vb.pp("block_1"))?,
            attn_1: attn
                .then(|| AttnBlock::new(c, vb.pp("attn_1")))
                .transpose()?,
            block_2: ResnetBlock::new(c, c, vb.pp("block_2"))?,
        })
    }

    /// # Shapes
    /// (B, C, H, W) -> (B, C, H, W)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = self.block_1.forward(xs)?;
        if let Some(a) = &self.attn_1 {
            h = a.forward(&h)?;
        }
        self.block_2.forward(&h)
    }
}
