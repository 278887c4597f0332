//! Idefics3 / SmolVLM image splitting (transformers' `Idefics3ImageProcessorPil`,
//! `SmolVLMImageProcessorPil`): the image's longest edge resized to
//! `size.longest_edge` (aspect kept, the other side rounded up to even), then
//! both sides up to whole tiles of `max_image_size.longest_edge`, cut into
//! rows x cols tiles, plus the global image squashed to one tile; with
//! `do_image_splitting` false the image is squashed to one tile alone. Every
//! resize is Pillow's (LANCZOS in the released configs) on 8-bit pixels;
//! each frame is then rescaled and normalised as [`crate::preprocess`] does.
//!
//! Also the processors' prompt text for one image (`replace_image_token`),
//! which the engine tokenises in place of the image's placeholder.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{DataError, Result};
use crate::pil_resize::resize;
use crate::preprocess::preprocess;
use crate::processor_config::{ProcessorConfig, SizeSpec};

/// transformers' `MAX_IMAGE_SIZE`: the longest-edge resize never goes above it.
pub const MAX_LONGEST_EDGE: usize = 4096;

/// Most tiles one image may be cut into. Released configs make at most 4x4
/// (SmolVLM: 2048 / 512; Idefics3: 1456 / 364); a `--longest-edge` of 4096
/// with 364 px tiles makes 12x12.
pub const MAX_TILES: usize = 256;

/// Largest canvas the tile-multiple resize may allocate (pixels): 4096
/// rounded up to whole tiles, squared, with room to spare.
const MAX_CANVAS_PIXELS: usize = 1 << 25;

/// The tokens the processors write around an image's rows.
pub const FAKE_TOKEN_AROUND_IMAGE: &str = "<fake_token_around_image>";
pub const GLOBAL_IMAGE_TOKEN: &str = "<global-img>";

/// Where one image's tiles come from: `rows` x `cols` crops, then the
/// global image; 0 x 0 when the image is read as the global image alone
/// (it fits one tile, or splitting is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLayout {
    pub rows: usize,
    pub cols: usize,
}

impl SplitLayout {
    /// Crops besides the global image.
    pub fn tiles(&self) -> usize {
        self.rows * self.cols
    }

    /// Frames through the tower: the crops and the global image.
    pub fn frames(&self) -> usize {
        self.tiles() + 1
    }

    /// The processors' text for one image (`Idefics3Processor` /
    /// `SmolVLMProcessor.replace_image_token`): per crop
    /// `<fake_token_around_image><row_i_col_j>` and `image_seq_len` copies of
    /// `image_token`, a newline after every row, then a newline and the
    /// global image's `<fake_token_around_image><global-img>` + its copies +
    /// `<fake_token_around_image>`; only the global part when not split.
    pub fn prompt(&self, image_token: &str, image_seq_len: usize) -> String {
        let rows_of = |n: usize| image_token.repeat(n);
        let mut text = String::new();
        if self.tiles() > 0 {
            for r in 1..=self.rows {
                for c in 1..=self.cols {
                    text.push_str(FAKE_TOKEN_AROUND_IMAGE);
                    text.push_str(&format!("<row_{r}_col_{c}>"));
                    text.push_str(&rows_of(image_seq_len));
                }
                text.push('\n');
            }
            text.push('\n');
        }
        text.push_str(FAKE_TOKEN_AROUND_IMAGE);
        text.push_str(GLOBAL_IMAGE_TOKEN);
        text.push_str(&rows_of(image_seq_len));
        text.push_str(FAKE_TOKEN_AROUND_IMAGE);
        text
    }
}

/// `_resize_output_size_rescale_to_max_len` then
/// `_resize_output_size_scale_below_upper_bound(MAX_IMAGE_SIZE)`: the
/// longest side to `longest`, the other by the aspect ratio (truncated, then
/// made even), each at least 1, the result capped at 4096 the same way.
/// Python's float arithmetic: `aspect = w / h`, `int(w / aspect)`.
pub fn longest_edge_hw(h: usize, w: usize, longest: usize) -> (usize, usize) {
    let aspect = w as f64 / h as f64;
    let (mut nh, mut nw) = if w >= h {
        let nh = (longest as f64 / aspect) as usize;
        (nh + nh % 2, longest)
    } else {
        let nw = (longest as f64 * aspect) as usize;
        (longest, nw + nw % 2)
    };
    nh = nh.max(1);
    nw = nw.max(1);
    let aspect = nw as f64 / nh as f64;
    if nw >= nh && nw > MAX_LONGEST_EDGE {
        nw = MAX_LONGEST_EDGE;
        nh = (nw as f64 / aspect) as usize;
    } else if nh > nw && nh > MAX_LONGEST_EDGE {
        nh = MAX_LONGEST_EDGE;
        nw = (nh as f64 * aspect) as usize;
    }
    (nh.max(1), nw.max(1))
}

