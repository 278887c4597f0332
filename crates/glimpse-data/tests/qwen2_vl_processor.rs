//! Qwen2-VL's image processor against transformers 5.23's
//! `Qwen2VLImageProcessorPil` (fixtures/qwen2_vl, written by
//! scripts/dev/make_qwen2_vl_fixtures.py): smart_resize on every fixture
//! image and on extra sizes (rounding half to even, the min / max pixel
//! branches, the aspect-ratio error), the grid, the placeholder count, and
//! the patch rows bit for bit; a video's frames paired per temporal patch
//! as transformers lays them out.

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use common::{fixture_reference, fixtures};
use glimpse_data::{load_rgb, smart_resize, ImageLimits, Qwen2VlProcessor};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixtures().join("qwen2_vl/tiny")
}

fn usize_of(v: &Value) -> Result<usize> {
    Ok(v.as_u64().context("integer")? as usize)
}

#[test]
fn patches_grids_and_counts_equal_transformers() -> Result<()> {
    let proc = Qwen2VlProcessor::from_file(&model_dir().join("preprocessor_config.json"))?;
    let (r, t) = fixture_reference(&model_dir())?;
    assert_eq!(proc.min_pixels, usize_of(&r["min_pixels"])?);
    assert_eq!(proc.max_pixels, usize_of(&r["max_pixels"])?);
    assert_eq!(proc.patch_size, usize_of(&r["patch_size"])?);
    let images = r["images"].as_array().context("images")?;
    assert!(images.len() >= 6, "the fixture's images");
    for im in images {
        let name = im["name"].as_str().context("name")?;
        let img = load_rgb(
            &fixtures().join(im["file"].as_str().context("file")?),
            &ImageLimits::default(),
        )?;
        let (h, w) = (usize_of(&im["height"])?, usize_of(&im["width"])?);
        let resized = proc.resized_hw(name, h, w)?;
        assert_eq!(
            [resized.0, resized.1],
            [usize_of(&im["resized"][0])?, usize_of(&im["resized"][1])?],
            "{name}: smart_resize"
        );
        let patches = proc.preprocess(&img, name)?;
        let grid: Vec<usize> = im["grid_thw"]
            .as_array()
            .context("grid")?
            .iter()
            .map(usize_of)
            .collect::<Result<_>>()?;
        assert_eq!(patches.grid_thw.to_vec(), grid, "{name}: grid_thw");
        assert_eq!(
            proc.tokens(patches.grid_thw),
            usize_of(&im["tokens"])?,
            "{name}: tokens"
        );
        let want = t
            .get(&format!("image.{name}.pixel_values"))
            .context("pixel_values")?;
        assert_eq!(want.dims(), &[patches.rows(), patches.row_len], "{name}");
        let want: Vec<f32> = want.flatten_all()?.to_vec1()?;
        let same = want
            .iter()
            .zip(&patches.values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: pixel values differ from transformers'");
    }
    Ok(())
}

#[test]
fn smart_resize_equals_transformers_on_extra_sizes() -> Result<()> {
    let r = fixture_reference(&model_dir())?.0;
    let (min, max) = (usize_of(&r["min_pixels"])?, usize_of(&r["max_pixels"])?);
    let factor = usize_of(&r["patch_size"])? * usize_of(&r["merge_size"])?;
    let sizes = r["smart_resize"].as_array().context("smart_resize")?;
    assert!(
        sizes.iter().any(|s| s.get("error").is_some()),
        "an error case"
    );
    for s in sizes {
        let (h, w) = (usize_of(&s["height"])?, usize_of(&s["width"])?);
        let got = smart_resize(h, w, factor, min, max);
        match s.get("error") {
            Some(e) => assert_eq!(got.unwrap_err(), e.as_str().context("error")?, "{h}x{w}"),
            None => assert_eq!(
                got.map_err(anyhow::Error::msg)?,
                (usize_of(&s["resized"][0])?, usize_of(&s["resized"][1])?),
                "{h}x{w}"
            ),
        }
    }
    Ok(())
}

#[test]
fn extreme_aspect_ratio_is_a_one_line_error() -> Result<()> {
    let proc = Qwen2VlProcessor::from_file(&model_dir().join("preprocessor_config.json"))?;
    let img = image::RgbImage::new(402, 2);
    let e = proc.preprocess(&img, "strip.png").unwrap_err().to_string();
    assert!(e.contains("strip.png") && e.contains("aspect ratio"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    Ok(())
}

/// Four frames (the fixture's video, resized by the image processor): two
/// temporal patches, each row's T slots from consecutive frames, bit for
/// bit; an odd count repeats the last frame.
#[test]
fn video_frames_pair_per_temporal_patch() -> Result<()> {
    let proc = Qwen2VlProcessor::from_file(&model_dir().join("preprocessor_config.json"))?;
    let (r, t) = fixture_reference(&model_dir())?;
    let case = &r["video_case"];
    let frames = case["frames"]
        .as_array()
        .context("frames")?
        .iter()
        .map(|n| {
            let file = format!("qwen2_vl/images/{}.png", n.as_str().context("name")?);
            Ok(load_rgb(&fixtures().join(file), &ImageLimits::default())?)
        })
        .collect::<Result<Vec<_>>>()?;
    let patches = proc.preprocess_frames(&frames, "video")?;
    let grid: Vec<usize> = serde_json::from_value(case["video_grid_thw"].clone())?;
    assert_eq!(patches.grid_thw.to_vec(), grid);
    let want: Vec<f32> = t["video.frames.pixel_values_videos"]
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(want.len(), patches.values.len());
    assert!(want
        .iter()
        .zip(&patches.values)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // three frames: the third's temporal patch repeats it
    let three = proc.preprocess_frames(&frames[..3], "video")?;
    assert_eq!(three.grid_thw[0], 2);
    let last = proc.preprocess_frames(&[frames[2].clone(), frames[2].clone()], "video")?;
    let half = three.values.len() / 2;
    assert_eq!(three.values[half..], last.values[..]);
    // frames of different sizes are refused in one line
    let e = proc
        .preprocess_frames(&[frames[0].clone(), image::RgbImage::new(5, 5)], "clip.gif")
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip.gif") && e.contains("frame 1"), "{e}");
    Ok(())
}
