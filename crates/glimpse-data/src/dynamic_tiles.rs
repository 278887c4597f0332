//! glimpse's own high-resolution tiling (NVLM-D's tile tags on a dynamic
//! grid of the InternVL kind): the image is resized onto the grid of square
//! tiles whose aspect ratio is closest to its own, cut into `rows x cols`
//! tiles of the tower's side, and, when it took more than one tile, followed
//! by a thumbnail (the whole image squashed to one tile) so the model also
//! sees the layout at a glance. Each tile's rows are announced by a text tag
//! (`<tile_1>`, …, `<tile_global_thumbnail>`), which tells the decoder
//! which crop the rows that follow come from without any 2-D position
//! scheme in the projector.
//!
//! The grid choice, for an image `w x h` and at most `max_tiles` tiles:
//! candidates are every `cols x rows` with `min_tiles ≤ cols·rows ≤
//! max_tiles`, ordered by tile count, then by `cols`; the one whose
//! `cols / rows` is nearest `w / h` wins, and on an exact tie the larger
//! grid wins when the image has more than half the pixels of its canvas
//! (a small image is not blown up onto many tiles for a tie).
//!
//! Resizes are Pillow's filter the processor names (`resample`), on 8-bit
//! pixels, as everywhere in glimpse-data; each tile is then rescaled and
//! normalised as [`crate::preprocess`] does.

use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_split::{cut_tiles, frames_tensor, resize_named};
use crate::processor_config::ProcessorConfig;

/// Most tiles a config may ask for (NVLM-D uses 6, InternVL up to 40).
pub const MAX_TILES: usize = 64;

/// The tag before the thumbnail's rows.
pub const THUMBNAIL_TAG: &str = "<tile_global_thumbnail>";

/// The tag before tile `i` (1-based, row by row).
pub fn tile_tag(i: usize) -> String {
    format!("<tile_{i}>")
}

/// Every tag a model with `max_tiles` tiles can emit, in id order: the
/// tokens a tokenizer must hold before training with tiling.
pub fn all_tags(max_tiles: usize) -> Vec<String> {
    let mut tags: Vec<String> = (1..=max_tiles).map(tile_tag).collect();
    tags.push(THUMBNAIL_TAG.to_string());
    tags
}

/// The `"tiling"` section of a glimpse `config.json` (and of a recipe's
/// `[model]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TilingConfig {
    /// Most crops per image (the thumbnail not counted), 1 to [`MAX_TILES`].
    pub max_tiles: usize,
    /// Fewest crops per image (default 1).
    #[serde(default = "one")]
    pub min_tiles: usize,
    /// Add the whole image as one more tile after the crops, when there is
    /// more than one crop (default true).
    #[serde(default = "yes")]
    pub thumbnail: bool,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

impl TilingConfig {
    /// Checks the bounds; `what` names the config in the error.
    pub fn check(&self, what: &str) -> Result<()> {
        if !(1..=MAX_TILES).contains(&self.max_tiles) {
            return Err(DataError::Input(format!(
                "{what}: tiling.max_tiles is {}, must be 1 to {MAX_TILES}",
                self.max_tiles
            )));
        }
        if self.min_tiles == 0 || self.min_tiles > self.max_tiles {
            return Err(DataError::Input(format!(
                "{what}: tiling.min_tiles is {}, must be 1 to max_tiles ({})",
                self.min_tiles, self.max_tiles
            )));
        }
        Ok(())
    }

    /// The most frames (crops + thumbnail) one image can take.
    pub fn max_frames(&self) -> usize {
        self.max_tiles + usize::from(self.thumbnail && self.max_tiles > 1)
    }
}

/// How one image was tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub rows: usize,
    pub cols: usize,
    /// A thumbnail follows the crops.
    pub thumbnail: bool,
}

impl TileGrid {
    /// Crops, the thumbnail not counted.
    pub fn tiles(&self) -> usize {
        self.rows * self.cols
    }

    /// Tower inputs: the crops, then the thumbnail if any.
    pub fn frames(&self) -> usize {
        self.tiles() + usize::from(self.thumbnail)
    }