/// `resize_for_vision_encoder`: the longer side up to whole tiles, the
/// other from the aspect ratio (truncated), then up to whole tiles too.
pub fn tile_multiple_hw(h: usize, w: usize, tile: usize) -> (usize, usize) {
    let aspect = w as f64 / h as f64;
    let up = |n: usize| n.div_ceil(tile) * tile;
    if w >= h {
        let nw = up(w);
        (up((nw as f64 / aspect) as usize), nw)
    } else {
        let nh = up(h);
        (nh, up((nh as f64 * aspect) as usize))
    }
}

/// The tile side (`max_image_size.longest_edge`) of a splitting processor.
pub fn tile_side(cfg: &ProcessorConfig) -> Option<usize> {
    match cfg.max_image_size {
        Some(SizeSpec::LongestEdge(n)) => Some(n),
        _ => None,
    }
}

/// The sizes one image goes through, (height, width) each.
struct Plan {
    /// After the longest-edge resize.
    resized: (usize, usize),
    /// After the tile-multiple resize (one tile when not splitting).
    canvas: (usize, usize),
    layout: SplitLayout,
}

/// An `h` x `w` image's [`Plan`], or the error that refuses it, before any
/// allocation.
fn plan(name: &str, h: usize, w: usize, cfg: &ProcessorConfig, tile: usize) -> Result<Plan> {
    if h == 0 || w == 0 {
        return Err(DataError::image(
            name,
            format!("{w}x{h} image has no pixels"),
        ));
    }
    let resized = match (cfg.do_resize, cfg.size) {
        (true, Some(SizeSpec::LongestEdge(n))) => longest_edge_hw(h, w, n),
        (true, Some(SizeSpec::HeightWidth { height, width })) => (height, width),
        _ => (h, w),
    };
    if !cfg.splits_images() {
        return Ok(Plan {
            resized,
            canvas: (tile, tile),
            layout: SplitLayout { rows: 0, cols: 0 },
        });
    }
    let (ch, cw) = tile_multiple_hw(resized.0, resized.1, tile);
    let size = match cfg.size {
        Some(SizeSpec::LongestEdge(n)) => format!("size longest_edge {n}"),
        _ => "its size".into(),
    };
    if ch == 0 || cw == 0 || ch.saturating_mul(cw) > MAX_CANVAS_PIXELS {
        return Err(DataError::image(
            name,
            format!("{w}x{h} would resize to {cw}x{ch} for {tile} px tiles ({size}): not a canvas glimpse allocates"),
        ));
    }
    let layout = if ch > tile || cw > tile {
        // (h - M) // M + 1 crops down, (w - M) // M + 1 across
        SplitLayout {
            rows: (ch - tile) / tile + 1,
            cols: (cw - tile) / tile + 1,
        }
    } else {
        SplitLayout { rows: 0, cols: 0 }
    };
    if layout.tiles() > MAX_TILES {
        return Err(DataError::image(
            name,
            format!(
                "{w}x{h} splits into {}x{} tiles of {tile} px ({size}): over glimpse's limit of {MAX_TILES} tiles",
                layout.rows, layout.cols
            ),
        ));
    }
    Ok(Plan {
        resized,
        canvas: (ch, cw),
        layout,
    })
}

/// Where an `h` x `w` image's tiles come from, without touching pixels.
pub fn split_layout(name: &str, h: usize, w: usize, cfg: &ProcessorConfig) -> Result<SplitLayout> {
    let tile = tile_of(cfg, name)?;
    Ok(plan(name, h, w, cfg, tile)?.layout)
}

fn tile_of(cfg: &ProcessorConfig, name: &str) -> Result<usize> {
    tile_side(cfg).ok_or_else(|| {
        DataError::Input(format!(
            "image {name}: the image processor has no max_image_size (it does not split images)"
        ))
    })
}

