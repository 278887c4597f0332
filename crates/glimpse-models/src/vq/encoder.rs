//! The VQGAN encoder (transformers' `ChameleonVQVAEEncoder` /
//! `JanusVQVAEEncoder`): conv_in, per level res blocks (each followed by
//! attention where the config says) and a downsample between levels, the
//! middle, then norm → swish → conv_out to `latent_channels`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};

use super::blocks::{conv, group_norm, swish, AttnBlock, Downsample, MidBlock, ResnetBlock};
use super::config::VqConfig;

/// One resolution level (`down.{i}`).
struct Level {
    block: Vec<ResnetBlock>,
    /// Empty, or one per res block.
    attn: Vec<AttnBlock>,
    downsample: Option<Downsample>,
}

pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.levels();
        let conv_in = conv(
            cfg.in_channels,
            cfg.base_channels,
            3,
            1,
            1,
            vb.pp("conv_in"),
        )?;
        let mut c_in = cfg.base_channels;
        let mut down = Vec::with_capacity(levels);
        for i in 0..levels {
            let vl = vb.pp("down").pp(i);
            let c_out = cfg.channels(i);
            let mut block = Vec::with_capacity(cfg.num_res_blocks);
            let mut attn = Vec::new();
            for j in 0..cfg.num_res_blocks {
                block.push(ResnetBlock::new(c_in, c_out, vl.pp("block").pp(j))?);
                c_in = c_out;
                if cfg.attn_levels[i] {
                    attn.push(AttnBlock::new(c_out, vl.pp("attn").pp(j))?);
                }
            }
            let downsample = (i + 1 < levels)
                .then(|| Downsample::new(c_in, vl.pp("downsample")))
                .transpose()?;
            down.push(Level {
                block,
                attn,
                downsample,
            });
        }
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(c_in, cfg.mid_attn, vb.pp("mid"))?,
            norm_out: group_norm(c_in, vb.pp("norm_out"))?,
            conv_out: conv(c_in, cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// # Shapes
    /// (B, in_channels, H, W) -> (B, latent_channels, H/f, W/f), f the
    /// downsample factor
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(pixels)?;
        for level in &self.down {
            for (j, block) in level.block.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(a) = level.attn.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(d) = &level.downsample {
                h = d.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)?)?)
    }
}
