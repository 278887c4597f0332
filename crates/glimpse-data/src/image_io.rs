//! Image files -> 8-bit RGB, the way transformers' processors see them.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage, RgbaImage};

use crate::error::{DataError, Result};

/// Guards against decompression bombs: a small file can claim a huge canvas.
#[derive(Debug, Clone)]
pub struct ImageLimits {
    /// Largest width × height accepted; Pillow's `MAX_IMAGE_PIXELS` by default.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 89_478_485,
        }
    }
}

/// Reads and decodes an image file (format sniffed from its bytes).
pub fn load_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| DataError::image(&name, e))?;
    if meta.is_dir() {
        return Err(DataError::image(&name, "is a directory, not an image file"));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::image(&name, e))?;
    decode_rgb(&bytes, &name, limits)
}

/// Decodes PNG, JPEG, WebP, GIF (first frame) or BMP bytes; `name` is what
/// errors call the image. The header's size is checked against `limits`
/// before any pixel is decoded, and JPEG EXIF orientation is applied (as
/// transformers' `load_image` does with `ImageOps.exif_transpose`).
pub fn decode_rgb(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(DataError::image(name, "empty file"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::image(name, e))?;
    if reader.format().is_none() {
        return Err(DataError::image(
            name,
            "not a supported image (PNG, JPEG, WebP, GIF or BMP)",
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| DataError::image(name, format!("cannot read header: {e}")))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(DataError::image(
            name,
            format!(
                "{w}x{h} = {pixels} pixels exceeds the limit of {} (decompression bomb?)",
                limits.max_pixels
            ),
        ));
    }
    if pixels == 0 {
        return Err(DataError::image(
            name,
            format!("{w}x{h} image has no pixels"),
        ));
    }
    // Bound what the decoder may allocate too: 16-bit RGBA at the limit, plus slack.
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 26));
    decoder
        .set_limits(decode_limits)
        .map_err(|e| DataError::image(name, e))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| DataError::image(name, format!("cannot decode: {e}")))?;
    img.apply_orientation(orientation);
    Ok(convert_to_rgb(img))
}

/// transformers' `convert_to_rgb`: RGB passes unchanged; anything else
/// becomes RGBA and is alpha-composited over opaque white, so transparent
/// pixels turn white rather than to whatever colour they stored.
fn convert_to_rgb(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => composite_on_white(&other.to_rgba8()),
    }
}

/// Pillow's `Image.alpha_composite(white, src)` (libImaging/AlphaComposite.c)
/// specialised to an opaque white destination, with its integer rounding so
/// the result is bit-identical.
fn composite_on_white(src: &RgbaImage) -> RgbImage {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |a: u32| ((a >> 8) + a) >> 8;
    let mut out = RgbImage::new(src.width(), src.height());
    for (o, s) in out.pixels_mut().zip(src.pixels()) {
        let [r, g, b, a] = s.0.map(u32::from);
        if a == 0 {
            o.0 = [255, 255, 255];
            continue;
        }
        let blend = 255 * (255 - a);
        let out_a255 = a * 255 + blend;
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        let channel = |c: u32| {
            let tmp = c * coef1 + 255 * coef2;
            (shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
        };
        o.0 = [channel(r), channel(g), channel(b)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_and_transparent_pixels() {
        let src = RgbaImage::from_raw(3, 1, vec![10, 20, 30, 255, 10, 20, 30, 0, 255, 0, 0, 128])
            .unwrap();
        let out = composite_on_white(&src);
        assert_eq!(out.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(1, 0).0, [255, 255, 255]);
        // Pillow: alpha_composite(white, (255,0,0,128)) -> (255, 127, 127)
        assert_eq!(out.get_pixel(2, 0).0, [255, 127, 127]);
    }
}
