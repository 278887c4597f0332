//! Decoding: every supported container, EXIF orientation, transformers'
//! `convert_to_rgb` with Pillow's arithmetic, and one-line errors for
//! everything that is not a usable image.

mod common;
use common::chunk;
use std::io::Cursor;

use anyhow::Result;
use glimpse_data::{decode_rgb, load_rgb, ImageLimits};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};

fn sample() -> RgbImage {
    // few distinct colours so GIF's palette is exact
    let colours = [[255, 0, 0], [0, 128, 0], [0, 0, 255], [250, 250, 250]];
    RgbImage::from_fn(7, 5, |x, y| Rgb(colours[((x + 2 * y) % 4) as usize]))
}

fn encode(img: DynamicImage, format: ImageFormat) -> Result<Vec<u8>> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)?;
    Ok(bytes.into_inner())
}

fn decode(bytes: &[u8]) -> glimpse_data::Result<RgbImage> {
    decode_rgb(bytes, "x", &ImageLimits::default())
}

#[test]
fn lossless_formats_round_trip() -> Result<()> {
    let img = sample();
    for format in [
        ImageFormat::Png,
        ImageFormat::Bmp,
        ImageFormat::WebP,
        ImageFormat::Gif,
    ] {
        let bytes = encode(DynamicImage::ImageRgb8(img.clone()), format)?;
        // the name carries a wrong extension on purpose: the format is sniffed
        let decoded = decode_rgb(&bytes, "picture.jpg", &ImageLimits::default())?;
        assert_eq!(decoded, img, "{format:?}");
    }
    Ok(())
}

/// Two flat halves, left red and right blue, big enough that JPEG's 8x8
/// blocks and chroma subsampling leave their centres close to the colour.
fn halves(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn near(got: [u8; 3], want: [u8; 3]) -> bool {
    got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 12)
}

#[test]
fn jpeg_decodes() -> Result<()> {
    let bytes = encode(DynamicImage::ImageRgb8(halves(32, 16)), ImageFormat::Jpeg)?;
    let img = decode(&bytes)?;
    assert_eq!(img.dimensions(), (32, 16));
    assert!(
        near(img.get_pixel(4, 8).0, [255, 0, 0]),
        "{:?}",
        img.get_pixel(4, 8)
    );
    assert!(
        near(img.get_pixel(28, 8).0, [0, 0, 255]),
        "{:?}",
        img.get_pixel(28, 8)
    );
    Ok(())
}

/// An EXIF APP1 segment holding only Orientation (tag 0x0112, SHORT) in a
/// big-endian TIFF structure.
fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // TIFF header, IFD0 at 8
    payload.extend_from_slice(&1u16.to_be_bytes()); // one entry
    payload.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    payload.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    payload.extend_from_slice(&1u32.to_be_bytes()); // count
    payload.extend_from_slice(&orientation.to_be_bytes());
    payload.extend_from_slice(&[0, 0]); // value padded to 4 bytes
    payload.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
    seg.extend_from_slice(&payload);
    seg
}

#[test]
fn jpeg_exif_orientation_6_is_rotated_clockwise() -> Result<()> {
    let jpeg = encode(DynamicImage::ImageRgb8(halves(32, 16)), ImageFormat::Jpeg)?;
    // after SOI and the JFIF APP0 segment, where cameras put APP1
    assert_eq!(&jpeg[..4], &[0xFF, 0xD8, 0xFF, 0xE0]);
    let app0_end = 4 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
    let mut bytes = jpeg[..app0_end].to_vec();
    bytes.extend(exif_orientation_segment(6));
    bytes.extend_from_slice(&jpeg[app0_end..]);

    let img = decode(&bytes)?;
    // 6 = "rotate 90 CW to display": (x, y) -> (H-1-y, x), so the left
    // (red) half ends on top; 8 (counter-clockwise) would put it below.
    assert_eq!(img.dimensions(), (16, 32));
    assert!(
        near(img.get_pixel(8, 4).0, [255, 0, 0]),
        "{:?}",
        img.get_pixel(8, 4)
    );
    assert!(
        near(img.get_pixel(8, 28).0, [0, 0, 255]),
        "{:?}",
        img.get_pixel(8, 28)
    );
    Ok(())
}

