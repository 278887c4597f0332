//! Image files -> 8-bit RGB, the way transformers' processors see them:
//! `load_image` (EXIF transpose) then `convert_to_rgb` (image_transforms.py).

use std::io::{Cursor, Read};
use std::path::Path;

use flate2::read::ZlibDecoder;
use image::{
    DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Pixel, RgbImage, RgbaImage,
};

use crate::error::{DataError, Result};
use crate::files::read_bounded;

/// Guards against decompression bombs: a small file can claim a huge canvas.
#[derive(Debug, Clone)]
pub struct ImageLimits {
    /// Largest width × height accepted; Pillow's `MAX_IMAGE_PIXELS` by default.
    pub max_pixels: u64,
    /// Largest width or height accepted: 65535 by default, the most JPEG
    /// and GIF can store. Beyond that only a PNG or BMP strip of extreme
    /// aspect fits the pixel limit.
    pub max_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 89_478_485,
            max_side: 65_535,
        }
    }
}

impl ImageLimits {
    /// Whether a `w`×`h` picture is within the limits, checked from its
    /// header before any pixel is decoded; the error is the reason, for
    /// the caller to put after the name (an image's, a video's).
    pub fn check(&self, w: u32, h: u32) -> std::result::Result<(), String> {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > self.max_pixels {
            return Err(format!(
                "{w}x{h} = {pixels} pixels exceeds the limit of {} (decompression bomb?)",
                self.max_pixels
            ));
        }
        if pixels == 0 {
            return Err(format!("{w}x{h} image has no pixels"));
        }
        if w.max(h) > self.max_side {
            return Err(format!(
                "{w}x{h}: a side over {} pixels is refused",
                self.max_side
            ));
        }
        Ok(())
    }
}

/// What the decoder may allocate for metadata while it reads the header
/// (PNG text and EXIF chunks, ICC profiles); pixels get their own budget
/// once the size is known to be within [`ImageLimits`]. The png crate keeps
/// this first budget for the rest of the decode, for its row buffers (a
/// row of 65535 16-bit RGBA pixels is 512 KiB) and late text chunks.
const MAX_METADATA_BYTES: u64 = 64 << 20;

/// Largest ICC profile a PNG's `iCCP` chunk may inflate to: Pillow's PNG
/// reader refuses one past its `MAX_TEXT_CHUNK` (1 MiB) too, and real
/// profiles are a few KiB. The chunk is a zlib stream, so a 1 MB file can
/// hold a gigabyte of profile.
const MAX_ICC_BYTES: u64 = 1 << 20;

/// Reads and decodes an image file (format sniffed from its bytes, not its
/// extension).
pub fn load_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let bytes = read_image_file(path)?;
    decode_rgb(&bytes, &path.display().to_string(), limits)
}

/// Most bytes an image file may have; a larger one is refused before it
/// is read (no image format needs this much for the pixel limit).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// An image file's bytes: a regular file (not a directory, FIFO or
/// device, which could block or never end) of at most
/// [`MAX_IMAGE_FILE_BYTES`]. Every image file glimpse opens is read here.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    read_bounded(path, MAX_IMAGE_FILE_BYTES, "image")
        .map_err(|e| DataError::image(path.display().to_string(), e))
}

/// Decodes PNG, JPEG, WebP, GIF (first frame) or BMP bytes; `name` is what
/// errors call the image. The header's size is checked against `limits`
/// before any pixel is decoded, and EXIF orientation is applied (as
/// transformers' `load_image` does with `ImageOps.exif_transpose`).
///
/// Lossless inputs come out bit-identical to Pillow 13 + `convert_to_rgb`
/// (checked on RGB, RGBA, LA, L, palette+tRNS PNG, GIF, lossless WebP and
/// 16-bit RGB/RGBA/LA/grey PNG). Lossy JPEG and WebP go through other
/// decoders than Pillow's libjpeg-turbo / libwebp and can differ by a few
/// levels.
pub fn decode_rgb(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(DataError::image(name, "empty file"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::image(name, e))?;
    match reader.format() {
        None => {
            return Err(DataError::image(
                name,
                "not a supported image (PNG, JPEG, WebP, GIF or BMP)",
            ))
        }
        Some(ImageFormat::Png) => check_png_icc(bytes, name)?,
        Some(_) => {}
    }
    // Reading the header reads a PNG's metadata chunks too: bound what that
    // may allocate before the size is known.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(MAX_METADATA_BYTES);
    reader.limits(header_limits);
    // into_decoder parses the header only; pixels come in from_decoder below.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| DataError::image(name, format!("cannot read header: {e}")))?;
    let (w, h) = decoder.dimensions();
    limits
        .check(w, h)
        .map_err(|msg| DataError::image(name, msg))?;
    // Bound what the decoder may allocate too: 16-bit RGBA at the limit, plus
    // slack for the decoders' own buffers; and the sides, so a decoder that
    // reads more of the header later cannot grow past them.
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 26));
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
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

