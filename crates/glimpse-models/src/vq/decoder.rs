//! The VQGAN decoder (transformers' `JanusVQVAEDecoder`): conv_in from
//! `latent_channels`, the middle, levels from the deepest up (one res block
//! more per level than the encoder, attention where the config says, an
//! upsample after every level but the shallowest), norm → swish → conv_out.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};

use super::blocks::{conv, group_norm, swish, AttnBlock, MidBlock, ResnetBlock, Upsample};
use super::config::VqConfig;

/// One level on the way up (`up.{k}`, k = 0 the deepest).
struct Level {
    block: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    upsample: Option<Upsample>,
}

pub struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.levels();
        let mut c_in = cfg.channels(levels - 1);
        let conv_in = conv(cfg.latent_channels, c_in, 3, 1, 1, vb.pp("conv_in"))?;
        let mid = MidBlock::new(c_in, cfg.mid_attn, vb.pp("mid"))?;
        let mut up = Vec::with_capacity(levels);
        for k in 0..levels {
            let level = levels - 1 - k;
            let vl = vb.pp("up").pp(k);
            let c_out = cfg.channels(level);
            let mut block = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut attn = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                block.push(ResnetBlock::new(c_in, c_out, vl.pp("block").pp(j))?);
                c_in = c_out;
                if cfg.attn_levels[level] {
                    attn.push(AttnBlock::new(c_out, vl.pp("attn").pp(j))?);
                }
            }
            let upsample = (level != 0)
                .then(|| Upsample::new(c_in, vl.pp("upsample")))
                .transpose()?;
            up.push(Level {
                block,
                attn,
                upsample,
            });
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: group_norm(c_in, vb.pp("norm_out"))?,
            conv_out: conv(c_in, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// # Shapes
    /// (B, latent_channels, h, w) -> (B, out_channels, h·f, w·f)
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(latents)?)?;
        for level in &self.up {
            for (j, block) in level.block.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(a) = level.attn.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(u) = &level.upsample {
                h = u.forward(&h)?;
            }
        }
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)?)?)
    }
}
