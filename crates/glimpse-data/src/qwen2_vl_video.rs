//! Qwen2-VL's video processor (transformers 5 `Qwen2VLVideoProcessor`):
//! where its settings are read from, which frames it takes when the user
//! names no sampling, its optional per-frame pixel cap, and the frames'
//! patch rows (the image processor's geometry with the video's own pixel
//! budget, the torch rescale / normalize arithmetic, the frame count padded
//! to a multiple of `temporal_patch_size` by repeating the last frame).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

use crate::error::Result;
use crate::processor_config::{config_err, find_video_processor_config, VideoConfigSource};
use crate::qwen2_vl_patches::{Qwen2VlPatches, Qwen2VlProcessor};
use crate::video::FrameSampling;

/// The class's `size` defaults (transformers 5.23): a video's frames get
/// their own pixel budget, unlike an image's 56² .. 28²·1280.
const VIDEO_MIN_PIXELS: usize = 128 * 28 * 28;
const VIDEO_MAX_PIXELS: usize = 28 * 28 * 768;
/// The class's `max_frames` and `max_video_tokens` defaults.
const VIDEO_MAX_FRAMES: usize = 768;
const MAX_VIDEO_TOKENS: usize = 128_000;

/// A Qwen2-VL video processor's settings.
#[derive(Debug, Clone)]
pub struct Qwen2VlVideoProcessor {
    /// Patch geometry, resize and normalize settings; `min_pixels` /
    /// `max_pixels` are the video's (`size.shortest_edge` / `longest_edge`).
    pub patches: Qwen2VlProcessor,
    /// `do_sample_frames`: whether the processor samples frames itself
    /// (false by default: every frame it is handed is used).
    pub do_sample_frames: bool,
    /// `fps`: frames per second to sample when `do_sample_frames`.
    pub fps: Option<f64>,
    /// `num_frames`: frames to sample when `do_sample_frames`.
    pub num_frames: Option<usize>,
    /// `max_frames`: the most frames `fps` sampling keeps.
    pub max_frames: usize,
    /// `cap_pixels_per_frame`: each frame's pixels also bounded by an even
    /// share of `max_video_tokens`' worth (qwen-vl-utils' rule).
    pub cap_pixels_per_frame: bool,
    pub max_video_tokens: usize,
    /// The file the settings came from (errors name it).
    pub source: PathBuf,
}