#[test]
fn gif_gives_its_first_frame() -> Result<()> {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let frame = |c: [u8; 4]| {
        Frame::from_parts(
            RgbaImage::from_pixel(4, 3, Rgba(c)),
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        )
    };
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        enc.encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])])?;
    }
    let decoded = decode(&bytes)?;
    assert_eq!(decoded.dimensions(), (4, 3));
    assert_eq!(decoded.get_pixel(0, 0).0, [255, 0, 0]);
    Ok(())
}

#[test]
fn rgba_is_composited_on_white_like_pillow() -> Result<()> {
    // Pillow's alpha_composite(white, src) for an opaque white destination
    // (AlphaComposite.c, PRECISION_BITS = 7): coef1 = 128 a,
    // coef2 = 128 (255 - a), tmp = c coef1 + 255 coef2,
    // out = DIV255(tmp + 16384) >> 7 with DIV255(x) = ((x >> 8) + x) >> 8.
    //  (255,0,0,128): G: tmp = 255*128*127 = 4145280; +16384 = 4161664;
    //    (4161664>>8)=16256; (16256+4161664)>>8 = 16320; >>7 = 127.
    //    R: tmp = 8323200 -> 32703 -> 255.              => (255, 127, 127)
    //  (0,0,255,1): 0 -> tmp = 8290560 -> 32575 >> 7 = 254 => (254, 254, 255)
    //  (10,20,30,200): coef1 = 25600, coef2 = 7040:
    //    10 -> 2051200 -> 8108 >> 7 = 63; 20 -> 9111 >> 7 = 71;
    //    30 -> 10115 >> 7 = 79                              => (63, 71, 79)
    //  (10,20,30,0): dst unchanged                          => white
    //  opaque: unchanged
    let src = RgbaImage::from_raw(
        5,
        1,
        vec![
            255, 0, 0, 128, 0, 0, 255, 1, 10, 20, 30, 200, 10, 20, 30, 0, 1, 2, 3, 255,
        ],
    )
    .ok_or_else(|| anyhow::anyhow!("buffer size"))?;
    let rgb = decode(&encode(DynamicImage::ImageRgba8(src), ImageFormat::Png)?)?;
    let px: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert_eq!(
        px,
        vec![
            [255, 127, 127],
            [254, 254, 255],
            [63, 71, 79],
            [255, 255, 255],
            [1, 2, 3]
        ]
    );
    Ok(())
}

#[test]
fn grayscale_becomes_rgb() -> Result<()> {
    let gray = image::GrayImage::from_fn(3, 2, |x, _| Luma([x as u8 * 100]));
    let rgb = decode(&encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png)?)?;
    assert_eq!(rgb.get_pixel(2, 1).0, [200, 200, 200]);
    // grey + alpha goes through the same composite: alpha 0 is white
    let la = ImageBuffer::<image::LumaA<u8>, _>::from_pixel(2, 2, image::LumaA([0, 0]));
    let rgb = decode(&encode(DynamicImage::ImageLumaA8(la), ImageFormat::Png)?)?;
    assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
    Ok(())
}

#[test]
fn sixteen_bit_pngs_reduce_as_pillow_reads_them() -> Result<()> {
    // RGB 16: Pillow's RGB;16B rawmode keeps the high byte (0x12ff -> 0x12;
    // scaling would round to 0x13)
    let rgb16 = ImageBuffer::<Rgb<u16>, _>::from_pixel(1, 1, Rgb([0x12ff, 0xff00, 0x00ff]));
    let rgb = decode(&encode(DynamicImage::ImageRgb16(rgb16), ImageFormat::Png)?)?;
    assert_eq!(rgb.get_pixel(0, 0).0, [0x12, 0xff, 0x00]);
    // grey 16 opens as I;16, whose RGBA conversion clips at 255
    let g16 =
        ImageBuffer::<Luma<u16>, _>::from_fn(3, 1, |x, _| Luma([[200, 255, 300][x as usize]]));
    let rgb = decode(&encode(DynamicImage::ImageLuma16(g16), ImageFormat::Png)?)?;
    let px: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert_eq!(px, vec![[200; 3], [255; 3], [255; 3]]);
    Ok(())
}