/// One image through the splitting processor.
///
/// # Shapes
/// returns (rows·cols + 1, 3, M, M) f32 on the CPU, the crops row by row
/// then the global image, with the layout; M = `max_image_size.longest_edge`
pub fn preprocess_split(
    img: &RgbImage,
    name: &str,
    cfg: &ProcessorConfig,
) -> Result<(Tensor, SplitLayout)> {
    let tile = tile_of(cfg, name)?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    let Plan {
        resized: (rh, rw),
        canvas: (ch, cw),
        layout,
    } = plan(name, h, w, cfg, tile)?;
    let filter = cfg.filter()?;
    let resized = if (rh, rw) == (h, w) {
        img.clone()
    } else {
        resize_named(img, name, rh, rw, filter)?
    };
    let frames = if cfg.splits_images() {
        let canvas = resize_named(&resized, name, ch, cw, filter)?;
        let mut frames = cut_tiles(&canvas, layout.rows, layout.cols, tile);
        // the global image: the tile-multiple canvas squashed to one tile
        // (the canvas itself when it is one tile)
        frames.push(resize_named(&canvas, name, tile, tile, filter)?);
        frames
    } else {
        vec![resize_named(&resized, name, tile, tile, filter)?]
    };
    let pixels = frames_tensor(&frames, name, cfg, tile)?;
    Ok((pixels, layout))
}

/// `img` resized to `h` x `w` by Pillow's `filter`; `name` is what the
/// error calls the image.
pub(crate) fn resize_named(
    img: &RgbImage,
    name: &str,
    h: usize,
    w: usize,
    filter: crate::pil_resize::Filter,
) -> Result<RgbImage> {
    resize(img, h, w, filter).ok_or_else(|| {
        DataError::image(
            name,
            format!("{}x{}: cannot resize to {w}x{h}", img.width(), img.height()),
        )
    })
}

/// `rows` x `cols` crops of `tile` px from `canvas`, row by row.
pub(crate) fn cut_tiles(canvas: &RgbImage, rows: usize, cols: usize, tile: usize) -> Vec<RgbImage> {
    let mut crops = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let crop = image::imageops::crop_imm(
                canvas,
                (c * tile) as u32,
                (r * tile) as u32,
                tile as u32,
                tile as u32,
            );
            crops.push(crop.to_image());
        }
    }
    crops
}

/// Frames already at their size, rescaled and normalised as `cfg` says.
///
/// # Shapes
/// returns (frames, 3, tile, tile) f32 on the CPU
pub(crate) fn frames_tensor(
    frames: &[RgbImage],
    name: &str,
    cfg: &ProcessorConfig,
    tile: usize,
) -> Result<Tensor> {
    let mut plain = cfg.clone();
    plain.do_resize = false;
    plain.do_center_crop = Some(false);
    let mut data = Vec::with_capacity(frames.len() * 3 * tile * tile);
    for frame in frames {
        data.extend(preprocess(frame, name, &plain)?);
    }
    Ok(Tensor::from_vec(
        data,
        (frames.len(), 3, tile, tile),
        &Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_edge_follows_python() {
        // 40x100 (h x w) to 48: int(48 / 2.5) = 19, made even -> 20
        assert_eq!(longest_edge_hw(40, 100, 48), (20, 48));
        // tall: int(48 * 0.3) = 14
        assert_eq!(longest_edge_hw(100, 30, 48), (48, 14));
        // a sliver keeps one row
        assert_eq!(longest_edge_hw(1, 1000, 48), (1, 48));
        // capped at 4096
        assert_eq!(longest_edge_hw(100, 200, 10_000), (2048, 4096));
    }

    #[test]
    fn tile_multiple_rounds_up() {
        assert_eq!(tile_multiple_hw(20, 48, 16), (32, 48));
        assert_eq!(tile_multiple_hw(48, 14, 16), (48, 16));
        assert_eq!(tile_multiple_hw(16, 16, 16), (16, 16));
    }

    #[test]
    fn prompt_text_matches_the_processor_layout() {
        let one = SplitLayout { rows: 0, cols: 0 }.prompt("<image>", 2);
        assert_eq!(
            one,
            "<fake_token_around_image><global-img><image><image><fake_token_around_image>"
        );
        let grid = SplitLayout { rows: 1, cols: 2 }.prompt("<image>", 1);
        assert_eq!(
            grid,
            "<fake_token_around_image><row_1_col_1><image><fake_token_around_image><row_1_col_2><image>\n\n<fake_token_around_image><global-img><image><fake_token_around_image>"
        );
    }
}
