//! LLaVA-NeXT-Video's video processor (transformers 5
//! `LlavaNextVideoVideoProcessor`, a torchvision-backend processor): every
//! frame resized so that its shortest edge is `size.shortest_edge`,
//! center-cropped to `crop_size` with torchvision's offsets, then rescaled
//! and normalized with torch's fused arithmetic
//! ([`crate::preprocess::torch_normalize`]); and the `<video>` count
//! `LlavaNextVideoProcessor` writes.
//!
//! Resizing is Pillow's ([`crate::pil_resize`]), where transformers runs
//! torch's uint8 antialiased bicubic: the two differ by one 8-bit level in
//! under 1% of values (measured in `fixtures/llava_next_video`); frames
//! that need no resize come out bit for bit as transformers makes them.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::pil_resize::resize;
use crate::preprocess::{crop_at, plan, torch_normalize};
use crate::processor_config::{
    config_err, find_video_processor_config, ProcessorConfig, VideoConfigSource,
};

/// `LlavaNextVideoVideoProcessor`'s class defaults for the fields a saved
/// config may leave out (the others are every CLIP processor's: bicubic,
/// 1/255, OpenAI CLIP mean and std, which [`ProcessorConfig`] defaults to).
const DEFAULT_SIDE: u64 = 224;

/// A LLaVA-NeXT-Video model's frame preprocessing.
#[derive(Debug, Clone)]
pub struct LlavaNextVideoProcessor {
    /// Resize, crop, rescale and normalize settings; `source` names the
    /// file they came from.
    pub cfg: ProcessorConfig,
}

impl LlavaNextVideoProcessor {
    /// The settings of the model directory `dir`, looked up as transformers
    /// 5's `get_video_processor_dict` does: `processor_config.json`'s
    /// `video_processor`, else `video_preprocessor_config.json`, else
    /// `preprocessor_config.json` (an image processor's fields, read by the
    /// video class).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        match find_video_processor_config(dir)? {
            VideoConfigSource::Found(value, path) => Self::from_value(&value, &path),
            VideoConfigSource::Missing(_) => Err(config_err(
                &dir.join("video_preprocessor_config.json"),
                "not found (nor processor_config.json's video_processor, nor preprocessor_config.json): the model has no video processor config",
            )),
        }
    }

    /// A video processor dict (`path`: what errors name), the class's
    /// defaults filled in; an image processor's tiling fields are not the
    /// video class's and are dropped.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let Some(fields) = value.as_object() else {
            return Err(config_err(path, "the video processor is not a JSON object"));
        };
        let mut fields = fields.clone();
        for key in [
            "image_processor_type",
            "image_grid_pinpoints",
            "max_image_tiles",
        ] {
            fields.remove(key);
        }
        let absent = |v: Option<&Value>| v.is_none_or(Value::is_null);
        if absent(fields.get("size")) {
            fields.insert(
                "size".into(),
                serde_json::json!({"shortest_edge": DEFAULT_SIDE}),
            );
        }
        if absent(fields.get("crop_size")) {
            fields.insert(
                "crop_size".into(),
                serde_json::json!({"height": DEFAULT_SIDE, "width": DEFAULT_SIDE}),
            );
        }
        if absent(fields.get("do_center_crop")) {
            fields.insert("do_center_crop".into(), Value::Bool(true));
        }
        let cfg = ProcessorConfig::from_json(&Value::Object(fields).to_string(), path)?;
        Ok(Self { cfg })
    }

    /// The frames' (height, width) after preprocessing when it does not
    /// depend on the video (a crop, or a fixed size).
    pub fn frame_size(&self) -> Option<(usize, usize)> {
        self.cfg.output_size()
    }

    /// A video's frames (all one size) -> pixel values; `name` is what
    /// errors call the video.
    ///
    /// # Shapes
    /// F frames of (h, w) -> (F, 3, H, W) f32 on the CPU
    pub fn preprocess(&self, frames: &[RgbImage], name: &str) -> Result<Tensor> {
        let Some(first) = frames.first() else {
            return Err(DataError::image(name, "a video with no frames"));
        };
        let size = first.dimensions();
        let (h, w) = (size.1 as usize, size.0 as usize);
        // every refusal (a resize canvas too large) before any allocation
        let ((rh, rw), (oh, ow)) = plan(name, h, w, &self.cfg)?;
        let mut values = Vec::with_capacity(frames.len() * 3 * oh * ow);
        for (i, frame) in frames.iter().enumerate() {
            if frame.dimensions() != size {
                return Err(DataError::image(
                    name,
                    format!(
                        "frame {i} is {}x{}, frame 0 {w}x{h}: a video's frames share one size",
                        frame.width(),
                        frame.height()
                    ),
                ));
            }
            values.extend(torch_normalize(
                &self.cropped(frame, name, (rh, rw))?,
                &self.cfg,
            ));
        }
        Ok(Tensor::from_vec(
            values,
            (frames.len(), 3, oh, ow),
            &Device::Cpu,
        )?)
    }

    /// One frame resized to (`rh`, `rw`) (the same size: as it is, as
    /// torchvision returns it) and center-cropped.
    fn cropped(&self, frame: &RgbImage, name: &str, (rh, rw): (usize, usize)) -> Result<RgbImage> {
        let (h, w) = (frame.height() as usize, frame.width() as usize);
        let resized = if !self.cfg.do_resize || (rh, rw) == (h, w) {
            frame.clone()
        } else {
            resize(frame, rh, rw, self.cfg.filter()?).ok_or_else(|| {
                DataError::image(name, format!("{w}x{h}: cannot resize to {rw}x{rh}"))
            })?
        };
        match (self.cfg.does_center_crop(), self.cfg.crop_size) {
            (true, Some(c)) => Ok(crop_at(
                &resized,
                torchvision_offset(rh, c.height),
                torchvision_offset(rw, c.width),
                c.height,
                c.width,
            )),
            _ => Ok(resized),
        }
    }
}

