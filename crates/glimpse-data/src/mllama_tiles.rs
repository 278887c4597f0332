//! Llama 3.2 Vision's image tiling and prompt rules, as transformers 5.23's
//! `MllamaImageProcessorPil` and `MllamaProcessor` compute them: the tile
//! arrangement whose canvas needs the least upscaling (or, failing that,
//! the least downscaling), the aspect-kept resize into it, zero padding on
//! the bottom and right, tiles cut row by row and padded with zero tiles to
//! the model's tile count; the aspect-ratio id and mask; which text
//! positions see which image (`get_cross_attention_token_mask`); and the BOS
//! placement of a raw prompt (`build_string_from_input`).

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{DataError, Result};
use crate::pil_resize::resize;
use crate::preprocess::preprocess;
use crate::processor_config::{ProcessorConfig, SizeSpec};

/// Most tiles an image may be cut into (released checkpoints use 4); the
/// model's tile embeddings and every tower pass grow with it.
pub const MAX_IMAGE_TILES: usize = 64;

/// Tile arrangements `(rows, cols)` with at most `max_tiles` tiles, in
/// transformers' order (`get_all_supported_aspect_ratios`: the first
/// number outer). Position + 1 is an arrangement's aspect-ratio id.
pub fn supported_aspect_ratios(max_tiles: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for a in 1..=max_tiles {
        for b in 1..=max_tiles {
            if a * b <= max_tiles {
                out.push((a, b));
            }
        }
    }
    out
}

/// `get_optimal_tiled_canvas`: of the canvases `tile`·(rows, cols), the one
/// an `h` x `w` image fits with the smallest scale >= 1 (upscaling the
/// least), else the largest scale < 1; the smallest area among equal
/// scales (the first listed on a tie). Scales in f64 as numpy divides.
/// Returns (height, width) in pixels.
pub fn optimal_canvas(h: usize, w: usize, max_tiles: usize, tile: usize) -> (usize, usize) {
    let canvases: Vec<(usize, usize)> = supported_aspect_ratios(max_tiles)
        .into_iter()
        .map(|(r, c)| (r * tile, c * tile))
        .collect();
    let scale = |&(ch, cw): &(usize, usize)| {
        let (sh, sw) = (ch as f64 / h as f64, cw as f64 / w as f64);
        // np.where(scale_w > scale_h, scale_h, scale_w)
        if sw > sh {
            sh
        } else {
            sw
        }
    };
    let scales: Vec<f64> = canvases.iter().map(scale).collect();
    let up = scales
        .iter()
        .copied()
        .filter(|&s| s >= 1.0)
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))));
    let selected = up.unwrap_or_else(|| {
        scales
            .iter()
            .copied()
            .filter(|&s| s < 1.0)
            .fold(f64::NEG_INFINITY, f64::max)
    });
    let mut best: Option<(usize, usize)> = None;
    for (c, &s) in canvases.iter().zip(&scales) {
        // np.argmin keeps the first of equal areas
        if s == selected && best.is_none_or(|b| c.0 * c.1 < b.0 * b.1) {
            best = Some(*c);
        }
    }
    best.unwrap_or((tile, tile))
}

/// `get_image_size_fit_to_canvas`: the image's size with its aspect kept,
/// its sides first clamped between `tile` and the canvas, the limiting side
/// exact and the other floored (at least 1). Returns (height, width).
pub fn fit_to_canvas(h: usize, w: usize, canvas: (usize, usize), tile: usize) -> (usize, usize) {
    let (ch, cw) = canvas;
    let th = h.clamp(tile.min(ch), ch);
    let tw = w.clamp(tile.min(cw), cw);
    let (sh, sw) = (th as f64 / h as f64, tw as f64 / w as f64);
    if sw < sh {
        let nh = ((h as f64 * sw).floor() as usize).max(1);
        (nh.min(th), tw)
    } else {
        let nw = ((w as f64 * sh).floor() as usize).max(1);
        (th, nw.min(tw))
    }
}

/// One image as the model reads it.
#[derive(Debug, Clone)]
pub struct MllamaTiles {
    /// (model_tiles, 3, tile, tile) f32 on the CPU: the image's tiles row by
    /// row, then zero tiles (not normalized, as `pack_images` pads).
    pub pixels: Tensor,
    /// Tiles cut from the image.
    pub num_tiles: usize,
    /// The arrangement, (rows, cols).
    pub grid: (usize, usize),
    /// The image's (height, width) on the canvas, at its top left.
    pub resized: (usize, usize),
    /// Position of `grid` in [`supported_aspect_ratios`]`(model_tiles)`, + 1.
    pub aspect_ratio_id: usize,
    /// 1 for the image's tiles, 0 for padding; length model_tiles.
    pub aspect_ratio_mask: Vec<u32>,
}

