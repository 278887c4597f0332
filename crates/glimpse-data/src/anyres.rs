//! LLaVA-NeXT's "anyres" tiling, as transformers 5.23 computes it: the grid
//! resolution an image is fitted into (`select_best_resolution`), the aspect
//! preserving resize and centred zero padding into it
//! (`LlavaNextImageProcessorPil`), the crops plus the whole image resized,
//! and the feature grid that survives `unpad_image`, which gives both the
//! processor's placeholder count (`LlavaNextProcessor._get_number_of_features`)
//! and the rows the model packs. One copy of this arithmetic serves the
//! processor here and the model in `glimpse-models`.

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::pil_resize::resize;
use crate::preprocess::preprocess;
use crate::processor_config::{ProcessorConfig, SizeSpec, MAX_PROCESSOR_SIDE};

/// Most crops one pinpoint may cut (12 x 12; released checkpoints use up to
/// 6 x 6): each is a tower pass, and the grid is allocated from it.
pub const MAX_TILES: usize = 144;
/// Most pinpoints a config may list (released ones list 5 to 36).
pub const MAX_PINPOINTS: usize = 1024;
/// Largest pinpoint canvas (h·w), the same bound a plain resize has.
const MAX_PINPOINT_PIXELS: usize = 1 << 24;

/// `image_grid_pinpoints`: the resolutions, `(height, width)`, an image may be
/// fitted into, in the order transformers tries them (the first of equals wins).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct GridPinpoints(pub Vec<(usize, usize)>);

impl TryFrom<Value> for GridPinpoints {
    type Error = String;