    /// The tag before each frame, in frame order.
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = (1..=self.tiles()).map(tile_tag).collect();
        if self.thumbnail {
            tags.push(THUMBNAIL_TAG.to_string());
        }
        tags
    }

    /// The prompt text that stands for the image: each frame's tag, then
    /// `image_token` once per row the frame becomes.
    pub fn prompt(&self, image_token: &str, rows_per_frame: usize) -> String {
        let rows = image_token.repeat(rows_per_frame);
        self.tags()
            .iter()
            .map(|tag| format!("{tag}{rows}"))
            .collect()
    }
}

/// The grid an `w x h` image is cut into (see the module notes).
pub fn pick_grid(h: usize, w: usize, tile: usize, cfg: &TilingConfig) -> TileGrid {
    let aspect = w as f64 / h.max(1) as f64;
    let area = (w * h) as f64;
    let mut candidates: Vec<(usize, usize)> = (1..=cfg.max_tiles)
        .flat_map(|cols| (1..=cfg.max_tiles / cols).map(move |rows| (cols, rows)))
        .filter(|(c, r)| c * r >= cfg.min_tiles)
        .collect();
    candidates.sort_by_key(|&(c, r)| (c * r, c));
    let mut best = candidates[0];
    let mut best_diff = f64::INFINITY;
    for (cols, rows) in candidates {
        let diff = (aspect - cols as f64 / rows as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (cols, rows);
        } else if diff == best_diff && area > 0.5 * (tile * tile * cols * rows) as f64 {
            best = (cols, rows);
        }
    }
    let (cols, rows) = best;
    TileGrid {
        rows,
        cols,
        thumbnail: cfg.thumbnail && rows * cols > 1,
    }
}

