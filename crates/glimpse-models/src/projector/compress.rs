//! Visual-token compression on a square patch grid, before projection:
//! 2×2 average pooling, or 2×2 pixel shuffle (space-to-depth) in the layout
//! of Idefics3's `pixel_shuffle` and InternVL's (`ps_version` v2).
//!
//! With `vision_feature_select_strategy = "full"` a CLIP tower hands over
//! its class token ahead of the grid (g² + 1 tokens; g² + 1 is never a
//! square for g > 0, so the count says which). Average pooling passes that
//! token through unpooled, first: the decoder gets the contrastively trained
//! summary of the whole image in one row beside the pooled patches. Pixel
//! shuffle cannot (its rows are 4× wider) and refuses it.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCompression {
    /// Features pass unchanged.
    #[default]
    None,
    /// Mean of each 2×2 block of patches: (B, g², D) -> (B, (g/2)², D).
    #[serde(rename = "avg_pool2x2")]
    AvgPool2x2,
    /// Each 2×2 block of patches stacked along the width:
    /// (B, g², D) -> (B, (g/2)², 4D). Output channel `(2i + j)·D + d` of
    /// block (r, c) is feature `d` of patch (2r + i, 2c + j).
    #[serde(rename = "pixel_shuffle2x2")]
    PixelShuffle2x2,
}

impl TokenCompression {
    /// Feature width after compression: ×4 for pixel shuffle.
    pub fn out_width(self, width: usize) -> usize {
        match self {
            Self::PixelShuffle2x2 => 4 * width,
            Self::None | Self::AvgPool2x2 => width,
        }
    }

    /// Token count after compression; an error if the tokens do not form
    /// a square grid with an even side (after a class token, for pooling).
    pub fn out_tokens(self, num_patches: usize) -> Result<usize> {
        match self {
            Self::None => Ok(num_patches),
            Self::AvgPool2x2 | Self::PixelShuffle2x2 => {
                let (cls, g) = self.layout(num_patches)?;
                Ok(cls + (g / 2) * (g / 2))
            }
        }
    }

    /// (class tokens, grid side) of `n` tokens: 0 and g for g² patches,
    /// 1 and g for a class token and g² patches (pooling only).
    fn layout(self, n: usize) -> Result<(usize, usize)> {
        let square = |k: usize| k.isqrt() * k.isqrt() == k;
        if n > 1 && !square(n) && square(n - 1) {
            if self == Self::PixelShuffle2x2 {
                return Err(ModelError::Input(format!(
                    "pixel shuffle needs patches only, got {n} tokens (a class token and a {0}x{0} grid); use vision_feature_select_strategy \"default\"",
                    (n - 1).isqrt()
                )));
            }
            return Ok((1, even_grid(n - 1)?));
        }
        Ok((0, even_grid(n)?))
    }

    /// # Shapes
    /// `xs`: (B, N = g², D) -> (B, N, D) for `None`, (B, (g/2)², D) for
    /// `AvgPool2x2`, (B, (g/2)², 4D) for `PixelShuffle2x2`. Patches are in
    /// row-major grid order, as ViTs emit them. `AvgPool2x2` also takes
    /// (B, 1 + g², D), a class token first: -> (B, 1 + (g/2)², D).
    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        if self == Self::None {
            return Ok(xs.clone());
        }
        let (b, n, d) = xs.dims3().map_err(|_| {
            ModelError::Input(format!("features {:?} are not (B, N, D)", xs.dims()))
        })?;
        let (cls, g) = self.layout(n)?;
        if cls == 1 {
            // (B, 1, D) ++ (B, g², D) pooled -> (B, 1 + (g/2)², D)
            let pooled = self.forward(&xs.narrow(1, 1, n - 1)?)?;
            return Ok(Tensor::cat(&[&xs.narrow(1, 0, 1)?, &pooled], 1)?);
        }
        let h = g / 2;
        // (B, g², D) -> (B, g/2, 2, g/2, 2, D): [row block, row in block, col block, col in block]
        let blocks = xs.reshape((b, h, 2, h, 2, d))?;
        Ok(match self {
            Self::None => xs.clone(),
            Self::AvgPool2x2 => {
                // mean over the two in-block axes: (B, g/2, g/2, D) -> (B, (g/2)², D)
                blocks.mean(4)?.mean(2)?.reshape((b, h * h, d))?
            }
            Self::PixelShuffle2x2 => {
                // (B, g/2, 2, g/2, 2, D) -> (B, g/2, g/2, 2, 2, D) -> (B, (g/2)², 4D)
                blocks
                    .permute((0, 1, 3, 2, 4, 5))?
                    .contiguous()?
                    .reshape((b, h * h, 4 * d))?
            }
        })
    }
}

/// Side of the square grid of `n` patches, which must be even.
fn even_grid(n: usize) -> Result<usize> {
    let g = n.isqrt();
    if g * g != n {
        return Err(ModelError::Input(format!(
            "2x2 token compression needs a square grid of patches, got {n} patches"
        )));
    }
    if g == 0 || !g.is_multiple_of(2) {
        return Err(ModelError::Input(format!(
            "2x2 token compression needs an even grid side, got {g}x{g} patches"
        )));
    }
    Ok(g)
}