/// Refuses a PNG whose `iCCP` chunk inflates past [`MAX_ICC_BYTES`]. The
/// png crate inflates the profile while reading the header and, past its
/// allocation limit, drops the profile and decodes on; checked here the
/// image is refused, as Pillow refuses it, after inflating at most the
/// limit. A corrupt profile is left to the decoder, which ignores it (so
/// does Pillow).
fn check_png_icc(bytes: &[u8], name: &str) -> Result<()> {
    // after the 8-byte signature: (length u32 BE, type, data, CRC) chunks
    let mut pos = 8usize;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let start = pos + 8;
        let end = start.saturating_add(len).min(bytes.len());
        match kind {
            // metadata chunks that matter come before the pixels
            b"IDAT" | b"IEND" => break,
            b"iCCP" => {
                let data = &bytes[start..end];
                // profile name, NUL, compression method (0 = zlib), stream
                let Some(nul) = data.iter().position(|&b| b == 0) else {
                    break;
                };
                let stream = data.get(nul + 2..).unwrap_or_default();
                let inflated = std::io::copy(
                    &mut ZlibDecoder::new(stream).take(MAX_ICC_BYTES + 1),
                    &mut std::io::sink(),
                );
                if matches!(inflated, Ok(n) if n > MAX_ICC_BYTES) {
                    return Err(DataError::image(
                        name,
                        format!(
                            "iCCP chunk: ICC profile inflates past {} MiB (decompression bomb?)",
                            MAX_ICC_BYTES >> 20
                        ),
                    ));
                }
                break;
            }
            _ => {}
        }
        pos = end.saturating_add(4);
    }
    Ok(())
}

/// transformers' `convert_to_rgb`: RGB passes unchanged; anything else
/// becomes RGBA and is alpha-composited over opaque white, so transparent
/// pixels turn white rather than to whatever colour they stored.
///
/// 16-bit PNGs reach 8 bits as Pillow's PNG plugin reads them: RGB, RGBA and
/// LA keep the high byte (rawmodes `RGB;16B`, `RGBA;16B`, `LA;16B`); 16-bit
/// grey opens as mode `I;16`, whose conversion to RGBA (`I16_RGB` in
/// Convert.c) clips values above 255 to 255 rather than scaling them.
fn convert_to_rgb(img: DynamicImage) -> RgbImage {
    let rgba = match img {
        DynamicImage::ImageRgb8(rgb) => return rgb,
        // Pillow opens it as mode RGB, which convert_to_rgb passes unchanged
        DynamicImage::ImageRgb16(rgb) => {
            let mut out = RgbImage::new(rgb.width(), rgb.height());
            for (o, s) in out.pixels_mut().zip(rgb.pixels()) {
                o.0 = s.0.map(high_byte);
            }
            return out;
        }
        DynamicImage::ImageRgba16(rgba) => map_pixels(&rgba, |p| p.0.map(high_byte)),
        DynamicImage::ImageLumaA16(la) => map_pixels(&la, |p| {
            let [l, a] = p.0.map(high_byte);
            [l, l, l, a]
        }),
        DynamicImage::ImageLuma16(l) => map_pixels(&l, |p| {
            let v = p.0[0].min(255) as u8;
            [v, v, v, 255]
        }),
        // 8-bit grey, grey+alpha, RGBA: widening to RGBA is exact.
        // (Float images never come out of the supported decoders.)
        other => other.to_rgba8(),
    };
    composite_on_white(&rgba)
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

fn map_pixels<P: Pixel<Subpixel = u16>>(
    src: &ImageBuffer<P, Vec<u16>>,
    f: impl Fn(&P) -> [u8; 4],
) -> RgbaImage {
    let mut out = RgbaImage::new(src.width(), src.height());
    for (o, s) in out.pixels_mut().zip(src.pixels()) {
        o.0 = f(s);
    }
    out
}

/// Pillow's `Image.alpha_composite(white, src)` (libImaging/AlphaComposite.c)
/// specialised to an opaque white destination, with its integer rounding so
/// the result is bit-identical.
///
/// With dst = (255, 255, 255, 255) and source alpha `a` > 0, Pillow computes
/// `blend = 255 * (255 - a)`, `outa255 = 255 * a + blend` (= 65025),
/// `coef1 = a * 255 * 255 * 128 / outa255` (= 128 a, exact),
/// `coef2 = 255 * 128 - coef1`, and per colour channel `c`
/// `tmp = c * coef1 + 255 * coef2`, `out = DIV255(tmp + (0x80 << 7)) >> 7`
/// where `DIV255(x) = ((x >> 8) + x) >> 8`. Alpha 0 gives dst (white).
pub(crate) fn composite_on_white(src: &RgbaImage) -> RgbImage {
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
    fn opaque_composite_is_the_identity() {
        // why RGB16 may skip the composite: Pillow's arithmetic returns every
        // opaque value unchanged
        let values: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v, 255]).collect();
        let src = RgbaImage::from_raw(256, 1, values).unwrap();
        let out = composite_on_white(&src);
        for (i, px) in out.pixels().enumerate() {
            assert_eq!(px.0, [i as u8; 3]);
        }
    }

    #[test]
    fn transparent_pixels_turn_white() {
        let src = RgbaImage::from_raw(1, 1, vec![10, 20, 30, 0]).unwrap();
        assert_eq!(composite_on_white(&src).get_pixel(0, 0).0, [255; 3]);
    }
}
