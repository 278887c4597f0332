//! Attention maps as pictures: each image shown 224 px tall with the
//! model's patch attention upsampled over it in a blue→red ramp, images
//! side by side in prompt order.

use std::path::Path;

use candle_core::Tensor;
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb, RgbImage};

use glimpse_engine::pipeline::{PipelineError, Result};

const SIDE: u32 = 224;

/// Writes `images` (as decoded, RGB) with `attention` (N, g, g) over them.
pub fn write_attention_map(out: &Path, images: &[RgbImage], attention: &Tensor) -> Result<()> {
    let maps = attention.to_vec3::<f32>()?;
    let mut canvas = RgbImage::new(SIDE * images.len() as u32, SIDE);
    for (k, (img, grid)) in images.iter().zip(&maps).enumerate() {
        let g = grid.len() as u32;
        let flat: Vec<f32> = grid.iter().flatten().copied().collect();
        let (lo, hi) = flat
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let span = (hi - lo).max(f32::EPSILON);
        let norm: Vec<f32> = flat.iter().map(|v| (v - lo) / span).collect();
        let heat: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_raw(g, g, norm)
            .ok_or_else(|| PipelineError::Usage("attention grid is not square".into()))?;
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
    canvas.save(out).map_err(|e| {
        PipelineError::Usage(format!(
            "{}: cannot write the attention map: {e}",
            out.display()
        ))
    })
}

/// A jet-like colour for `a` in [0, 1]: blue (low) → green → red (high).
fn ramp(a: f32) -> [f32; 3] {
    let f = |centre: f32| (1.5 - (4.0 * a - centre).abs()).clamp(0.0, 1.0) * 255.0;
    [f(3.0), f(2.0), f(1.0)]
}