fn err_of(r: glimpse_data::Result<RgbImage>) -> String {
    match r {
        Ok(img) => panic!("expected an error, decoded {:?}", img.dimensions()),
        Err(e) => e.to_string(),
    }
}

fn one_line_with(err: &str, parts: &[&str]) {
    assert!(!err.contains('\n'), "not one line: {err:?}");
    for p in parts {
        assert!(err.contains(p), "{err:?} lacks {p:?}");
    }
}

#[test]
fn bad_files_give_one_line_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = ImageLimits::default();
    let write = |name: &str, bytes: &[u8]| -> Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes)?;
        Ok(p)
    };

    let empty = write("empty.png", b"")?;
    let err = err_of(load_rgb(&empty, &limits));
    assert_eq!(err, format!("image {}: empty file", empty.display()));

    let text = write("notes.png", b"these are not pixels\n")?;
    let err = err_of(load_rgb(&text, &limits));
    one_line_with(&err, &["notes.png", "not a supported image"]);

    let junk = write("junk.bin", &[0x13, 0x37, 0x00, 0xff, 0x42, 0x17, 0x99])?;
    one_line_with(
        &err_of(load_rgb(&junk, &limits)),
        &["junk.bin", "not a supported image"],
    );

    // a real PNG cut off in its pixel data
    let png = encode(DynamicImage::ImageRgb8(sample()), ImageFormat::Png)?;
    let cut = write("cut.png", &png[..png.len() - 20])?;
    one_line_with(
        &err_of(load_rgb(&cut, &limits)),
        &["cut.png", "cannot decode"],
    );

    // the same PNG with its pixel data scrambled
    let mut garbled = png.clone();
    let idat = png
        .windows(4)
        .position(|w| w == b"IDAT")
        .ok_or_else(|| anyhow::anyhow!("no IDAT"))?;
    for b in &mut garbled[idat + 4..idat + 12] {
        *b ^= 0x5a;
    }
    let garbled = write("garbled.png", &garbled)?;
    one_line_with(
        &err_of(load_rgb(&garbled, &limits)),
        &["garbled.png", "cannot decode"],
    );

    let err = err_of(load_rgb(dir.path(), &limits));
    assert_eq!(
        err,
        format!("image {}: is a directory", dir.path().display())
    );

    let missing = dir.path().join("nope/cat.png");
    let err = err_of(load_rgb(&missing, &limits));
    assert_eq!(err, format!("image {}: not found", missing.display()));
    Ok(())
}

#[test]
fn decompression_bomb_is_refused_from_the_header() -> Result<()> {
    // A valid PNG header claiming 100000 x 100000 RGB (30 GB decoded) with a
    // few bytes of pixel data: decoding it would fail differently (or run
    // out of memory), so this error shows the header check came first.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    let err = err_of(decode_rgb(&png, "bomb.png", &ImageLimits::default()));
    assert_eq!(
        err,
        "image bomb.png: 100000x100000 = 10000000000 pixels exceeds the limit of 89478485 (decompression bomb?)"
    );

    // the limit is the caller's to set
    let small = encode(DynamicImage::ImageRgb8(sample()), ImageFormat::Png)?;
    let err = err_of(decode_rgb(
        &small,
        "big.png",
        &ImageLimits {
            max_pixels: 34,
            ..Default::default()
        },
    ));
    assert_eq!(
        err,
        "image big.png: 7x5 = 35 pixels exceeds the limit of 34 (decompression bomb?)"
    );
    assert!(decode_rgb(
        &small,
        "ok.png",
        &ImageLimits {
            max_pixels: 35,
            ..Default::default()
        }
    )
    .is_ok());
    Ok(())
}
