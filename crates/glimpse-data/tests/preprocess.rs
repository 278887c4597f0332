//! `preprocessor_config.json` parsing and the geometry and arithmetic of
//! transformers' CLIP / SigLIP image processors.

use anyhow::Result;
use glimpse_data::{
    center_crop, preprocess, preprocess_batch, CropSize, ProcessorConfig, SizeSpec,
};
use image::{Rgb, RgbImage};

fn config(json: &str) -> Result<ProcessorConfig> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, json)?;
    Ok(ProcessorConfig::from_file(&path)?)
}

/// The error for a config, with the temp path replaced by `P`.
fn config_err(json: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, json)?;
    let err = match ProcessorConfig::from_file(&path) {
        Ok(_) => anyhow::bail!("{json} was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains('\n'), "{err:?}");
    Ok(err.replace(&path.display().to_string(), "P"))
}

#[test]
// transformers' OPENAI_CLIP_MEAN / _STD digits, as the configs write them
#[allow(clippy::excessive_precision)]
fn clip_and_siglip_configs_parse_with_defaults() -> Result<()> {
    // openai/clip-vit-base-patch32 as saved before image processors existed
    let clip = config(
        r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3, "size": 224,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "some_future_field": {"x": 1}}"#,
    )?;
    assert_eq!(clip.size, Some(SizeSpec::ShortestEdge(224)));
    assert_eq!(
        clip.crop_size,
        Some(CropSize {
            height: 224,
            width: 224
        })
    );
    assert!(clip.do_rescale);
    assert_eq!(clip.rescale_factor, 1.0 / 255.0);
    assert_eq!(clip.output_size(), Some((224, 224)));

    let siglip = config(
        r#"{"image_processor_type": "SiglipImageProcessor", "size": {"height": 384, "width": 384},
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
            "do_convert_rgb": null, "processor_class": "SiglipProcessor"}"#,
    )?;
    assert!(!siglip.does_center_crop());
    assert_eq!(siglip.output_size(), Some((384, 384)));
    assert_eq!(siglip.output_hw(67, 97), (384, 384));

    // all defaults: OpenAI CLIP statistics, bicubic
    let bare = config(r#"{"size": {"shortest_edge": 32}}"#)?;
    assert_eq!(bare.image_mean.0, [0.481_454_66, 0.457_827_5, 0.408_210_73]);
    assert_eq!(bare.image_std.0, [0.268_629_54, 0.261_302_58, 0.275_777_11]);
    assert_eq!(bare.resample, 3);
    assert!(
        !bare.does_center_crop(),
        "no type, no do_center_crop: no crop"
    );
    assert_eq!(
        bare.output_size(),
        None,
        "shortest_edge: depends on the image"
    );
    Ok(())
}