/// One image through the tiler.
///
/// # Shapes
/// returns (frames, 3, tile, tile) f32 on the CPU: the crops row by row,
/// then the thumbnail if any, with the grid
pub fn preprocess_tiles(
    img: &RgbImage,
    name: &str,
    cfg: &ProcessorConfig,
    tile: usize,
    tiling: &TilingConfig,
) -> Result<(Tensor, TileGrid)> {
    tiling.check(name)?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    if h == 0 || w == 0 || tile == 0 {
        return Err(DataError::image(name, format!("{w}x{h}: nothing to tile")));
    }
    let grid = pick_grid(h, w, tile, tiling);
    let filter = cfg.filter()?;
    // the canvas is at most MAX_TILES tiles of the tower's side
    let canvas = resize_named(img, name, grid.rows * tile, grid.cols * tile, filter)?;
    let mut frames = cut_tiles(&canvas, grid.rows, grid.cols, tile);
    if grid.thumbnail {
        frames.push(resize_named(img, name, tile, tile, filter)?);
    }
    let pixels = frames_tensor(&frames, name, cfg, tile)?;
    Ok((pixels, grid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pil_resize::resize;
    use crate::preprocess::preprocess;

    fn cfg(max_tiles: usize) -> TilingConfig {
        TilingConfig {
            max_tiles,
            min_tiles: 1,
            thumbnail: true,
        }
    }

    fn grid(h: usize, w: usize, max: usize) -> (usize, usize) {
        let g = pick_grid(h, w, 32, &cfg(max));
        (g.rows, g.cols)
    }

    #[test]
    fn grid_follows_aspect_ratio() {
        // a square image on a square grid: 2x2 wins the 1:1 tie once the
        // image has over half the 64x64 canvas's pixels, 1x1 below that
        assert_eq!(grid(64, 64, 6), (2, 2));
        assert_eq!(grid(32, 32, 6), (1, 1));
        assert_eq!(grid(45, 45, 6), (1, 1));
        assert_eq!(grid(46, 46, 6), (2, 2));
        // wide 3:1 -> 1 row of 3; tall 1:2 -> 2 rows of 1 (exact ratios)
        assert_eq!(grid(32, 96, 6), (1, 3));
        assert_eq!(grid(64, 32, 6), (2, 1));
        // 5:3 lies nearest 2:1 among grids of at most 6 (|1.667-2| = 0.333,
        // |1.667-1.5| = 0.167 -> 3x2)
        assert_eq!(grid(60, 100, 6), (2, 3));
        // max 1: always one tile
        assert_eq!(grid(32, 300, 1), (1, 1));
        // an extreme aspect ratio takes the widest grid there is
        assert_eq!(grid(10, 1000, 6), (1, 6));
    }

    #[test]
    fn min_tiles_forces_a_split() {
        let c = TilingConfig {
            max_tiles: 4,
            min_tiles: 2,
            thumbnail: false,
        };
        let g = pick_grid(32, 32, 32, &c);
        // 1x1 is out; of 2x1, 1x2, 2x2 (4 tiles), the square 2x2 fits 1:1
        assert_eq!((g.rows, g.cols, g.thumbnail), (2, 2, false));
    }

    #[test]
    fn tags_and_prompt() {
        let g = TileGrid {
            rows: 1,
            cols: 2,
            thumbnail: true,
        };
        assert_eq!(g.frames(), 3);
        assert_eq!(
            g.prompt("<image>", 2),
            "<tile_1><image><image><tile_2><image><image><tile_global_thumbnail><image><image>"
        );
        assert_eq!(all_tags(2), ["<tile_1>", "<tile_2>", THUMBNAIL_TAG]);
        // one tile: no thumbnail
        assert!(!pick_grid(32, 32, 32, &cfg(6)).thumbnail);
    }

    #[test]
    fn bounds_are_checked() {
        assert!(cfg(0).check("c").is_err());
        assert!(cfg(MAX_TILES + 1).check("c").is_err());
        let bad = TilingConfig {
            max_tiles: 2,
            min_tiles: 3,
            thumbnail: true,
        };
        let err = bad.check("model/config.json").unwrap_err().to_string();
        assert!(
            err.contains("model/config.json") && err.contains("min_tiles"),
            "{err}"
        );
        assert_eq!(cfg(6).max_frames(), 7);
        assert_eq!(cfg(1).max_frames(), 1);
    }

    #[test]
    fn tiles_are_crops_of_the_canvas_then_the_thumbnail() {
        let json = r#"{"do_resize": true, "size": {"shortest_edge": 32},
            "do_center_crop": true, "crop_size": {"height": 32, "width": 32},
            "do_rescale": true, "rescale_factor": 0.00392156862745098,
            "do_normalize": true, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5], "resample": 3}"#;
        let pcfg = ProcessorConfig::from_json(json, std::path::Path::new("p.json")).unwrap();
        // 64x32 (w x h): exactly two tiles side by side, no resize needed
        let img = RgbImage::from_fn(64, 32, |x, y| image::Rgb([(x * 4) as u8, (y * 8) as u8, 7]));
        let (pixels, grid) = preprocess_tiles(&img, "wide", &pcfg, 32, &cfg(6)).unwrap();
        assert_eq!((grid.rows, grid.cols, grid.thumbnail), (1, 2, true));
        assert_eq!(pixels.dims(), &[3, 3, 32, 32]);
        let mut plain = pcfg.clone();
        plain.do_resize = false;
        plain.do_center_crop = Some(false);
        for (i, x0) in [0u32, 32].into_iter().enumerate() {
            let crop = image::imageops::crop_imm(&img, x0, 0, 32, 32).to_image();
            let want = preprocess(&crop, "crop", &plain).unwrap();
            let got: Vec<f32> = pixels
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "tile {i}");
        }
        // the thumbnail: the whole image squashed by Pillow's bicubic
        let thumb = resize(&img, 32, 32, pcfg.filter().unwrap()).unwrap();
        let want = preprocess(&thumb, "thumb", &plain).unwrap();
        let got: Vec<f32> = pixels
            .get(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, want);
        // tile 2 starts at column 32 of the red ramp: 128 / 255 -> 0.0039
        let t1: Vec<f32> = pixels
            .get(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            (t1[0] - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6,
            "{}",
            t1[0]
        );
    }
}