impl Qwen2VlVideoProcessor {
    /// The settings of the model directory `dir`, looked up as transformers
    /// 5 does: `processor_config.json`'s `video_processor`, else
    /// `video_preprocessor_config.json`, else the image processor's
    /// `preprocessor_config.json` (its fields read by the video class, with
    /// the video class's defaults for what it lacks). Where transformers
    /// finds none of them, glimpse reads `processor_config.json`'s
    /// `image_processor` the same way.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        match find_video_processor_config(dir)? {
            VideoConfigSource::Found(value, path) | VideoConfigSource::Missing(Some((value, path))) => {
                Self::from_json(&value.to_string(), &path)
            }
            VideoConfigSource::Missing(None) => Err(config_err(
                &dir.join("video_preprocessor_config.json"),
                "not found (nor preprocessor_config.json, nor processor_config.json): the model has no video processor config",
            )),
        }
    }

    /// Parses a video processor config's JSON text; `path` is what errors
    /// name. The patch and normalize fields are read as the image
    /// processor's ([`Qwen2VlProcessor::from_json`]).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let patches = Qwen2VlProcessor::from_json_with_pixels(
            text,
            path,
            VIDEO_MIN_PIXELS,
            VIDEO_MAX_PIXELS,
        )?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| config_err(path, format!("invalid JSON: {e}")))?;
        let value = match value.get("image_processor") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => value,
        };
        let field = |key: &str| value.get(key).filter(|v| !v.is_null());
        let bad = |key: &str, what: &str, v: &Value| {
            config_err(path, format!("{key} must be {what}, got {v}"))
        };
        let count = |key: &str| -> Result<Option<usize>> {
            field(key)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(key, "a positive integer", v))
                })
                .transpose()
        };
        let flag = |key: &str| -> Result<bool> {
            field(key)
                .map(|v| v.as_bool().ok_or_else(|| bad(key, "true or false", v)))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        let fps = field("fps")
            .map(|v| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| bad("fps", "a positive number", v))
            })
            .transpose()?;
        let num_frames = count("num_frames")?;
        let do_sample_frames = flag("do_sample_frames")?;
        if do_sample_frames && fps.is_some() && num_frames.is_some() {
            return Err(config_err(
                path,
                "do_sample_frames with both fps and num_frames: transformers refuses them together; keep one",
            ));
        }
        Ok(Self {
            patches,
            do_sample_frames,
            fps,
            num_frames,
            max_frames: count("max_frames")?.unwrap_or(VIDEO_MAX_FRAMES),
            cap_pixels_per_frame: flag("cap_pixels_per_frame")?,
            max_video_tokens: count("max_video_tokens")?.unwrap_or(MAX_VIDEO_TOKENS),
            source: path.to_path_buf(),
        })
    }

    /// How a video's frames are chosen: the user's `--frames` / `--fps`
    /// when given; else, when the processor samples frames itself
    /// (`do_sample_frames`), its `num_frames` (at most that many, spread
    /// uniformly) or its `fps` (at most `max_frames`); else every frame, as
    /// transformers uses every frame it is handed. `--max-frames` caps each.
    /// The frames are always taken by glimpse's rule (`floor(i·T/n)`, see
    /// [`FrameSampling`]); Qwen2-VL's own `sample_frames` (a float
    /// `arange`, `min_frames`, counts rounded to the temporal patch) is not
    /// reproduced, since the frame count is padded to the temporal patch
    /// afterwards anyway.
    pub fn sampling(&self, given: &FrameSampling) -> FrameSampling {
        if given.frames.is_some() || given.fps.is_some() || !self.do_sample_frames {
            return given.clone();
        }
        let cap = |n: usize| Some(given.max_frames.map_or(n, |m| m.min(n)));
        match (self.num_frames, self.fps) {
            (Some(n), _) => FrameSampling {
                max_frames: cap(n),
                ..FrameSampling::all()
            },
            (None, Some(fps)) => FrameSampling {
                fps: Some(fps),
                max_frames: cap(self.max_frames),
                ..FrameSampling::all()
            },
            (None, None) => given.clone(),
        }
    }

    /// A video's sampled frames -> its patch rows and `video_grid_thw`,
    /// as `Qwen2VLVideoProcessor._preprocess` makes them (resizing by
    /// Pillow instead of torchvision: frames already at their
    /// `smart_resize` size come out bit for bit).
    pub fn preprocess(&self, frames: &[RgbImage], name: &str) -> Result<Qwen2VlPatches> {
        if !self.cap_pixels_per_frame {
            return self.patches.preprocess_video(frames, name);
        }
        let mut capped = self.patches.clone();
        capped.max_pixels = self.capped_max_pixels(frames.len());
        capped.preprocess_video(frames, name)
    }

    /// `cap_pixels_per_frame`: `max(min(max_pixels, budget · T / n),
    /// int(1.05 · min_pixels))` with `budget = int(max_video_tokens ·
    /// factor² · 0.9)`, `n` the frames before padding (transformers'
    /// `Qwen2VLVideoProcessor.resize`).
    fn capped_max_pixels(&self, frames: usize) -> usize {
        let p = &self.patches;
        let factor = p.factor();
        let budget = (self.max_video_tokens.saturating_mul(factor * factor) as f64 * 0.9) as usize;
        let share = budget.saturating_mul(p.temporal_patch_size) / frames.max(1);
        p.max_pixels
            .min(share)
            .max((p.min_pixels as f64 * 1.05) as usize)
    }

    /// Placeholder tokens of a grid: t · h · w / merge².
    pub fn tokens(&self, grid_thw: [usize; 3]) -> usize {
        self.patches.tokens(grid_thw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Qwen2VlVideoProcessor> {
        Qwen2VlVideoProcessor::from_json(text, Path::new("video_preprocessor_config.json"))
    }

    #[test]
    fn video_defaults_are_the_video_class_ones() {
        let p = parse("{}").unwrap();
        assert_eq!(
            (p.patches.min_pixels, p.patches.max_pixels),
            (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
        );
        assert!(!p.do_sample_frames && !p.cap_pixels_per_frame);
        let p = parse(r#"{"min_pixels": 100, "size": {"shortest_edge": 7, "longest_edge": 900}}"#)
            .unwrap();
        assert_eq!((p.patches.min_pixels, p.patches.max_pixels), (100, 900));
    }

    #[test]
    fn sampling_follows_the_user_then_the_processor() {
        let p = parse(r#"{"do_sample_frames": true, "fps": 2.0, "max_frames": 6}"#).unwrap();
        let given = FrameSampling::frames(3);
        assert_eq!(p.sampling(&given), given);
        let s = p.sampling(&FrameSampling::all());
        assert_eq!((s.fps, s.max_frames), (Some(2.0), Some(6)));
        let s = p.sampling(&FrameSampling {
            max_frames: Some(4),
            ..FrameSampling::all()
        });
        assert_eq!(s.max_frames, Some(4));
        let p = parse(r#"{"do_sample_frames": true, "num_frames": 8}"#).unwrap();
        let s = p.sampling(&FrameSampling::all());
        assert_eq!((s.frames, s.fps, s.max_frames), (None, None, Some(8)));
        // without do_sample_frames every frame is used
        let p = parse(r#"{"fps": 2.0}"#).unwrap();
        assert_eq!(p.sampling(&FrameSampling::all()), FrameSampling::all());
    }

    #[test]
    fn bad_fields_name_themselves() {
        for (text, needle) in [
            (r#"{"fps": -1}"#, "fps"),
            (r#"{"num_frames": 0}"#, "num_frames"),
            (r#"{"do_sample_frames": "yes"}"#, "do_sample_frames"),
            (
                r#"{"do_sample_frames": true, "fps": 2, "num_frames": 4}"#,
                "fps and num_frames",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("video_preprocessor_config.json"),
                "{e}"
            );
        }
    }

    #[test]
    fn pixel_cap_shares_the_token_budget() {
        // factor 28: budget int(1000 * 784 * 0.9) = 705600; 2 * 705600 / 40 = 35280
        let p = parse(r#"{"cap_pixels_per_frame": true, "max_video_tokens": 1000, "min_pixels": 3136, "max_pixels": 200000}"#)
            .unwrap();
        assert_eq!(p.capped_max_pixels(40), 35280);
        // never below 1.05 * min_pixels
        assert_eq!(p.capped_max_pixels(100_000), 3292);
        assert_eq!(p.capped_max_pixels(1), 200_000);
    }
}
