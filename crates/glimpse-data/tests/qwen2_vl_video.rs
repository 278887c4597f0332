//! Qwen2-VL's video processor against transformers 5.23's
//! `Qwen2VLVideoProcessor` (fixtures/qwen2_vl, written by
//! scripts/dev/make_qwen2_vl_fixtures.py): the fixture video read from its
//! frame folder and its GIF, sampled by `--frames`, its patch rows bit for
//! bit and its `video_grid_thw` (the frame count padded to the temporal
//! patch); where the settings are read from (the video's own pixel budget,
//! not the image processor's).

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::{fixture_reference, fixtures};
use glimpse_data::{load_video, FrameSampling, Qwen2VlVideoProcessor, VideoOptions};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixtures().join("qwen2_vl/tiny")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(|x| x.as_u64().map(|n| n as usize))
            .collect()
    })
}

/// Frames sampled as the case asks, from `source` (the case's own, or the
/// same frames in the other form).
fn case_frames(case: &Value, source: &Path) -> Result<glimpse_data::Video> {
    let sampling = FrameSampling {
        frames: case["sampling"]["frames"].as_u64().map(|n| n as usize),
        ..FrameSampling::all()
    };
    Ok(load_video(
        source,
        &VideoOptions {
            sampling,
            ..VideoOptions::default()
        },
    )?)
}

#[test]
fn video_patches_equal_transformers_from_folder_and_gif() -> Result<()> {
    let (r, t) = fixture_reference(&model_dir())?;
    let proc = Qwen2VlVideoProcessor::from_dir(&model_dir())?;
    assert!(proc.source.ends_with("video_preprocessor_config.json"));
    assert_eq!(
        (proc.patches.min_pixels, proc.patches.max_pixels),
        (
            r["video_min_pixels"].as_u64().context("min")? as usize,
            r["video_max_pixels"].as_u64().context("max")? as usize
        )
    );
    let cases = r["video_cases"].as_array().context("video_cases")?;
    assert!(cases.len() >= 3);
    let (mut padded, mut sources) = (0, std::collections::BTreeSet::new());
    for case in cases {
        let name = case["name"].as_str().context("name")?;
        let own = fixtures().join(case["video"].as_str().context("video")?);
        // the folder and the GIF hold the same frames
        for source in [
            own.clone(),
            fixtures().join("qwen2_vl/video/frames"),
            fixtures().join("qwen2_vl/video/clip.gif"),
        ] {
            let video = case_frames(case, &source)?;
            let indices: Vec<usize> = video.frames.iter().map(|f| f.index).collect();
            assert_eq!(indices, usizes(&case["indices"]), "{name}: indices");
            if source == own {
                let times: Vec<f64> = video.frames.iter().map(|f| f.timestamp).collect();
                let want: Vec<f64> = case["timestamps"]
                    .as_array()
                    .context("timestamps")?
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect();
                assert_eq!(times.len(), want.len());
                for (g, w) in times.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-9,
                        "{name}: timestamps {times:?} vs {want:?}"
                    );
                }
            }
            let frames: Vec<_> = video.frames.into_iter().map(|f| f.image).collect();
            let patches = proc.preprocess(&frames, name)?;
            assert_eq!(
                patches.grid_thw.to_vec(),
                usizes(&case["video_grid_thw"]),
                "{name}: grid"
            );
            assert_eq!(
                proc.tokens(patches.grid_thw),
                case["video_tokens"].as_u64().context("tokens")? as usize
            );
            let want: Vec<f32> = t[&format!("video.{name}.pixel_values_videos")]
                .flatten_all()?
                .to_vec1()?;
            assert_eq!(want.len(), patches.values.len(), "{name}");
            let same = want
                .iter()
                .zip(&patches.values)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name} from {}: pixel values differ",
                source.display()
            );
            padded += usize::from(!frames.len().is_multiple_of(2));
            sources.insert(source);
        }
    }
    assert!(
        padded > 0,
        "a case with an odd frame count (last frame repeated)"
    );
    assert_eq!(sources.len(), 2, "the folder and the GIF");
    Ok(())
}

/// Settings are read as transformers 5 reads them: `processor_config.json`'s
/// `video_processor`, else `video_preprocessor_config.json`, else the image
/// processor's file (whose pixel budget then applies to videos too).
#[test]
fn settings_come_from_the_video_config_first() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image_cfg = std::fs::read_to_string(model_dir().join("preprocessor_config.json"))?;
    let video_cfg = std::fs::read_to_string(model_dir().join("video_preprocessor_config.json"))?;
    std::fs::write(tmp.path().join("preprocessor_config.json"), &image_cfg)?;
    let p = Qwen2VlVideoProcessor::from_dir(tmp.path())?;
    assert!(p.source.ends_with("preprocessor_config.json"));
    assert_eq!((p.patches.min_pixels, p.patches.max_pixels), (256, 2048));
    // the fixture's frames under the image budget are resized: another grid
    let video = case_frames(
        &serde_json::json!({"sampling": {"frames": 2}}),
        &fixtures().join("qwen2_vl/video/frames"),
    )?;
    let frames: Vec<_> = video.frames.into_iter().map(|f| f.image).collect();
    assert_eq!(p.preprocess(&frames, "v")?.grid_thw, [1, 4, 8]);

    std::fs::write(
        tmp.path().join("video_preprocessor_config.json"),
        &video_cfg,
    )?;
    let p = Qwen2VlVideoProcessor::from_dir(tmp.path())?;
    assert_eq!((p.patches.min_pixels, p.patches.max_pixels), (128, 1024));
    assert_eq!(p.preprocess(&frames, "v")?.grid_thw, [1, 2, 6]);

    let nested = serde_json::json!({"video_processor": {"size": {"shortest_edge": 64, "longest_edge": 512}, "patch_size": 4}});
    std::fs::write(tmp.path().join("processor_config.json"), nested.to_string())?;
    let p = Qwen2VlVideoProcessor::from_dir(tmp.path())?;
    assert!(p.source.ends_with("processor_config.json"));
    assert_eq!((p.patches.min_pixels, p.patches.max_pixels), (64, 512));

    let broken = tempfile::tempdir()?;
    std::fs::write(
        broken.path().join("video_preprocessor_config.json"),
        r#"{"fps": "fast"}"#,
    )?;
    let e = Qwen2VlVideoProcessor::from_dir(broken.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("video_preprocessor_config.json") && e.contains("fps") && !e.contains('\n'),
        "{e}"
    );
    Ok(())
}
