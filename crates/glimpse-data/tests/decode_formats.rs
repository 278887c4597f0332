//! Every supported container decodes to the same RGB pixels; limits and
//! preprocessing geometry follow transformers' rules.

use std::io::Cursor;

use anyhow::Result;
use glimpse_data::{decode_rgb, preprocess, ImageLimits, ProcessorConfig};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

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
        let decoded = decode_rgb(&bytes, "picture.dat", &ImageLimits::default())?;
        assert_eq!(decoded, img, "{format:?}");
    }
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
    let decoded = decode_rgb(&bytes, "anim.gif", &ImageLimits::default())?;
    assert_eq!(decoded.get_pixel(0, 0).0, [255, 0, 0]);
    Ok(())
}

#[test]
fn grayscale_and_alpha_become_rgb() -> Result<()> {
    let gray = image::GrayImage::from_fn(3, 2, |x, _| image::Luma([x as u8 * 100]));
    let bytes = encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png)?;
    let rgb = decode_rgb(&bytes, "gray.png", &ImageLimits::default())?;
    assert_eq!(rgb.get_pixel(2, 1).0, [200, 200, 200]);
    // fully transparent pixels turn white, whatever colour they stored
    let rgba = RgbaImage::from_pixel(2, 2, Rgba([0, 0, 0, 0]));
    let bytes = encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)?;
    let rgb = decode_rgb(&bytes, "clear.png", &ImageLimits::default())?;
    assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
    Ok(())
}

#[test]
fn pixel_limit_is_checked_from_the_header() -> Result<()> {
    let bytes = encode(DynamicImage::ImageRgb8(sample()), ImageFormat::Png)?;
    let err = decode_rgb(&bytes, "big.png", &ImageLimits { max_pixels: 34 })
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "image big.png: 7x5 = 35 pixels exceeds the limit of 34 (decompression bomb?)"
    );
    Ok(())
}

fn config(json: &str) -> Result<ProcessorConfig> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, json)?;
    Ok(ProcessorConfig::from_file(&path)?)
}

#[test]
fn resize_geometry_follows_transformers() -> Result<()> {
    let cfg =
        config(r#"{"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}"#)?;
    // int(32 * 97 / 67) = 46
    assert_eq!(cfg.resized_hw(67, 97), (32, 46));
    assert_eq!(cfg.resized_hw(97, 67), (46, 32));
    assert_eq!(cfg.output_hw(67, 97), (32, 32));
    let fixed = config(
        r#"{"size": {"height": 20, "width": 24}, "image_mean": [0.5,0.5,0.5], "image_std": [0.5,0.5,0.5]}"#,
    )?;
    assert_eq!(
        fixed.output_hw(67, 97),
        (20, 24),
        "SigLIP: no crop unless asked"
    );
    Ok(())
}

#[test]
fn crop_larger_than_image_pads_with_zeros() -> Result<()> {
    // no resize, no normalisation: pixel values are the rescaled bytes
    let cfg = config(
        r#"{"do_resize": false, "do_normalize": false, "do_center_crop": true, "crop_size": {"height": 3, "width": 4}}"#,
    )?;
    let img = RgbImage::from_pixel(2, 1, Rgb([255, 255, 255]));
    let v = preprocess(&img, &cfg)?;
    // transformers pads to 3x4 with the image at rows 1.., cols 1..: top = ceil((3-1)/2) = 1, left = ceil((4-2)/2) = 1
    let red: Vec<f32> = v[..12].to_vec();
    assert_eq!(red, vec![0., 0., 0., 0., 0., 1., 1., 0., 0., 0., 0., 0.]);
    Ok(())
}

#[test]
fn bad_processor_configs_are_named() -> Result<()> {
    let err = config(r#"{"size": {"shortest_edge": 32}, "resample": 0}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("resample 0 is not supported"), "{err}");
    let err = config(r#"{"do_resize": true}"#).unwrap_err().to_string();
    assert!(err.contains("size is missing"), "{err}");
    let err = config(r#"{"size": 32, "image_std": [0.5, 0.0, 0.5]}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_std contains 0"), "{err}");
    Ok(())
}

#[test]
fn extreme_aspect_ratio_is_refused_not_allocated() -> Result<()> {
    let cfg = config(r#"{"size": {"shortest_edge": 224}, "crop_size": 224}"#)?;
    // 1 x 500000 would resize to 224 x 112000000
    let img = RgbImage::new(500_000, 1);
    let err = preprocess(&img, &cfg).unwrap_err().to_string();
    assert!(err.contains("aspect ratio too extreme"), "{err}");
    Ok(())
}
