//! LLaVA-NeXT-Video's video processor against transformers 5.23's
//! `LlavaNextVideoVideoProcessor` and `LlavaNextVideoProcessor`
//! (fixtures/llava_next_video, written by
//! scripts/dev/make_llava_next_video_fixtures.py): the committed frame
//! folder read as `--video` reads it, its pixel values bit for bit, the
//! prompts' ids with `<video>` and `<image>` expanded; and frames that need
//! resizing, equal to Pillow's path and within one 8-bit level of
//! transformers' (torch's uint8 bicubic).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Tensor;
use common::{fixture_reference, fixtures, max_diff};
use glimpse_data::llava_next_video::video_placeholders;
use glimpse_data::{
    load_rgb, load_video, ImageLimits, LlavaNextVideoProcessor, TextTokenizer, VideoOptions,
};
use serde_json::Value;

fn reference(model: &str) -> Result<(PathBuf, Value, HashMap<String, Tensor>)> {
    let dir = fixtures().join("llava_next_video").join(model);
    let (r, t) = fixture_reference(&dir)?;
    Ok((dir, r, t))
}

#[test]
fn frame_folder_pixels_and_ids_equal_transformers() -> Result<()> {
    for model in ["clip-llama", "siglip-qwen2"] {
        let (dir, r, t) = reference(model)?;
        let processor = LlavaNextVideoProcessor::from_dir(&dir)?;
        let tile = r["tile"].as_u64().context("tile")? as usize;
        assert_eq!(processor.frame_size(), Some((tile, tile)));
        // the committed folder, every frame, as `glimpse ask --video` loads it
        let video = load_video(
            &fixtures().join("llava_next_video/frames"),
            &VideoOptions::default(),
        )?;
        let frames: Vec<_> = video.frames.into_iter().map(|f| f.image).collect();
        let mut counts = std::collections::HashMap::new();
        for v in r["videos"].as_array().context("videos")? {
            let name = v["name"].as_str().context("name")?;
            let mut ordered = frames.clone();
            if name == "reversed" {
                ordered.reverse();
            }
            let got = processor.preprocess(&ordered, name)?;
            let want = &t[&format!("video.{name}.pixel_values_videos")];
            assert_eq!(got.dims(), want.dims());
            let d = max_diff(&got, want)?;
            assert_eq!(d, 0.0, "{model} {name}: pixel values differ by {d}");
            let tokens = video_placeholders(
                ordered.len(),
                (tile, tile),
                r["patch"].as_u64().context("patch")? as usize,
            );
            assert_eq!(tokens as u64, v["tokens"].as_u64().context("tokens")?);
            counts.insert(name.to_string(), tokens);
        }
        for im in r["images"].as_array().context("images")? {
            let n = im["tokens"].as_u64().context("tokens")? as usize;
            counts.insert(im["name"].as_str().context("name")?.to_string(), n);
        }
        // ids: the prompt tokenized as the processor does (specials added),
        // each placeholder repeated by its count, in prompt order
        let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let (image_id, video_id) = (
            r["image_token_id"].as_u64().context("image id")? as u32,
            r["video_token_id"].as_u64().context("video id")? as u32,
        );
        for case in r["cases"].as_array().context("cases")? {
            let prompt = case["prompt"].as_str().context("prompt")?;
            let names = |k: &str| -> Vec<String> {
                case[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            };
            let (mut images, mut videos) =
                (names("images").into_iter(), names("videos").into_iter());
            let encoded = tok
                .inner()
                .encode(prompt, true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut ids = Vec::new();
            for &id in encoded.get_ids() {
                let next = match id {
                    i if i == image_id => images.next(),
                    i if i == video_id => videos.next(),
                    _ => None,
                };
                match next {
                    Some(n) => ids.extend(std::iter::repeat_n(id, counts[&n])),
                    None => ids.push(id),
                }
            }
            let want: Vec<u32> = case["input_ids"]
                .as_array()
                .context("input_ids")?
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect();
            assert_eq!(ids, want, "{model} {}: input_ids", case["name"]);
        }
    }
    Ok(())
}

#[test]
fn resized_frames_follow_pillow_within_one_level_of_torch() -> Result<()> {
    let (dir, r, t) = reference("clip-llama")?;
    let processor = LlavaNextVideoProcessor::from_dir(&dir)?;
    let std = processor.cfg.image_std.0;
    let cases = r["resized"].as_array().context("resized")?;
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().context("name")?;
        let file = fixtures().join(case["frames"][0].as_str().context("frame")?);
        let frame = load_rgb(&file, &ImageLimits::default())?;
        let got = processor.preprocess(&[frame], name)?;
        let pillow = &t[&format!("video.resized_{name}.pillow")];
        assert_eq!(max_diff(&got, pillow)?, 0.0, "{name}: Pillow's path");
        // torch's uint8 bicubic: in 8-bit levels, channel by channel
        let torch = &t[&format!("video.resized_{name}.torch")];
        let (mut worst, mut differing) = (0f32, 0usize);
        for (c, s) in std.iter().enumerate() {
            let d = ((got.narrow(1, c, 1)? - torch.narrow(1, c, 1)?)?.abs()?
                * (f64::from(*s) * 255.0))?;
            let d = d.flatten_all()?.to_vec1::<f32>()?;
            worst = d.iter().fold(worst, |m, &x| m.max(x));
            differing += d.iter().filter(|&&x| x > 1e-3).count();
        }
        eprintln!("{name}: {differing} values a level apart (max {worst:.4})");
        assert!(
            worst <= 1.0 + 1e-3,
            "{name}: {worst} levels from transformers"
        );
        assert_eq!(
            differing as u64,
            case["differing"].as_u64().context("differing")?,
            "{name}: values off by a level"
        );
    }
    Ok(())
}

#[test]
fn bad_frames_and_configs_are_one_line_errors() -> Result<()> {
    let (dir, _, _) = reference("clip-llama")?;
    let processor = LlavaNextVideoProcessor::from_dir(&dir)?;
    let e = processor
        .preprocess(&[], "empty.gif")
        .err()
        .context("no frames")?
        .to_string();
    assert!(e.contains("empty.gif") && e.contains("no frames"), "{e}");
    let frames = [image::RgbImage::new(32, 24), image::RgbImage::new(30, 24)];
    let e = processor
        .preprocess(&frames, "v")
        .err()
        .context("mixed sizes")?
        .to_string();
    assert!(e.contains("frame 1 is 30x24") && !e.contains('\n'), "{e}");
    // a model folder without any processor config
    let empty = tempfile::tempdir()?;
    let e = LlavaNextVideoProcessor::from_dir(empty.path())
        .err()
        .context("no config")?
        .to_string();
    assert!(
        e.contains("video_preprocessor_config.json") && e.contains("not found"),
        "{e}"
    );
    // the legacy file: an image processor's preprocessor_config.json
    std::fs::write(
        empty.path().join("preprocessor_config.json"),
        r#"{"image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 0}}"#,
    )?;
    let e = LlavaNextVideoProcessor::from_dir(empty.path())
        .err()
        .context("size 0")?
        .to_string();
    assert!(
        e.contains("preprocessor_config.json") && e.contains("shortest_edge 0"),
        "{e}"
    );
    Ok(())
}