/// Where a center crop of `crop` starts along a side of `n` pixels, as
/// transformers' torchvision backend computes it: `int((n - crop) / 2)`
/// inside the image; a larger crop pads `(crop - n) // 2` before (the
/// image processors' floor division pads one more there when the
/// difference is odd).
fn torchvision_offset(n: usize, crop: usize) -> i64 {
    if crop > n {
        -(((crop - n) / 2) as i64)
    } else {
        ((n - crop) / 2) as i64
    }
}

/// `<video>` placeholders `LlavaNextVideoProcessor` writes for a video of
/// `frames` frames preprocessed to `frame_hw`: the frame's patches over 4
/// (its 2×2 pooling, whatever the model's stride), times the frames. The
/// model's rows (`glimpse_models::llava_next_video`, ⌊g / stride⌋² per
/// frame) agree for stride 2 on an even patch grid.
pub fn video_placeholders(frames: usize, frame_hw: (usize, usize), patch_size: usize) -> usize {
    let patches = (frame_hw.0 / patch_size.max(1)) * (frame_hw.1 / patch_size.max(1));
    patches / 4 * frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_defaults_fill_what_a_config_leaves_out() -> Result<()> {
        let p = LlavaNextVideoProcessor::from_value(&serde_json::json!({}), Path::new("v.json"))?;
        assert_eq!(p.frame_size(), Some((224, 224)));
        assert!(p.cfg.does_center_crop());
        // a legacy image processor's dict: its tiling is not the video's
        let legacy = serde_json::json!({
            "image_processor_type": "LlavaNextImageProcessor",
            "image_grid_pinpoints": [[32, 64]],
            "size": {"shortest_edge": 32},
            "crop_size": {"height": 32, "width": 32},
        });
        let p = LlavaNextVideoProcessor::from_value(&legacy, Path::new("p.json"))?;
        assert_eq!(p.frame_size(), Some((32, 32)));
        assert!(p.cfg.image_grid_pinpoints.is_none());
        let bad = serde_json::json!({"crop_size": {"height": 0, "width": 3}});
        let e = LlavaNextVideoProcessor::from_value(&bad, Path::new("v.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("v.json") && e.contains("crop_size"), "{e}");
        Ok(())
    }

    #[test]
    fn crop_offsets_are_torchvisions() {
        assert_eq!(torchvision_offset(32, 24), 4);
        assert_eq!(torchvision_offset(33, 24), 4);
        // larger crop: pad (crop - n) // 2 before, so the image starts at 1
        assert_eq!(torchvision_offset(21, 24), -1);
        assert_eq!(torchvision_offset(24, 24), 0);
        assert_eq!(video_placeholders(4, (24, 24), 4), 36);
        assert_eq!(video_placeholders(3, (336, 336), 14), 432);
    }
}
