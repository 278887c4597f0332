//! Emu3's VQ-VAE (transformers' `Emu3VQVAE`): the 2D VQGAN run on every
//! frame, temporal convs after the encoder and before the decoder,
//! multi-head attention with linear projections (norm and residual around
//! it), and a decoder whose norms are modulated by the codes' latents. An
//! image is a clip of `temporal_downsample_factor` copies of itself, which
//! the encoder's temporal downsampling folds into one code frame.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};

use super::blocks::{conv, group_norm, swish, Downsample, Norm, ResnetBlock, Upsample};
use super::config::VqConfig;
use super::temporal::{temporal_downsample, Conv3d, TemporalResnetBlock, TemporalUpsample};
use crate::nn::SelfAttention;

/// norm → multi-head self-attention over the H·W positions → + input.
struct Attention {
    norm: Norm,
    attn: SelfAttention,
}

impl Attention {
    fn new(cfg: &VqConfig, norm: Norm, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm,
            attn: SelfAttention::new(cfg.attn_hidden, cfg.attn_heads, vb)?,
        })
    }

    /// # Shapes
    /// `xs`: (N, C, H, W), `quant`: (N, E, h, w) -> (N, C, H, W)
    fn forward(&self, xs: &Tensor, quant: Option<&Tensor>) -> Result<Tensor> {
        let (n, c, h, w) = xs.dims4()?;
        // (N, C, H, W) -> (N, C, HW) -> (N, HW, C)
        let seq = self
            .norm
            .forward(xs, quant)?
            .reshape((n, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        // (N, HW, C) -> (N, C, HW) -> (N, C, H, W)
        let out = self
            .attn
            .forward(&seq, None)?
            .transpose(1, 2)?
            .reshape((n, c, h, w))?;
        xs + out
    }
}

/// res block, attention, res block (`middle_block`).
struct Middle {
    block_1: ResnetBlock,
    attn: Attention,
    block_2: ResnetBlock,
}

impl Middle {
    fn new(cfg: &VqConfig, c: usize, quant: Option<usize>, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new_with(c, c, quant, vb.pp("block_1"))?,
            attn: Attention::new(
                cfg,
                Norm::new(c, quant, vb.pp("attn_norm"))?,
                vb.pp("attn_1"),
            )?,
            block_2: ResnetBlock::new_with(c, c, quant, vb.pp("block_2"))?,
        })
    }

    /// # Shapes
    /// `xs`: (N, C, H, W), `quant`: (N, E, h, w) or none -> (N, C, H, W)
    fn forward(&self, xs: &Tensor, quant: Option<&Tensor>) -> Result<Tensor> {
        let h = self.block_1.forward_with(xs, quant)?;
        let h = self.attn.forward(&h, quant)?;
        self.block_2.forward_with(&h, quant)
    }
}

/// One resolution level: res blocks (each followed by attention where the
/// config says) and the resampling after them.
struct Level {
    block: Vec<ResnetBlock>,
    attn: Vec<Attention>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

impl Level {
    /// # Shapes
    /// (N, C_in, H, W) -> (N, C_out, H', W'), H' = H/2 after a downsample,
    /// 2H after an upsample
    fn forward(&self, xs: &Tensor, quant: Option<&Tensor>) -> Result<Tensor> {
        let mut h = xs.clone();
        for (j, block) in self.block.iter().enumerate() {
            h = block.forward_with(&h, quant)?;
            if let Some(a) = self.attn.get(j) {
                h = a.forward(&h, quant)?;
            }
        }
        if let Some(d) = &self.down {
            h = d.forward(&h)?;
        }
        if let Some(u) = &self.up {
            h = u.forward(&h)?;
        }
        Ok(h)
    }
}

pub struct Emu3Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    middle: Middle,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    time_conv: Vec<Conv3d>,
    time_res_stack: Vec<TemporalResnetBlock>,
}

