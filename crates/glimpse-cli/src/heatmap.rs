//! Attention maps as pictures: each image shown in a 224 px square with the
//! model's attention grid (its patches, or a tiled image's crops
//! reassembled: `Vlm::image_attention_maps`) stretched over it in a
//! blue→red ramp, images side by side in prompt order.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{ImageBuffer, ImageFormat, Luma, Rgb, RgbImage};

const SIDE: u32 = 224;

/// What can go wrong drawing a map. None of it is a usage error (exit 2):
/// the flag was fine, the file system or the model output was not.
#[derive(Debug, thiserror::Error)]
pub enum HeatmapError {
    /// The PNG could not be written (no such directory, no permission, a full disk).
    #[error("{}: cannot write the attention map: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
    /// The model's attention for one image is not a rows x cols grid.
    #[error(
        "attention map: image {image}'s grid is not rectangular ({cells} values over {rows} rows)"
    )]
    Grid {
        image: usize,
        cells: usize,
        rows: usize,
    },
    #[error("tensor op: {}", glimpse_models::error::candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

/// Refuses, before a model runs, a map path that cannot be written: its
/// directory is missing or it names a directory. (Permissions and a full
/// disk still surface when [`write_attention_map`] writes.)
pub fn check_target(out: &Path) -> Result<(), HeatmapError> {
    let fail = |msg: String| HeatmapError::Write {
        path: out.to_path_buf(),
        msg,
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(fail(format!("{} is not a directory", parent.display())));
    }
    if out.is_dir() {
        return Err(fail("it is a directory".into()));
    }
    Ok(())
}

/// Writes `images` (as decoded, RGB) with `maps` (per image a rows x cols
/// grid of attention over the whole picture) over them, as a PNG whatever
/// `out`'s extension.
pub fn write_attention_map(
    out: &Path,
    images: &[RgbImage],
    maps: &[Vec<Vec<f32>>],
) -> Result<(), HeatmapError> {
    let mut canvas = RgbImage::new(SIDE * images.len() as u32, SIDE);
    for (k, (img, grid)) in images.iter().zip(maps).enumerate() {
        let (rows, cols) = (grid.len() as u32, grid.first().map_or(0, Vec::len) as u32);
        let flat: Vec<f32> = grid.iter().flatten().copied().collect();
        let ragged = HeatmapError::Grid {
            image: k + 1,
            cells: grid.iter().map(Vec::len).sum(),
            rows: grid.len(),
        };
        if rows == 0 || flat.len() != (rows * cols) as usize {
            return Err(ragged);
        }
        let (lo, hi) = flat
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let span = (hi - lo).max(f32::EPSILON);
        let norm: Vec<f32> = flat.iter().map(|v| (v - lo) / span).collect();
        let heat: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(cols, rows, norm).ok_or(ragged)?;
        let heat = imageops::resize(&heat, SIDE, SIDE, FilterType::Triangle);
        let shown = imageops::resize(img, SIDE, SIDE, FilterType::Triangle);
        for (x, y, px) in shown.enumerate_pixels() {
            let a = heat.get_pixel(x, y)[0].clamp(0.0, 1.0);
            let c = ramp(a);
            let blend = |i: usize| {
                (0.45 * px[i] as f32 + 0.55 * c[i])
                    .round()
                    .clamp(0.0, 255.0) as u8
            };
            canvas.put_pixel(k as u32 * SIDE + x, y, Rgb([blend(0), blend(1), blend(2)]));
        }
    }
    canvas
        .save_with_format(out, ImageFormat::Png)
        .map_err(|e| HeatmapError::Write {
            path: out.to_path_buf(),
            msg: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
}

/// A jet-like colour for `a` in [0, 1]: blue (low) → green → red (high).
fn ramp(a: f32) -> [f32; 3] {
    let f = |centre: f32| (1.5 - (4.0 * a - centre).abs()).clamp(0.0, 1.0) * 255.0;
    [f(3.0), f(2.0), f(1.0)]
}
