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
use crate::processor_config::SizeSpec;

/// Largest resized canvas preprocessing will allocate: 4096² pixels, whose
/// f32 copy is 192 MiB. Above any processor in use (Qwen2-VL's `max_pixels`
/// is 12.8M); a shortest-edge resize of a sliver (1×40 to 1023 wide) would
/// otherwise ask for gigabytes.
const MAX_RESIZED_PIXELS: usize = 1 << 24;

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
    crop_at(img, top, left, ch, cw)
}

/// The `ch` x `cw` window whose top-left corner is (`top`, `left`) in
/// `img` (negative or past the edge where the window is larger), zero
/// where it reaches outside the image. Each center crop's offsets are its
/// library's own rounding.
///
/// # Shapes
/// HWC u8 (h_in, w_in, 3) -> (ch, cw, 3)
pub(crate) fn crop_at(img: &RgbImage, top: i64, left: i64, ch: usize, cw: usize) -> RgbImage {
    let (h, w) = (i64::from(img.height()), i64::from(img.width()));
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

/// The (resized, output) sizes of an `h` x `w` image named `name`, or the
/// error that refuses it, before anything is allocated for it.
pub(crate) fn plan(
    name: &str,
    h: usize,
    w: usize,
    cfg: &ProcessorConfig,
) -> Result<((usize, usize), (usize, usize))> {
    if h == 0 || w == 0 {
        return Err(DataError::image(
            name,
            format!("{w}x{h} image has no pixels"),
        ));
    }
    let resized = if cfg.do_resize {
        cfg.resized_hw(h, w)
    } else {
        (h, w)
    };
    let (rh, rw) = resized;
    // A shortest-edge resize keeps the aspect: a 1 x 80M px strip, or a
    // large shortest_edge on an ordinary photo, would make a canvas far
    // larger than the input; refuse it instead of allocating it, naming the
    // size and the file that asked for it.
    if rh.saturating_mul(rw) > MAX_RESIZED_PIXELS || rh == 0 || rw == 0 {
        let size = match cfg.size {
            Some(SizeSpec::ShortestEdge(s)) => format!("size shortest_edge {s}"),
            Some(SizeSpec::HeightWidth { height, width }) => {
                format!("size height {height} width {width}")
            }
            Some(SizeSpec::LongestEdge(s)) => format!("size longest_edge {s}"),
            None => "size".into(),
        };
        // a config built in memory has no file to name
        let of = if cfg.source.as_os_str().is_empty() {
            String::new()
        } else {
            format!(" of {}", cfg.source.display())
        };
        return Err(DataError::image(
            name,
            format!(
                "{w}x{h} would resize to {rw}x{rh} ({size}{of}): over the {MAX_RESIZED_PIXELS} pixels preprocessing allocates (aspect ratio too extreme for this processor)"
            ),
        ));
    }
    let output = match (cfg.does_center_crop(), cfg.crop_size) {
        (true, Some(c)) => (c.height, c.width),
        _ => resized,
    };
    Ok((resized, output))
}

/// One image -> CHW float values, length 3·H·W, H x W from
/// [`ProcessorConfig::output_hw`]. `name` is what errors call the image
/// (its path, or "image 2" for inline data).
pub fn preprocess(img: &RgbImage, name: &str, cfg: &ProcessorConfig) -> Result<Vec<f32>> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let ((rh, rw), _) = plan(name, h, w, cfg)?;
    let mut img = if cfg.do_resize {
        let filter = cfg.filter()?;
        resize(img, rh, rw, filter)
            .ok_or_else(|| DataError::image(name, format!("{w}x{h}: cannot resize to {rw}x{rh}")))?
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

/// transformers' torchvision-backend `rescale_and_normalize` on one image:
/// with both steps on, mean and std are scaled by `1 / rescale_factor` in
/// f32 and the pixels normalized as `(x - mean') / std'` in f32; rescale
/// alone is `x * rescale_factor` in f32. Values differ from the image
/// processor's `x * factor` (f64) then `(v - mean) / std` ([`preprocess`])
/// in the last bits. Every video processor (Qwen2-VL's, LLaVA-NeXT-Video's)
/// runs this arithmetic.
///
/// # Shapes
/// HWC u8 (h, w, 3) -> CHW f32 (3, h, w)
pub(crate) fn torch_normalize(img: &RgbImage, cfg: &ProcessorConfig) -> Vec<f32> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (mut mean, mut std) = (cfg.image_mean.0, cfg.image_std.0);
    if cfg.do_rescale && cfg.do_normalize {
        let inv = (1.0 / cfg.rescale_factor) as f32;
        mean.iter_mut().for_each(|m| *m *= inv);
        std.iter_mut().for_each(|s| *s *= inv);
    }
    let scale = cfg.rescale_factor as f32;
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let x = f32::from(px.0[c]);
            out[c * h * w + i] = if cfg.do_normalize {
                (x - mean[c]) / std[c]
            } else if cfg.do_rescale {
                x * scale
            } else {
                x
            };
        }
    }
    out
}

/// Several `(name, image)` pairs -> one batch. All must come out at the
/// same size (a processor with a crop or a fixed size guarantees it); every
/// image's geometry is checked before the batch is allocated.
///
/// # Shapes
/// returns (B, 3, H, W) f32 on the CPU
pub fn preprocess_batch<S: AsRef<str>>(
    images: &[(S, RgbImage)],
    cfg: &ProcessorConfig,
) -> Result<Tensor> {
    let Some((first_name, _)) = images.first() else {
        return Err(DataError::Input("no images to preprocess".into()));
    };
    let mut hw = None;
    for (name, img) in images {
        let (_, out) = plan(
            name.as_ref(),
            img.height() as usize,
            img.width() as usize,
            cfg,
        )?;
        match hw {
            None => hw = Some(out),
            Some((h, w)) if (h, w) != out => {
                return Err(DataError::Input(format!(
                    "image {} preprocesses to {}x{}, image {} to {h}x{w}: a batch needs one size (set crop_size or a fixed size)",
                    name.as_ref(),
                    out.0,
                    out.1,
                    first_name.as_ref()
                )));
            }
            Some(_) => {}
        }
    }
    let (h, w) = hw.unwrap_or_default();
    let len = images.len().checked_mul(3 * h * w).ok_or_else(|| {
        DataError::Input(format!(
            "{} images of {h}x{w}: batch too large",
            images.len()
        ))
    })?;
    let mut data = Vec::with_capacity(len);
    for (name, img) in images {
        data.extend(preprocess(img, name.as_ref(), cfg)?);
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, h, w),
        &Device::Cpu,
    )?)
}