impl Emu3Encoder {
    fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.levels();
        let mut c_in = cfg.base_channels;
        let mut down = Vec::with_capacity(levels);
        for i in 0..levels {
            let vl = vb.pp("down_block").pp("down").pp(i);
            let c_out = cfg.channels(i);
            let (mut block, mut attn) = (vec![], vec![]);
            for j in 0..cfg.num_res_blocks {
                block.push(ResnetBlock::new(c_in, c_out, vl.pp("block").pp(j))?);
                c_in = c_out;
                if cfg.attn_levels[i] {
                    let norm = Norm::new(c_out, None, vl.pp("attn_norms").pp(j))?;
                    attn.push(Attention::new(cfg, norm, vl.pp("attn").pp(j))?);
                }
            }
            let down_conv = (i + 1 < levels)
                .then(|| Downsample::new(c_in, vl.pp("downsample")))
                .transpose()?;
            down.push(Level {
                block,
                attn,
                down: down_conv,
                up: None,
            });
        }
        let latent = cfg.latent_channels;
        let steps = cfg.temporal_downsample_factor.trailing_zeros() as usize;
        Ok(Self {
            conv_in: conv(
                cfg.in_channels,
                cfg.base_channels,
                3,
                1,
                1,
                vb.pp("conv_in"),
            )?,
            down,
            middle: Middle::new(cfg, c_in, None, vb.pp("middle_block"))?,
            norm_out: group_norm(c_in, vb.pp("norm_out"))?,
            conv_out: conv(c_in, latent, 3, 1, 1, vb.pp("conv_out"))?,
            time_conv: (0..steps)
                .map(|i| temporal_downsample(latent, vb.pp("time_conv").pp(i)))
                .collect::<Result<_>>()?,
            time_res_stack: (0..cfg.num_res_blocks)
                .map(|i| TemporalResnetBlock::new(latent, vb.pp("time_res_stack").pp(i)))
                .collect::<Result<_>>()?,
        })
    }

    /// # Shapes
    /// (B, T, C, H, W) -> (B, T/t, latent, H/f, W/f)
    fn forward(&self, clip: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = clip.dims5()?;
        // (B, T, C, H, W) -> (B·T, C, H, W): the 2D part frame by frame
        let mut x = self.conv_in.forward(&clip.reshape((b * t, c, h, w))?)?;
        for level in &self.down {
            x = level.forward(&x, None)?;
        }
        let x = self.middle.forward(&x, None)?;
        let x = self
            .conv_out
            .forward(&swish(&self.norm_out.forward(&x)?)?)?;
        let (_, cl, hl, wl) = x.dims4()?;
        // (B·T, latent, h, w) -> (B, T, latent, h, w)
        let mut x = x.reshape((b, t, cl, hl, wl))?;
        for conv in &self.time_conv {
            x = swish(&conv.forward(&x)?)?;
        }
        for block in &self.time_res_stack {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}

pub struct Emu3Decoder {
    time_res_stack: Vec<TemporalResnetBlock>,
    time_conv: Vec<TemporalUpsample>,
    conv_in: Conv2d,
    middle: Middle,
    /// Deepest level first.
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv2d,
}

impl Emu3Decoder {
    fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.levels();
        let latent = cfg.latent_channels;
        let quant = Some(cfg.embed_dim);
        let steps = cfg.temporal_downsample_factor.trailing_zeros() as usize;
        let mut c_in = cfg.channels(levels - 1);
        let conv_in = conv(latent, c_in, 3, 1, 1, vb.pp("conv_in"))?;
        let middle = Middle::new(cfg, c_in, quant, vb.pp("middle_block"))?;
        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            // `up.{level}`: transformers inserts each level at the front
            let vl = vb.pp("up_block").pp("up").pp(level);
            let c_out = cfg.channels(level);
            let (mut block, mut attn) = (vec![], vec![]);
            for j in 0..=cfg.num_res_blocks {
                block.push(ResnetBlock::new_with(
                    c_in,
                    c_out,
                    quant,
                    vl.pp("block").pp(j),
                )?);
                c_in = c_out;
                if cfg.attn_levels[level] {
                    let norm = Norm::new(c_out, quant, vl.pp("attn_norms").pp(j))?;
                    attn.push(Attention::new(cfg, norm, vl.pp("attn").pp(j))?);
                }
            }
            let upsample = (level != 0)
                .then(|| Upsample::new(c_in, vl.pp("upsample")))
                .transpose()?;
            up.push(Level {
                block,
                attn,
                down: None,
                up: upsample,
            });
        }
        Ok(Self {
            time_res_stack: (0..cfg.num_res_blocks)
                .map(|i| TemporalResnetBlock::new(latent, vb.pp("time_res_stack").pp(i)))
                .collect::<Result<_>>()?,
            time_conv: (0..steps)
                .map(|i| TemporalUpsample::new(latent, vb.pp("time_conv").pp(i)))
                .collect::<Result<_>>()?,
            conv_in,
            middle,
            up,
            norm_out: Norm::new(c_in, quant, vb.pp("norm_out"))?,
            conv_out: conv(c_in, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// # Shapes
    /// `post_quant`, `quant`: (B, T', E, h, w) -> (B, T'·t, out, h·f, w·f)
    fn forward(&self, post_quant: &Tensor, quant: &Tensor) -> Result<Tensor> {
        let b = post_quant.dim(0)?;
        // both run through the temporal layers, stacked on the batch
        let mut x = Tensor::cat(&[post_quant, quant], 0)?;
        for block in &self.time_res_stack {
            x = block.forward(&x)?;
        }
        for up in &self.time_conv {
            x = swish(&up.forward(&x)?)?;
        }
        let (_, t, c, h, w) = x.dims5()?;
        // (2B, T, C, h, w) -> two (B·T, C, h, w)
        let hidden = x.narrow(0, 0, b)?.reshape((b * t, c, h, w))?;
        let quant = x.narrow(0, b, b)?.reshape((b * t, c, h, w))?;
        let mut y = self
            .middle
            .forward(&self.conv_in.forward(&hidden)?, Some(&quant))?;
        for level in &self.up {
            y = level.forward(&y, Some(&quant))?;
        }
        let y = self
            .conv_out
            .forward(&swish(&self.norm_out.forward(&y, Some(&quant))?)?)?;
        let (_, co, ho, wo) = y.dims4()?;
        // (B·T, out, H, W) -> (B, T, out, H, W)
        y.reshape((b, t, co, ho, wo))
    }
}

/// Emu3's tokenizer without its quantiser (which `VqModel` shares).
pub struct Emu3Vq {
    pub(crate) encoder: Emu3Encoder,
    pub(crate) decoder: Emu3Decoder,
    quant_conv: Conv3d,
    post_quant_conv: Conv3d,
    frames: usize,
}

impl Emu3Vq {
    /// `vb` at the VQ model (`encoder`, `decoder`, `quant_conv`, ... below it).
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let (l, e) = (cfg.latent_channels, cfg.embed_dim);
        Ok(Self {
            encoder: Emu3Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Emu3Decoder::new(cfg, vb.pp("decoder"))?,
            quant_conv: Conv3d::new(l, e, (3, 1), 1, vb.pp("quant_conv"))?,
            post_quant_conv: Conv3d::new(e, l, (3, 1), 1, vb.pp("post_quant_conv"))?,
            frames: cfg.temporal_downsample_factor,
        })
    }

    /// Images → latents of their single code frame.
    ///
    /// # Shapes
    /// (B, C, H, W) -> (B, E, H/f, W/f)
    pub fn latents(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        // (B, C, H, W) -> (B, T, C, H, W): the image repeated over the frames
        let clip = pixels
            .unsqueeze(1)?
            .broadcast_as((b, self.frames, c, h, w))?
            .contiguous()?;
        let z = self.quant_conv.forward(&self.encoder.forward(&clip)?)?;
        // the temporal downsampling left one frame: (B, 1, E, h, w) -> (B, E, h, w)
        z.narrow(1, 0, 1)?.squeeze(1)
    }

    /// Codebook rows of an image's codes → its pixels (the first frame of
    /// the decoded clip, as `Emu3VQVAE.decode` returns for an image).
    ///
    /// # Shapes
    /// (B, E, h, w) -> (B, out, h·f, w·f)
    pub fn decode_latents(&self, quant: &Tensor) -> Result<Tensor> {
        // (B, E, h, w) -> (B, 1, E, h, w)
        let quant = quant.unsqueeze(1)?;
        let post = self.post_quant_conv.forward(&quant)?;
        let clip = self.decoder.forward(&post, &quant)?;
        clip.narrow(1, 0, 1)?.squeeze(1)
    }
}
