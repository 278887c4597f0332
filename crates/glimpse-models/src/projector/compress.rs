//! Visual-token compression on a square patch grid, before projection:
//! 2×2 average pooling, or s×s pixel shuffle (space-to-depth) in the layout
//! of Idefics3's / SmolVLM's `pixel_shuffle` (their `scale_factor`) and
//! InternVL's (`ps_version` v2, s = 2).
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
    /// Each s×s block stacked along the width (Idefics3's connector with
    /// `scale_factor` s): (B, g², D) -> (B, (g/s)², s²D), output channel
    /// `(s·i + j)·D + d` of block (r, c) = feature `d` of patch
    /// (s·r + i, s·c + j). `PixelShuffle2x2` is the s = 2 case.
    #[serde(rename = "pixel_shuffle")]
    PixelShuffle { scale_factor: usize },
}

impl TokenCompression {
    /// The pixel shuffle's block side, `None` for the other kinds.
    fn shuffle(self) -> Option<usize> {
        match self {
            Self::PixelShuffle2x2 => Some(2),
            Self::PixelShuffle { scale_factor } => Some(scale_factor),
            Self::None | Self::AvgPool2x2 => None,
        }
    }

    /// Side of the blocks the grid is cut into (1 when uncompressed).
    fn block(self) -> usize {
        self.shuffle().unwrap_or(match self {
            Self::AvgPool2x2 => 2,
            _ => 1,
        })
    }

    /// Feature width after compression: ×s² for pixel shuffle.
    pub fn out_width(self, width: usize) -> usize {
        match self.shuffle() {
            Some(s) => s.saturating_mul(s).saturating_mul(width),
            None => width,
        }
    }

    /// Token count after compression; an error if the tokens do not form
    /// a square grid with an even side (after a class token, for pooling).
    pub fn out_tokens(self, num_patches: usize) -> Result<usize> {
        match self {
            Self::None => Ok(num_patches),
            _ => {
                let (cls, g) = self.layout(num_patches)?;
                let s = self.block();
                Ok(cls + (g / s) * (g / s))
            }
        }
    }

    /// (class tokens, grid side) of `n` tokens: 0 and g for g² patches,
    /// 1 and g for a class token and g² patches (pooling only).
    fn layout(self, n: usize) -> Result<(usize, usize)> {
        let square = |k: usize| k.isqrt() * k.isqrt() == k;
        if n > 1 && !square(n) && square(n - 1) {
            if self.shuffle().is_some() {
                return Err(ModelError::Input(format!(
                    "pixel shuffle needs patches only, got {n} tokens (a class token and a {0}x{0} grid); use vision_feature_select_strategy \"default\"",
                    (n - 1).isqrt()
                )));
            }
            return Ok((1, block_grid(n - 1, self.block())?));
        }
        Ok((0, block_grid(n, self.block())?))
    }

    /// # Shapes
    /// `xs`: (B, N = g², D) -> (B, N, D) for `None`, (B, (g/2)², D) for
    /// `AvgPool2x2`, (B, (g/s)², s²D) for pixel shuffle (s = 2 for
    /// `PixelShuffle2x2`). Patches are in row-major grid order, as ViTs emit
    /// them. `AvgPool2x2` also takes (B, 1 + g², D), a class token first:
    /// -> (B, 1 + (g/2)², D).
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
        let s = self.block();
        let h = g / s;
        // (B, g², D) -> (B, g/s, s, g/s, s, D): [row block, row in block, col block, col in block]
        let blocks = xs.reshape((b, h, s, h, s, d))?;
        Ok(match self.shuffle() {
            None => {
                // AvgPool2x2, mean over the two in-block axes: (B, g/2, g/2, D) -> (B, (g/2)², D)
                blocks.mean(4)?.mean(2)?.reshape((b, h * h, d))?
            }
            Some(_) => {
                // (B, g/s, s, g/s, s, D) -> (B, g/s, g/s, s, s, D) -> (B, (g/s)², s²D)
                blocks
                    .permute((0, 1, 3, 2, 4, 5))?
                    .contiguous()?
                    .reshape((b, h * h, s * s * d))?
            }
        })
    }
}

/// Side of the square grid of `n` patches, which must be a multiple of the
/// block side `s` (even, for 2x2).
fn block_grid(n: usize, s: usize) -> Result<usize> {
    let g = n.isqrt();
    if g * g != n {
        return Err(ModelError::Input(format!(
            "{s}x{s} token compression needs a square grid of patches, got {n} patches"
        )));
    }
    if s == 0 || g == 0 || !g.is_multiple_of(s) {
        let what = if s == 2 {
            "an even grid side".to_string()
        } else {
            format!("a grid side divisible by {s}")
        };
        return Err(ModelError::Input(format!(
            "{s}x{s} token compression needs {what}, got {g}x{g} patches"
        )));
    }
    Ok(g)
}
