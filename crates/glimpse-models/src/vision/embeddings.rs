//! Patch + position embeddings (HF `CLIPVisionEmbeddings`, `SiglipVisionEmbeddings`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::{VitConfig, VitFlavor};
use crate::nn::interpolate::bicubic_resize_grid;

pub struct VisionEmbeddings {
    /// Conv weight flattened to (D, C·p·p): a stride-p, kernel-p convolution
    /// is one matmul over non-overlapping patches, which is faster than a
    /// general conv on CPU and gives the same numbers.
    patch_weight: Tensor,
    patch_bias: Option<Tensor>,
    class_embedding: Option<Tensor>,
    position_embedding: Embedding,
    patch_size: usize,
    num_channels: usize,
    /// Patches per side of the trained position grid.
    grid: usize,
}

impl VisionEmbeddings {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.encoder.hidden_size;
        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let grid = cfg.grid();
        let conv = vb.pp("patch_embedding");
        // Hints only matter when the builder creates variables (training
        // from scratch): a loaded checkpoint supplies every value.
        let weight = conv.get_with_hints(
            (d, c, p, p),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let class_hint = candle_nn::Init::Randn {
            mean: 0.,
            stdev: (d as f64).powf(-0.5),
        };
        let (patch_bias, class_embedding, positions) = match cfg.flavor {
            VitFlavor::Clip => (
                None,
                Some(vb.get_with_hints(d, "class_embedding", class_hint)?),
                grid * grid + 1,
            ),
            VitFlavor::Siglip => (Some(conv.get(d, "bias")?), None, grid * grid),
        };
        Ok(Self {
            patch_weight: weight.reshape((d, c * p * p))?,
            patch_bias,
            class_embedding,
            position_embedding: crate::nn::linear::embedding(
                positions,
                d,
                vb.pp("position_embedding"),
            )?,
            patch_size: p,
            num_channels: c,
            grid,
        })
    }

    /// Position embeddings for a `gh` x `gw` patch grid, bicubically
    /// interpolated from the trained grid when it differs (as transformers
    /// does with `interpolate_pos_encoding=True`).
    ///
    /// # Shapes
    /// returns (1, [1 +] gh·gw, D)
    fn positions(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let table = self.position_embedding.embeddings();
        let d = table.dim(1)?;
        let cls = usize::from(self.class_embedding.is_some());
        if (gh, gw) == (self.grid, self.grid) {
            return table.unsqueeze(0);
        }
        // (grid², D) -> (grid, grid, D) -> (gh, gw, D) -> (gh·gw, D)
        let patch_table = table.narrow(0, cls, self.grid * self.grid)?;
        let grid = patch_table.reshape((self.grid, self.grid, d))?;
        let resized = bicubic_resize_grid(&grid, gh, gw)?.reshape((gh * gw, d))?;
        let full = if cls == 1 {
            Tensor::cat(&[&table.narrow(0, 0, 1)?, &resized], 0)?
        } else {
            resized
        };
        full.unsqueeze(0)
    }

    /// # Shapes
    /// `pixels`: (B, C, H, W) -> (B, [1 +] (H/p)·(W/p), D); trailing pixels
    /// that do not fill a patch are dropped, as the strided conv does.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (xs, gh, gw) = self.patch_embeds(pixels)?;
        let (b, _, d) = xs.dims3()?;
        let mut xs = xs;
        if let Some(cls) = &self.class_embedding {
            // (D) -> (B, 1, D), prepended to the patch sequence
            let cls = cls.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
            xs = Tensor::cat(&[&cls.to_dtype(xs.dtype())?, &xs], 1)?;
        }
        xs.broadcast_add(&self.positions(gh, gw)?)
    }

    /// Patches plus the position rows `position_ids` name (Idefics3's
    /// bucketed ids, [`super::patch_positions`]); towers without a class
    /// token only.
    ///
    /// # Shapes
    /// `pixels`: (B, C, H, W), `position_ids`: (B, (H/p)·(W/p)) u32 ->
    /// (B, (H/p)·(W/p), D)
    pub fn forward_at(&self, pixels: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        if self.class_embedding.is_some() {
            candle_core::bail!("position ids by patch need a tower without a class token (SigLIP)");
        }
        let (xs, _, _) = self.patch_embeds(pixels)?;
        let positions = self.position_embedding.forward(position_ids)?;
        let dtype = xs.dtype();
        xs + positions.to_dtype(dtype)?
    }

    /// The patch convolution as a matmul.
    ///
    /// # Shapes
    /// `pixels`: (B, C, H, W) -> ((B, gh·gw, D), gh, gw)
    fn patch_embeds(&self, pixels: &Tensor) -> Result<(Tensor, usize, usize)> {
        let (b, c, h, w) = pixels.dims4()?;
        if c != self.num_channels {
            candle_core::bail!(
                "pixel tensor has {c} channels, the vision tower takes {}",
                self.num_channels
            );
        }
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        if gh == 0 || gw == 0 {
            candle_core::bail!("image {h}x{w} is smaller than one {p}x{p} patch");
        }
        let d = self.patch_weight.dim(0)?;
        let pixels = pixels.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        // (B, C, gh, p, gw, p) -> (B, gh, gw, C, p, p) -> (B·gh·gw, C·p·p)
        let patches = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        // (B·gh·gw, C·p·p) x (C·p·p, D) -> (B, gh·gw, D); as a Linear, so
        // training takes its one-node path (and computes no pixel gradient)
        let xs = crate::nn::Linear::new(self.patch_weight.clone(), self.patch_bias.clone())
            .forward(&patches)?;
        Ok((xs.reshape((b, gh * gw, d))?, gh, gw))
    }

    /// Patch size and the trained grid's side.
    pub fn patch_grid(&self) -> (usize, usize) {
        (self.patch_size, self.grid)
    }
}