#[test]
fn center_crop_default_follows_the_processor_class() -> Result<()> {
    let cfg = |extra: &str| {
        config(&format!(
            r#"{{"size": {{"shortest_edge": 32}}, "crop_size": {{"height": 32, "width": 32}}{extra}}}"#
        ))
    };
    assert!(cfg(r#", "image_processor_type": "CLIPImageProcessor""#)?.does_center_crop());
    assert!(cfg(r#", "image_processor_type": "CLIPImageProcessorFast""#)?.does_center_crop());
    assert!(!cfg("")?.does_center_crop());
    assert!(
        !cfg(r#", "image_processor_type": "CLIPImageProcessor", "do_center_crop": false"#)?
            .does_center_crop()
    );
    assert!(cfg(r#", "do_center_crop": true"#)?.does_center_crop());
    Ok(())
}

#[test]
fn bad_configs_name_the_file_and_field() -> Result<()> {
    assert_eq!(
        config_err(r#"{"size": 32, "do_center_crop": true}"#)?,
        "image processor config P: missing field crop_size (do_center_crop is true)"
    );
    assert_eq!(
        config_err(r#"{"do_resize": true}"#)?,
        "image processor config P: missing field size (do_resize is true)"
    );
    let err = config_err(r#"{"size": 32, "resample": 7}"#)?;
    assert!(
        err.starts_with("image processor config P: resample 7 is not supported"),
        "{err}"
    );
    let err = config_err(r#"{"size": 32, "do_resize": "yes"}"#)?;
    assert!(
        err.starts_with("image processor config P: field do_resize: invalid type"),
        "{err}"
    );
    // (longest_edge is Idefics3's; a key no processor uses is refused)
    let err = config_err(r#"{"size": {"longest": 32}}"#)?;
    assert!(
        err.starts_with("image processor config P: field size: expected"),
        "{err}"
    );
    let err = config_err(r#"{"size": 32, "image_mean": [0.5, 0.5]}"#)?;
    assert!(
        err.starts_with("image processor config P: field image_mean: expected 3"),
        "{err}"
    );
    let err = config_err(r#"{"size": 32, "image_std": [0.5, 0.0, 0.5]}"#)?;
    assert_eq!(
        err,
        "image processor config P: image_std [0.5, 0.0, 0.5] must be finite numbers > 0 (normalising divides by them)"
    );
    let err = config_err(r#"{"size": {"height": 0, "width": 4}}"#)?;
    assert_eq!(
        err,
        "image processor config P: size height 0 width 4 is out of range: each side must be 1..=8192"
    );
    let err = config_err(r#"{"size": 32,"#)?;
    assert!(
        err.starts_with("image processor config P: invalid JSON"),
        "{err}"
    );

    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("preprocessor_config.json");
    let err = ProcessorConfig::from_file(&missing)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("image processor config {}: not found", missing.display())
    );
    Ok(())
}

#[test]
fn shortest_edge_resize_truncates_like_python_int() -> Result<()> {
    let cfg = config(r#"{"size": {"shortest_edge": 32}}"#)?;
    // 97 wide x 67 high: int(32 * 97 / 67) = int(46.33) = 46 -> 46x32
    assert_eq!(cfg.resized_hw(67, 97), (32, 46));
    assert_eq!(cfg.resized_hw(97, 67), (46, 32));
    let out = preprocess(&RgbImage::new(97, 67), "img", &cfg)?;
    assert_eq!(out.len(), 3 * 32 * 46);

    let cfg = config(r#"{"size": 224}"#)?;
    // int(224 * 1000 / 750) = int(298.67) = 298; exact ratios stay exact
    assert_eq!(cfg.resized_hw(750, 1000), (224, 298));
    assert_eq!(cfg.resized_hw(200, 300), (224, 336));
    assert_eq!(cfg.resized_hw(224, 224), (224, 224));
    // a square keeps the short side on the width (w <= h branch)
    assert_eq!(cfg.resized_hw(100, 100), (224, 224));

    let fixed = config(r#"{"size": {"height": 20, "width": 24}}"#)?;
    assert_eq!(fixed.output_hw(67, 97), (20, 24));
    assert_eq!(
        preprocess(&RgbImage::new(97, 67), "img", &fixed)?.len(),
        3 * 20 * 24
    );
    Ok(())
}

#[test]
fn center_crop_offsets_follow_transformers() {
    // pixel value = 10 * row + column, so the crop's origin is readable
    let img = RgbImage::from_fn(5, 4, |x, y| Rgb([(10 * y + x) as u8; 3]));
    // top = (4 - 3) // 2 = 0, left = (5 - 3) // 2 = 1
    let c = center_crop(&img, 3, 3);
    assert_eq!(c.get_pixel(0, 0).0[0], 1);
    assert_eq!(c.get_pixel(2, 2).0[0], 23);
    // top = (4 - 2) // 2 = 1, left = (5 - 2) // 2 = 1
    let c = center_crop(&img, 2, 2);
    assert_eq!(c.get_pixel(0, 0).0[0], 11);
    // larger than the image: top = (4 - 6) // 2 = -1, left = (5 - 8) // 2 = -2
    // (floor division), zero padding outside
    let c = center_crop(&img, 6, 8);
    assert_eq!(c.dimensions(), (8, 6));
    assert_eq!(c.get_pixel(1, 1).0[0], 0, "padding");
    assert_eq!(c.get_pixel(2, 1).0[0], 0, "image origin");
    assert_eq!(c.get_pixel(3, 1).0[0], 1);
    assert_eq!(c.get_pixel(6, 4).0[0], 34, "image bottom-right");
    assert_eq!(c.get_pixel(7, 5).0[0], 0, "padding");
}

#[test]
fn crop_larger_than_image_pads_with_zeros_in_pixel_values() -> Result<()> {
    let cfg = config(
        r#"{"do_resize": false, "do_normalize": false, "do_center_crop": true, "crop_size": {"height": 3, "width": 4}}"#,
    )?;
    let img = RgbImage::from_pixel(2, 1, Rgb([255, 255, 255]));
    let v = preprocess(&img, "img", &cfg)?;
    // top = (1 - 3) // 2 = -1, left = (2 - 4) // 2 = -1: image at row 1, cols 1..3
    let red: Vec<f32> = v[..12].to_vec();
    assert_eq!(red, vec![0., 0., 0., 0., 0., 1., 1., 0., 0., 0., 0., 0.]);
    Ok(())
}

#[test]
fn rescale_then_normalize_arithmetic() -> Result<()> {
    let cfg = config(
        r#"{"do_resize": false, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}"#,
    )?;
    let img = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([0, 128, 255])
        } else {
            Rgb([7, 7, 7])
        }
    });
    let v = preprocess(&img, "img", &cfg)?;
    // CHW: [R(0,0), R(1,0), G(0,0), G(1,0), B(0,0), B(1,0)]
    let expect = |byte: u8, c: usize| {
        // float64 rescale cast to float32, then float32 normalize
        let x = (f64::from(byte) / 255.0) as f32;
        (x - [0.5f32, 0.4, 0.3][c]) / [0.2f32, 0.25, 0.3][c]
    };
    assert_eq!(
        v,
        vec![
            expect(0, 0),
            expect(7, 0),
            expect(128, 1),
            expect(7, 1),
            expect(255, 2),
            expect(7, 2)
        ]
    );
    // the values themselves: (0 - 0.5) / 0.2 = -2.5; (1 - 0.3) / 0.3 = 2.333..
    assert!((v[0] + 2.5).abs() < 1e-6);
    assert!((v[4] - 7.0 / 3.0).abs() < 1e-6);

    let raw = config(r#"{"do_resize": false, "do_rescale": false, "do_normalize": false}"#)?;
    assert_eq!(preprocess(&img, "img", &raw)?[2], 128.0);
    Ok(())
}

#[test]
fn resampling_keeps_flat_images_flat() -> Result<()> {
    let img = RgbImage::from_pixel(13, 9, Rgb([40, 120, 200]));
    for resample in 0..6 {
        let cfg = config(&format!(
            r#"{{"size": {{"height": 5, "width": 21}}, "resample": {resample}, "do_rescale": false, "do_normalize": false}}"#
        ))?;
        let v = preprocess(&img, "img", &cfg)?;
        assert_eq!(v.len(), 3 * 5 * 21);
        for (c, want) in [40.0, 120.0, 200.0].into_iter().enumerate() {
            assert!(
                v[c * 105..(c + 1) * 105].iter().all(|&x| x == want),
                "resample {resample} channel {c}"
            );
        }
    }
    Ok(())
}

#[test]
fn batches_need_one_size() -> Result<()> {
    let crop = config(r#"{"size": 16, "crop_size": 16, "do_center_crop": true}"#)?;
    let images = [("a", RgbImage::new(40, 20)), ("b", RgbImage::new(17, 33))];
    let t = preprocess_batch(&images, &crop)?;
    assert_eq!(t.dims(), &[2, 3, 16, 16]);

    let no_crop = config(r#"{"size": 16}"#)?;
    let err = preprocess_batch(&images, &no_crop)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("a batch needs one size"), "{err}");
    assert!(preprocess_batch::<&str>(&[], &crop).is_err());
    Ok(())
}

#[test]
fn extreme_aspect_ratio_is_refused_not_allocated() -> Result<()> {
    let cfg = config(r#"{"size": {"shortest_edge": 224}, "crop_size": 224}"#)?;
    // 500000 x 1 would resize to 112000000 x 224
    let err = preprocess(&RgbImage::new(500_000, 1), "strip.png", &cfg)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    // the image, the size and the processor file that asked for it
    assert!(
        err.starts_with(
            "image strip.png: 500000x1 would resize to 112000000x224 (size shortest_edge 224 of "
        ) && err.contains("preprocessor_config.json)")
            && err.contains("aspect ratio too extreme"),
        "{err}"
    );
    Ok(())
}