/// The tile side of an Mllama processor: `size` must be a square.
pub fn tile_side(cfg: &ProcessorConfig) -> Result<usize> {
    match cfg.size {
        Some(SizeSpec::HeightWidth { height, width }) if height == width => Ok(height),
        other => Err(DataError::Config {
            path: cfg.source.clone(),
            msg: format!(
                "size must be {{\"height\": N, \"width\": N}} (square tiles) for an Mllama processor, got {other:?}"
            ),
        }),
    }
}

/// `MllamaImageProcessorPil` on one image: the canvas chosen among
/// arrangements of at most `max_tiles` tiles, the aspect-kept resize on
/// 8-bit pixels (Pillow's resampler), zero padding to the canvas, rescale
/// and normalize, tiles cut row by row, zero tiles up to `model_tiles` (the
/// model's `max_num_tiles`). `supported`: the model's arrangements
/// (`supported_aspect_ratios` of its config); an arrangement outside it is
/// refused. With `max_tiles` = `model_tiles` this is transformers'
/// processor exactly; a smaller `max_tiles` only narrows the choice of
/// canvas (ids and padding stay the model's).
pub fn preprocess_mllama(
    img: &RgbImage,
    name: &str,
    cfg: &ProcessorConfig,
    max_tiles: usize,
    model_tiles: usize,
    supported: &[(usize, usize)],
) -> Result<MllamaTiles> {
    if max_tiles == 0 || max_tiles > model_tiles || model_tiles > MAX_IMAGE_TILES {
        return Err(DataError::Input(format!(
            "image {name}: {max_tiles} tiles asked; the model takes 1..={model_tiles} (max_num_tiles, at most {MAX_IMAGE_TILES})"
        )));
    }
    let tile = tile_side(cfg)?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    if h == 0 || w == 0 {
        return Err(DataError::image(
            name,
            format!("{w}x{h} image has no pixels"),
        ));
    }
    let canvas = optimal_canvas(h, w, max_tiles, tile);
    let grid = (canvas.0 / tile, canvas.1 / tile);
    if !supported.contains(&grid) {
        return Err(DataError::image(
            name,
            format!(
                "{w}x{h} tiles as {}x{} (rows x cols), an aspect ratio the model's supported_aspect_ratios {supported:?} lack",
                grid.0, grid.1
            ),
        ));
    }
    let aspect_ratio_id = supported_aspect_ratios(model_tiles)
        .iter()
        .position(|g| *g == grid)
        .map(|i| i + 1)
        .ok_or_else(|| {
            DataError::image(
                name,
                format!(
                    "{}x{} tiles exceed max_num_tiles {model_tiles}",
                    grid.0, grid.1
                ),
            )
        })?;
    let (nh, nw) = fit_to_canvas(h, w, canvas, tile);
    let resized = resize(img, nh, nw, cfg.filter()?)
        .ok_or_else(|| DataError::image(name, format!("{w}x{h}: cannot resize to {nw}x{nh}")))?;
    // bottom and right padding with 8-bit 0, before rescaling
    let mut padded = RgbImage::new(canvas.1 as u32, canvas.0 as u32);
    image::imageops::replace(&mut padded, &resized, 0, 0);
    // rescale + normalize only: the canvas is already the size it keeps
    let mut plain = cfg.clone();
    plain.do_resize = false;
    plain.do_center_crop = Some(false);
    let values = preprocess(&padded, name, &plain)?;
    let (ch, cw) = canvas;
    let num_tiles = grid.0 * grid.1;
    let mut data = vec![0f32; model_tiles * 3 * tile * tile];
    // CHW (3, rows·t, cols·t) -> (rows·cols, 3, t, t), tiles row by row
    for r in 0..grid.0 {
        for c in 0..grid.1 {
            let k = r * grid.1 + c;
            for ch_i in 0..3 {
                for y in 0..tile {
                    let src = ch_i * ch * cw + (r * tile + y) * cw + c * tile;
                    let dst = ((k * 3 + ch_i) * tile + y) * tile;
                    data[dst..dst + tile].copy_from_slice(&values[src..src + tile]);
                }
            }
        }
    }
    let pixels = Tensor::from_vec(data, (model_tiles, 3, tile, tile), &Device::Cpu)?;
    let aspect_ratio_mask = (0..model_tiles)
        .map(|k| u32::from(k < num_tiles || k == 0))
        .collect();
    Ok(MllamaTiles {
        pixels,
        num_tiles,
        grid,
        resized: (nh, nw),
        aspect_ratio_id,
        aspect_ratio_mask,
    })
}