    fn try_from(v: Value) -> std::result::Result<Self, String> {
        let bad =
            || format!("expected a list of [height, width] pairs of positive integers, got {v}");
        let items = v.as_array().ok_or_else(bad)?;
        if items.is_empty() || items.len() > MAX_PINPOINTS {
            return Err(format!(
                "has {} entries; expected 1..={MAX_PINPOINTS} [height, width] pairs",
                items.len()
            ));
        }
        let pairs = items
            .iter()
            .map(|p| match p.as_array().map(Vec::as_slice) {
                Some([h, w]) => Some((h.as_u64()?, w.as_u64()?)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        let side = |n: u64| usize::try_from(n).ok().filter(|&n| n >= 1);
        let pairs = pairs
            .into_iter()
            .map(|(h, w)| Some((side(h)?, side(w)?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok(Self(pairs))
    }
}

impl GridPinpoints {
    /// `LlavaNextConfig` / `LlavaNextImageProcessor`'s default.
    pub fn llava_next_default() -> Self {
        Self(vec![
            (336, 672),
            (672, 336),
            (672, 672),
            (1008, 336),
            (336, 1008),
        ])
    }

    /// Every pinpoint a whole number of `tile`-sized crops, within bounds.
    /// transformers cuts a remainder into a smaller crop the processor then
    /// stretches, while the model counts whole tiles (floor) and fails to
    /// reshape; such a config is refused here instead.
    pub fn check(&self, tile: usize) -> std::result::Result<(), String> {
        for &(h, w) in &self.0 {
            if h > MAX_PROCESSOR_SIDE || w > MAX_PROCESSOR_SIDE || h * w > MAX_PINPOINT_PIXELS {
                return Err(format!(
                    "[{h}, {w}] is too large (each side at most {MAX_PROCESSOR_SIDE}, at most {MAX_PINPOINT_PIXELS} pixels)"
                ));
            }
            if tile == 0 || !h.is_multiple_of(tile) || !w.is_multiple_of(tile) {
                return Err(format!(
                    "[{h}, {w}] is not a whole number of {tile}x{tile} tiles (the crop size)"
                ));
            }
            let tiles = (h / tile) * (w / tile);
            if tiles > MAX_TILES {
                return Err(format!(
                    "[{h}, {w}] cuts {tiles} tiles of {tile}x{tile}; at most {MAX_TILES}"
                ));
            }
        }
        Ok(())
    }

    /// transformers' `select_best_resolution`: the pinpoint that keeps most of
    /// the image's pixels after fitting it (never counting more than it has),
    /// then the one that wastes least canvas; the first listed on a tie.
    /// f64 divisions and truncations in Python's order. An image so thin
    /// that every fit rounds its short side to 0 keeps nothing anywhere and
    /// gets the least wasteful pinpoint, as in transformers. `None` only for
    /// an empty list.
    pub fn best_resolution(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (oh, ow) = (h as f64, w as f64);
        let original = (h as u128) * (w as u128);
        let mut best = None;
        let (mut max_effective, mut min_wasted) = (0u128, i128::MAX);
        for &(ph, pw) in &self.0 {
            let (sw, sh) = (pw as f64 / ow, ph as f64 / oh);
            // Python's min(a, b) keeps a unless b < a
            let scale = if sh < sw { sh } else { sw };
            let (dw, dh) = ((ow * scale) as u128, (oh * scale) as u128);
            let effective = (dw * dh).min(original);
            let wasted = (ph as i128) * (pw as i128) - effective as i128;
            if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
                max_effective = effective;
                min_wasted = wasted;
                best = Some((ph, pw));
            }
        }
        best
    }
}

/// transformers' `get_patch_output_size`: the image resized to fit
/// `target` with its aspect kept (the limiting side exact, the other
/// rounded up, at most the target).
pub fn fit_size(h: usize, w: usize, target: (usize, usize)) -> (usize, usize) {
    let (th, tw) = target;
    let (scale_w, scale_h) = (tw as f64 / w as f64, th as f64 / h as f64);
    if scale_w < scale_h {
        (((h as f64 * scale_w).ceil() as usize).min(th), tw)
    } else {
        (th, ((w as f64 * scale_h).ceil() as usize).min(tw))
    }
}

/// Python's `int(round(x, 7))` for finite x >= 0. `round` rounds the exact
/// binary value to 7 decimals, so x rounds up to the integer n above it
/// exactly when n - x <= 5e-8 (a tie cannot happen: 5e-8 is not a dyadic
/// fraction), and the f64 nearest 5e-8 lies below it, so `<=` against it is
/// exact. n - x is exact for x >= n/2 (Sterbenz); below that it is far
/// above 5e-8 anyway.
fn int_round7(x: f64) -> usize {
    let n = x.ceil();
    if n - x <= 5e-8 {
        n as usize
    } else {
        x.floor() as usize
    }
}

/// The part of a (rows, cols) feature grid `unpad_image` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpadded {
    pub top: usize,
    pub rows: usize,
    pub left: usize,
    pub cols: usize,
}

/// transformers' `unpad_image` (and `_get_unpadded_features`) on a
/// `rows` x `cols` feature grid holding an `h` x `w` image that was fitted
/// and centred: the padding, computed from the original size with
/// `int(round(·, 7))`, cut from both sides. When the padding is odd the kept
/// band is one longer than the image's (transformers slices
/// `padding : current - padding`).
pub fn unpad(h: usize, w: usize, rows: usize, cols: usize) -> Unpadded {
    let (hf, wf) = (h as f64, w as f64);
    if wf / hf > cols as f64 / rows as f64 {
        let new_rows = int_round7(hf * (cols as f64 / wf));
        let pad = rows.saturating_sub(new_rows) / 2;
        Unpadded {
            top: pad,
            rows: rows - 2 * pad,
            left: 0,
            cols,
        }
    } else {
        let new_cols = int_round7(wf * (rows as f64 / hf));
        let pad = cols.saturating_sub(new_cols) / 2;
        Unpadded {
            top: 0,
            rows,
            left: pad,
            cols: cols - 2 * pad,
        }
    }
}

/// Where one image lands in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyresGrid {
    /// The image, (height, width).
    pub image: (usize, usize),
    /// The chosen pinpoint, (height, width).
    pub resolution: (usize, usize),
    /// Crops down and across.
    pub rows: usize,
    pub cols: usize,
}

impl AnyresGrid {
    /// The grid of an `h` x `w` image, or why no pinpoint fits it.
    pub fn new(
        h: usize,
        w: usize,
        pinpoints: &GridPinpoints,
        tile: usize,
    ) -> std::result::Result<Self, String> {
        let resolution = pinpoints
            .best_resolution(h, w)
            .ok_or_else(|| "image_grid_pinpoints is empty".to_string())?;
        Ok(Self {
            image: (h, w),
            resolution,
            rows: resolution.0 / tile.max(1),
            cols: resolution.1 / tile.max(1),
        })
    }

    /// Crops cut from the image (the whole-image base not counted).
    pub fn tiles(&self) -> usize {
        self.rows * self.cols
    }

    /// The features kept of the (rows·f, cols·f) grid of crop features, f
    /// features per crop side.
    pub fn unpadded(&self, f: usize) -> Unpadded {
        unpad(self.image.0, self.image.1, self.rows * f, self.cols * f)
    }

    /// Placeholders one image takes: the unpadded grid, one newline per row,
    /// and `base_tokens` for the whole image (what the tower's selected
    /// features of one tile are).
    pub fn image_tokens(&self, f: usize, base_tokens: usize) -> usize {
        let u = self.unpadded(f);
        u.rows * u.cols + u.rows + base_tokens
    }
}

/// The crop size, which is also the tile size (transformers: `crop_size`'s
/// height, else `size`'s height, else its shortest edge).
pub fn tile_size(cfg: &ProcessorConfig) -> usize {
    match (cfg.crop_size, cfg.size) {
        (Some(c), _) => c.height,
        (None, Some(SizeSpec::HeightWidth { height, .. })) => height,
        (None, Some(SizeSpec::ShortestEdge(s) | SizeSpec::LongestEdge(s))) => s,
        (None, None) => 0,
    }
}

/// `LlavaNextImageProcessorPil` on one image: the whole image resized to the
/// base size, then the crops of the image fitted into its pinpoint and
/// zero-padded (8-bit 0 before rescaling) to it, row by row; each of them
/// then through the plain processor (resize, crop, rescale, normalize).
///
/// # Shapes
/// returns (1 + tiles, 3, H, W) f32 on the CPU, with the grid it used
pub fn preprocess_anyres(
    img: &RgbImage,
    name: &str,
    cfg: &ProcessorConfig,
) -> Result<(Tensor, AnyresGrid)> {
    let pinpoints = cfg.image_grid_pinpoints.as_ref().ok_or_else(|| {
        DataError::Input(format!(
            "image {name}: the image processor has no image_grid_pinpoints"
        ))
    })?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    if h == 0 || w == 0 {
        return Err(DataError::image(
            name,
            format!("{w}x{h} image has no pixels"),
        ));
    }
    let tile = tile_size(cfg);
    let grid = AnyresGrid::new(h, w, pinpoints, tile).map_err(|e| DataError::image(name, e))?;
    let filter = cfg.filter()?;
    let cannot = |rh: usize, rw: usize| {
        DataError::image(name, format!("{w}x{h}: cannot resize to {rw}x{rh}"))
    };
    // the whole image, squashed to the base size (the aspect is not kept)
    let (bh, bw) = match cfg.size {
        Some(SizeSpec::HeightWidth { height, width }) => (height, width),
        Some(SizeSpec::ShortestEdge(s) | SizeSpec::LongestEdge(s)) => (s, s),
        None => (tile, tile),
    };
    let mut parts = vec![resize(img, bh, bw, filter).ok_or_else(|| cannot(bh, bw))?];
    let (ph, pw) = grid.resolution;
    let (fh, fw) = fit_size(h, w, grid.resolution);
    let fitted = resize(img, fh, fw, filter).ok_or_else(|| cannot(fh, fw))?;
    // centred: the odd pixel of padding goes after (divmod(target - new, 2))
    let (top, left) = ((ph - fh) / 2, (pw - fw) / 2);
    let mut canvas = RgbImage::new(pw as u32, ph as u32);
    image::imageops::replace(&mut canvas, &fitted, left as i64, top as i64);
    for r in 0..grid.rows {
        for c in 0..grid.cols {
            let crop = image::imageops::crop_imm(
                &canvas,
                (c * tile) as u32,
                (r * tile) as u32,
                tile as u32,
                tile as u32,
            );
            parts.push(crop.to_image());
        }
    }
    let mut data = Vec::new();
    let mut hw = None;
    for (k, part) in parts.iter().enumerate() {
        let values = preprocess(part, name, cfg)?;
        let out = cfg.output_hw(part.height() as usize, part.width() as usize);
        if *hw.get_or_insert(out) != out {
            return Err(DataError::Input(format!(
                "image {name}: tile {k} preprocesses to {}x{}, the base image to {}x{}: set crop_size",
                out.1,
                out.0,
                hw.map_or(0, |v| v.1),
                hw.map_or(0, |v| v.0)
            )));
        }
        data.extend(values);
    }
    let (oh, ow) = hw.unwrap_or_default();
    let pixels = Tensor::from_vec(data, (parts.len(), 3, oh, ow), &Device::Cpu)?;
    Ok((pixels, grid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_round7_follows_python() {
        // int(round(x, 7)) as Python 3 computes it
        for (x, want) in [
            (2.9999999999999996, 3),
            (7.99999995, 8),
            (7.99999996, 8),
            (7.9999999, 7),
            (7.99999994, 7),
            (0.99999996, 1),
            (5.5, 5),
            (3.0, 3),
            (0.0, 0),
        ] {
            assert_eq!(int_round7(x), want, "{x}");
        }
    }

    #[test]
    fn first_pinpoint_wins_a_tie() {
        let p = GridPinpoints(vec![(16, 32), (32, 16), (32, 32)]);
        // a 10x10 image fits all three whole: same effective, [16,32] and
        // [32,16] waste the same, the first listed is kept
        assert_eq!(p.best_resolution(10, 10), Some((16, 32)));
        let p = GridPinpoints(vec![(32, 16), (16, 32), (32, 32)]);
        assert_eq!(p.best_resolution(10, 10), Some((32, 16)));
        // more pixels kept beats less waste
        assert_eq!(p.best_resolution(40, 40), Some((32, 32)));
        // a 1x100 sliver keeps no whole row anywhere: the least waste wins
        assert_eq!(p.best_resolution(1, 100), Some((32, 16)));
        assert!(AnyresGrid::new(1, 100, &GridPinpoints(vec![]), 16).is_err());
    }

    #[test]
    fn unpad_keeps_one_more_on_odd_padding() {
        // 67x97 in an 8x8 grid: 5.52 rows of image, (8 - 5) // 2 = 1 cut each side
        assert_eq!(
            unpad(67, 97, 8, 8),
            Unpadded {
                top: 1,
                rows: 6,
                left: 0,
                cols: 8
            }
        );
        // 47 * (12 / 188) is just below 3 in f64; rounding to 7 places makes it 3
        assert_eq!(unpad(47, 188, 4, 12).rows, 4);
        assert_eq!(unpad(188, 47, 12, 4).cols, 4);
    }

    #[test]
    fn pinpoints_are_checked() {
        let parse = |s: &str| GridPinpoints::try_from(serde_json::from_str::<Value>(s).unwrap());
        assert!(parse("[[16, 32]]").is_ok());
        for bad in [
            "[]",
            "[[16]]",
            "[[0, 16]]",
            "[[16, -1]]",
            "16",
            "[[16, 32.5]]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let p = parse("[[16, 40]]").unwrap();
        assert!(p.check(16).unwrap_err().contains("[16, 40]"));
        let p = parse("[[4096, 4096]]").unwrap();
        assert!(p.check(16).unwrap_err().contains("tiles"));
    }
}
