//! HF image-processor parity: an RGB image -> pixel values, exactly as the
//! PIL-based (slow) `CLIPImageProcessor` / `SiglipImageProcessor` of
//! transformers compute them: resize on 8-bit pixels with Pillow's
//! resampler, center crop, rescale in float64 then float32, normalize in
//! float32.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{DataError, Result};
use crate::pil_resize::resize;
pub use crate::processor_config::ProcessorConfig;

/// Largest intermediate canvas preprocessing will allocate (Pillow's limit).
const MAX_RESIZED_PIXELS: usize = 89_478_485;

/// transformers' `image_transforms.center_crop`: top = (H - ch) // 2,
/// left = (W - cw) // 2 (floor division, so negative when the crop is
/// larger), zero padding where the crop reaches outside the image.
///
/// # Shapes
/// HWC u8 (h_in, w_in, 3) -> (ch, cw, 3)
pub fn center_crop(img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
    let (h, w) = (i64::from(img.height()), i64::from(img.width()));
    let top = (h - ch as i64).div_euclid(2);
    let left = (w - cw as i64).div_euclid(2);
    let mut out = RgbImage::new(cw as u32, ch as u32);
    for y in 0..ch as i64 {
        for x in 0..cw as i64 {
            let (sy, sx) = (y + top, x + left);
            if (0..h).contains(&sy) && (0..w).contains(&sx) {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// One image -> CHW float values, length 3·H·W, H x W from
/// [`ProcessorConfig::output_hw`].
pub fn preprocess(img: &RgbImage, cfg: &ProcessorConfig) -> Result<Vec<f32>> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let mut img = if cfg.do_resize {
        let (rh, rw) = cfg.resized_hw(h, w);
        // An extreme aspect ratio (1 x 80M px) would resize to a canvas far
        // larger than the input; refuse it instead of allocating it.
        if rh.saturating_mul(rw) > MAX_RESIZED_PIXELS || rh == 0 || rw == 0 {
            return Err(DataError::Input(format!(
                "image {w}x{h} would resize to {rw}x{rh}: aspect ratio too extreme for this processor"
            )));
        }
        let filter = cfg.filter().map_err(DataError::Input)?;
        resize(img, rh, rw, filter)
            .ok_or_else(|| DataError::Input(format!("image {w}x{h}: cannot resize to {rw}x{rh}")))?
    } else {
        img.clone()
    };
    if let (true, Some(c)) = (cfg.does_center_crop(), cfg.crop_size) {
        img = center_crop(&img, c.height, c.width);
    }
    let (oh, ow) = (img.height() as usize, img.width() as usize);
    let (mean, std) = (cfg.image_mean.0, cfg.image_std.0);
    let mut out = vec![0f32; 3 * oh * ow];
    // HWC u8 (oh, ow, 3) -> CHW f32 (3, oh, ow)
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            // transformers' rescale: float64 multiply, then cast to float32
            let mut v = if cfg.do_rescale {
                (f64::from(px.0[c]) * cfg.rescale_factor) as f32
            } else {
                f32::from(px.0[c])
            };
            if cfg.do_normalize {
                v = (v - mean[c]) / std[c];
            }
            out[c * oh * ow + i] = v;
        }
    }
    Ok(out)
}

/// Several images -> one batch. All must come out at the same size (a
/// processor with a crop or a fixed size guarantees it).
///
/// # Shapes
/// returns (B, 3, H, W) f32 on the CPU
pub fn preprocess_batch(images: &[RgbImage], cfg: &ProcessorConfig) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| DataError::Input("no images to preprocess".into()))?;
    let (h, w) = cfg.output_hw(first.height() as usize, first.width() as usize);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for (i, img) in images.iter().enumerate() {
        let hw = cfg.output_hw(img.height() as usize, img.width() as usize);
        if hw != (h, w) {
            return Err(DataError::Input(format!(
                "image {i} preprocesses to {}x{}, image 0 to {h}x{w}: a batch needs one size (set crop_size or a fixed size)",
                hw.0, hw.1
            )));
        }
        data.extend(preprocess(img, cfg)?);
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, h, w),
        &Device::Cpu,
    )?)
}