/// `get_cross_attention_token_mask`: for each `<|image|>` in `ids`, the
/// half-open range of positions that see it. Each image is seen from its
/// token up to the next image token; the last one to the end; a run of
/// consecutive image tokens is seen together up to where the run's last
/// image is seen until.
pub fn cross_attention_ranges(ids: &[u32], image_token: u32) -> Vec<(usize, usize)> {
    let at: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == image_token)
        .map(|(i, _)| i)
        .collect();
    let mut ranges: Vec<(usize, usize)> = at
        .iter()
        .enumerate()
        .map(|(k, &start)| (start, at.get(k + 1).copied().unwrap_or(ids.len())))
        .collect();
    let mut end = ids.len();
    for r in ranges.iter_mut().rev() {
        if r.0 + 1 == r.1 {
            r.1 = end;
        }
        end = r.1;
    }
    ranges
}

/// The processor's `cross_attention_mask` for one prompt: 1 where text
/// position t may see tile j of image k (only the image's own tiles).
///
/// # Shapes
/// returns (T, N, max_tiles) flattened, T = `ids.len()`, N = `num_tiles.len()`
pub fn cross_attention_mask(
    ids: &[u32],
    image_token: u32,
    num_tiles: &[usize],
    max_tiles: usize,
) -> Vec<u8> {
    let (t, n) = (ids.len(), num_tiles.len());
    let mut mask = vec![0u8; t * n * max_tiles];
    for (k, (start, end)) in cross_attention_ranges(ids, image_token)
        .into_iter()
        .enumerate()
        .take(n)
    {
        for pos in start..end.min(t) {
            let row = (pos * n + k) * max_tiles;
            for j in 0..num_tiles[k].min(max_tiles) {
                mask[row + j] = 1;
            }
        }
    }
    mask
}

/// `build_string_from_input`: a raw prompt without `bos` gets it after its
/// leading image tokens (`<|image|><|image|>text` ->
/// `<|image|><|image|><bos>text`); one that holds `bos` anywhere is kept.
pub fn prompt_with_bos(prompt: &str, bos: &str, image_token: &str) -> String {
    if bos.is_empty() || prompt.contains(bos) {
        return prompt.to_string();
    }
    let mut rest = prompt;
    let mut leading = 0;
    while !image_token.is_empty() {
        match rest.strip_prefix(image_token) {
            Some(r) => {
                rest = r;
                leading += 1;
            }
            None => break,
        }
    }
    format!("{}{bos}{rest}", image_token.repeat(leading))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrangements_in_transformers_order() {
        assert_eq!(
            supported_aspect_ratios(4),
            vec![
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (2, 1),
                (2, 2),
                (3, 1),
                (4, 1)
            ]
        );
    }

    #[test]
    fn canvas_prefers_least_upscaling_then_smallest_area() {
        // 20x14 fits every canvas upscaled; 1x1 upscales least
        assert_eq!(optimal_canvas(20, 14, 4, 32), (32, 32));
        assert_eq!(optimal_canvas(30, 100, 4, 32), (32, 128));
        assert_eq!(optimal_canvas(90, 40, 4, 32), (96, 32));
        // nothing upscales an 80x80: the largest scale below 1
        assert_eq!(optimal_canvas(80, 80, 4, 32), (64, 64));
        assert_eq!(optimal_canvas(80, 80, 1, 32), (32, 32));
        assert_eq!(fit_to_canvas(20, 14, (32, 32), 32), (32, 22));
        assert_eq!(fit_to_canvas(6, 200, (32, 128), 32), (3, 128));
        assert_eq!(fit_to_canvas(67, 97, (64, 64), 32), (44, 64));
    }

    #[test]
    fn token_ranges_follow_the_processor() {
        let i = 9;
        // one image: to the end
        assert_eq!(cross_attention_ranges(&[1, i, 5, 6], i), vec![(1, 4)]);
        // two apart: the first until the second
        assert_eq!(
            cross_attention_ranges(&[1, i, 5, i, 6], i),
            vec![(1, 3), (3, 5)]
        );
        // consecutive: seen together to where the run's last is seen until
        assert_eq!(
            cross_attention_ranges(&[i, i, 5, i, 6], i),
            vec![(0, 3), (1, 3), (3, 5)]
        );
        assert!(cross_attention_ranges(&[1, 2], i).is_empty());
        let m = cross_attention_mask(&[1, i, 5], i, &[2], 4);
        assert_eq!(m, vec![0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn bos_goes_after_leading_images() {
        let p = |s| prompt_with_bos(s, "<s>", "<|image|>");
        assert_eq!(p("<|image|><|image|>Hi"), "<|image|><|image|><s>Hi");
        assert_eq!(p("Hi <|image|>"), "<s>Hi <|image|>");
        assert_eq!(p("<|image|><s>Hi"), "<|image|><s>Hi");
    }
}
