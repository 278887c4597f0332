//! LLaVA-NeXT's packing of one image's tile features (transformers'
//! `LlavaNextModel.pack_image_features`, "spatial_unpad"): the whole-image
//! tile's rows first, then the crops' features laid out as one picture,
//! the padding rows or columns `unpad_image` cuts removed, and
//! `image_newline` after every row.

use candle_core::{Tensor, D};
use glimpse_data::anyres::AnyresGrid;

use crate::error::{ModelError, Result};

/// # Shapes
/// `tiles`: (1 + rows·cols, f·f, D) projected features, the whole image
/// first, crops row by row; `newline`: (D,) -> (f·f + r·(c + 1), D), r x c
/// the unpadded feature grid
pub fn pack_image_features(
    tiles: &Tensor,
    grid: &AnyresGrid,
    f: usize,
    newline: &Tensor,
) -> Result<Tensor> {
    let (n, tokens, d) = tiles.dims3()?;
    if n != 1 + grid.tiles() || tokens != f * f {
        return Err(ModelError::Input(format!(
            "{n} tiles of {tokens} features for a {}x{} image in a {}x{} grid of {f}x{f}-feature tiles (expected {} tiles of {})",
            grid.image.1,
            grid.image.0,
            grid.rows,
            grid.cols,
            1 + grid.tiles(),
            f * f
        )));
    }
    let base = tiles.get(0)?;
    // (R·C, f·f, D) -> (R, C, f, f, D) -> (R, f, C, f, D) -> (R·f, C·f, D):
    // feature (y, x) of crop (i, j) lands at (i·f + y, j·f + x)
    let picture = tiles
        .narrow(0, 1, grid.tiles())?
        .reshape((grid.rows, grid.cols, f, f, d))?
        .permute((0, 2, 1, 3, 4))?
        .reshape((grid.rows * f, grid.cols * f, d))?;
    let keep = grid.unpadded(f);
    let picture = picture
        .narrow(0, keep.top, keep.rows)?
        .narrow(1, keep.left, keep.cols)?;
    // one newline column: (D,) -> (r, 1, D), then (r, c + 1, D) -> (r·(c + 1), D)
    let newline = newline
        .to_dtype(picture.dtype())?
        .reshape((1, 1, d))?
        .broadcast_as((keep.rows, 1, d))?;
    let rows =
        Tensor::cat(&[&picture, &newline], D::Minus2)?.reshape((keep.rows * (keep.cols + 1), d))?;
    Ok(Tensor::cat(&[&base, &rows], 0)?)
}
