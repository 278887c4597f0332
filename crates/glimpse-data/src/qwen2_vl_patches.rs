//! Qwen2-VL's image processor (transformers `Qwen2VLImageProcessorPil`):
//! `smart_resize` to multiples of patch × merge within a pixel budget,
//! Pillow's resample, rescale and normalize (the shared
//! [`crate::preprocess`] path), then the patches laid out block-major over
//! merge × merge blocks with the frame repeated to the temporal patch size,
//! and the `(t, h, w)` grid the model and the prompt expansion read.
//!
//! The patch rows are what the tower's Conv3d patch embedding reads as one
//! flattened (C, T, p, p) vector each; the block-major order puts the rows
//! that the 2×2 merger joins next to each other.

use std::path::Path;

use image::RgbImage;
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::files::{read_bounded_text, MAX_CONFIG_BYTES};
use crate::pil_resize::resize;
use crate::preprocess::{preprocess, torch_normalize};
use crate::processor_config::{config_err, ProcessorConfig};

/// Largest `patch_size` / `merge_size` / `temporal_patch_size` accepted.
const MAX_PATCH: usize = 64;

/// Largest `max_pixels` accepted: 2^24, above the 12,845,056 of released
/// Qwen2-VL processors; an image this size is ~400 MB of f32 patch rows.
pub const MAX_QWEN2_VL_PIXELS: usize = 1 << 24;

/// The processor's settings; rescale, normalize and the filter come from
/// the shared [`ProcessorConfig`] (its own resize and crop off).
#[derive(Debug, Clone)]
pub struct Qwen2VlProcessor {
    /// Rescale / normalize / resample settings (`do_resize` false, no crop).
    pub base: ProcessorConfig,
    pub do_resize: bool,
    /// `size.shortest_edge` (or `min_pixels`): fewest pixels after resizing.
    pub min_pixels: usize,
    /// `size.longest_edge` (or `max_pixels`): most pixels after resizing.
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
}

/// One image (or video) as patch rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlPatches {
    /// (grid_t · grid_h · grid_w, C · T · p · p), row-major.
    pub values: Vec<f32>,
    /// `[grid_t, grid_h, grid_w]`, as `image_grid_thw` / `video_grid_thw`.
    pub grid_thw: [usize; 3],
    /// Values per row: C · T · p · p.
    pub row_len: usize,
}

impl Qwen2VlPatches {
    pub fn rows(&self) -> usize {
        self.grid_thw.iter().product()
    }
}

/// transformers' `smart_resize`: both sides multiples of `factor`, the
/// pixel count within `[min_pixels, max_pixels]`, the aspect kept as
/// closely as that allows. Python's float arithmetic and round-half-even
/// are reproduced step for step. Errors (aspect ratio over 200) are the
/// message transformers raises.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> std::result::Result<(usize, usize), String> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(format!("{width}x{height}: an empty image has no patches"));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(format!(
            "absolute aspect ratio must be smaller than 200, got {ratio:?}"
        ));
    }
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    if h_bar.saturating_mul(w_bar) > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if h_bar.saturating_mul(w_bar) < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

impl Qwen2VlProcessor {
    /// Reads `preprocessor_config.json`, or transformers 5's
    /// `processor_config.json` (the image processor under `image_processor`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            read_bounded_text(path, MAX_CONFIG_BYTES, "config").map_err(|e| config_err(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses the JSON text of the processor config; `path` is what errors
    /// name. `min_pixels` / `max_pixels` at the top level win over `size`
    /// (the class's `__init__`); `size` takes `shortest_edge` /
    /// `longest_edge` (transformers 5) or `min_pixels` / `max_pixels`
    /// (early 4.x files).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        Self::from_json_with_pixels(text, path, 56 * 56, 28 * 28 * 1280)
    }

    /// [`Self::from_json`] with the class's own `min_pixels` / `max_pixels`
    /// defaults (the video processor's differ from the image processor's).
    pub(crate) fn from_json_with_pixels(
        text: &str,
        path: &Path,
        default_min: usize,
        default_max: usize,
    ) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| config_err(path, format!("invalid JSON: {e}")))?;
        let value = match value.get("image_processor") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => value,
        };
        let Value::Object(mut fields) = value else {
            return Err(config_err(path, "expected a JSON object"));
        };
        let int = |key: &str, v: Option<&Value>| -> Result<Option<usize>> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        config_err(
                            path,
                            format!("{key} must be a non-negative integer, got {v}"),
                        )
                    }),
            }
        };
        let size = fields.get("size").cloned();
        let size_of = |a: &str, b: &str| -> Result<Option<usize>> {
            let Some(s) = &size else { return Ok(None) };
            match int(&format!("size.{a}"), s.get(a))? {
                Some(n) => Ok(Some(n)),
                None => int(&format!("size.{b}"), s.get(b)),
            }
        };
        let min_pixels = int("min_pixels", fields.get("min_pixels"))?
            .or(size_of("shortest_edge", "min_pixels")?)
            .unwrap_or(default_min);
        let max_pixels = int("max_pixels", fields.get("max_pixels"))?
            .or(size_of("longest_edge", "max_pixels")?)
            .unwrap_or(default_max);
        let patch_size = int("patch_size", fields.get("patch_size"))?.unwrap_or(14);
        let temporal_patch_size =
            int("temporal_patch_size", fields.get("temporal_patch_size"))?.unwrap_or(2);
        let merge_size = int("merge_size", fields.get("merge_size"))?.unwrap_or(2);
        let do_resize = fields
            .get("do_resize")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        for (key, n) in [
            ("patch_size", patch_size),
            ("temporal_patch_size", temporal_patch_size),
            ("merge_size", merge_size),
        ] {
            if !(1..=MAX_PATCH).contains(&n) {
                return Err(config_err(
                    path,
                    format!("{key} {n} is out of range 1..={MAX_PATCH}"),
                ));
            }
        }
        let most = MAX_QWEN2_VL_PIXELS;
        if max_pixels == 0 || max_pixels > most || min_pixels > max_pixels {
            return Err(config_err(
                path,
                format!(
                    "min_pixels {min_pixels} / max_pixels {max_pixels}: need 0 <= min_pixels <= max_pixels <= {most}"
                ),
            ));
        }
        // The shared rescale / normalize path, with its resize and crop off:
        // this processor resizes by smart_resize.
        fields.remove("size");
        fields.remove("crop_size");
        fields.insert("do_resize".into(), Value::Bool(false));
        fields.insert("do_center_crop".into(), Value::Bool(false));
        let base = ProcessorConfig::from_json(&Value::Object(fields).to_string(), path)?;
        Ok(Self {
            base,
            do_resize,
            min_pixels,
            max_pixels,
            patch_size,
            temporal_patch_size,
            merge_size,
        })
    }

    /// Side multiple of the resized image: patch × merge.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// The (h, w) an `h` x `w` image is resized to; `name` is what errors
    /// call the image.
    pub fn resized_hw(&self, name: &str, h: usize, w: usize) -> Result<(usize, usize)> {
        if !self.do_resize {
            let f = self.factor();
            if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
                return Err(DataError::image(
                    name,
                    format!("{w}x{h}: without resizing both sides must be multiples of {f}"),
                ));
            }
            return Ok((h, w));
        }
        smart_resize(h, w, self.factor(), self.min_pixels, self.max_pixels)
            .map_err(|msg| DataError::image(name, format!("{w}x{h}: {msg}")))
    }

    /// Placeholder tokens for a grid: t · h · w / merge².
    pub fn tokens(&self, grid_thw: [usize; 3]) -> usize {
        grid_thw.iter().product::<usize>() / (self.merge_size * self.merge_size)
    }

    /// One image -> its patch rows, grid `[1, h / p, w / p]` (the frame
    /// repeated to the temporal patch size, as transformers broadcasts it).
    pub fn preprocess(&self, img: &RgbImage, name: &str) -> Result<Qwen2VlPatches> {
        let (chw, rh, rw) = self.normalized(img, name, Arithmetic::Image)?;
        Ok(self.patchify(&[chw], rh, rw))
    }

    /// Frames of one video -> its patch rows, grid `[ceil(n / T), h / p,
    /// w / p]`: consecutive frames share a temporal patch (the last frame
    /// repeated to fill the final one), laid out as transformers' video
    /// processor does. Each frame is resized as an image (Pillow), whereas
    /// `Qwen2VLVideoProcessor` resizes with torchvision: the layout is
    /// transformers', the resampled pixels are the image processor's; so
    /// is the rescale / normalize arithmetic (see [`Self::preprocess_video`]
    /// for the video processor's).
    pub fn preprocess_frames(&self, frames: &[RgbImage], name: &str) -> Result<Qwen2VlPatches> {
        self.frames_to_patches(frames, name, Arithmetic::Image)
    }

    /// [`Self::preprocess_frames`] with the rescale / normalize arithmetic
    /// of transformers' `Qwen2VLVideoProcessor` (torch, fused: see
    /// [`torch_normalize`]), so that frames needing no resize come out bit
    /// for bit as transformers makes them. Resizing is still Pillow's.
    pub fn preprocess_video(&self, frames: &[RgbImage], name: &str) -> Result<Qwen2VlPatches> {
        self.frames_to_patches(frames, name, Arithmetic::Video)
    }

    fn frames_to_patches(
        &self,
        frames: &[RgbImage],
        name: &str,
        arithmetic: Arithmetic,
    ) -> Result<Qwen2VlPatches> {
        let Some(first) = frames.first() else {
            return Err(DataError::image(name, "a video with no frames"));
        };
        let size = first.dimensions();
        let mut planes = Vec::with_capacity(frames.len());
        let mut hw = (0, 0);
        for (i, frame) in frames.iter().enumerate() {
            if frame.dimensions() != size {
                return Err(DataError::image(
                    name,
                    format!(
                        "frame {i} is {}x{}, frame 0 {}x{}: a video's frames share one size",
                        frame.width(),
                        frame.height(),
                        size.0,
                        size.1
                    ),
                ));
            }
            let (chw, rh, rw) = self.normalized(frame, name, arithmetic)?;
            planes.push(chw);
            hw = (rh, rw);
        }
        Ok(self.patchify(&planes, hw.0, hw.1))
    }

    /// Resized, rescaled and normalized CHW values of one image.
    fn normalized(
        &self,
        img: &RgbImage,
        name: &str,
        arithmetic: Arithmetic,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (rh, rw) = self.resized_hw(name, h, w)?;
        let filter = self.base.filter()?;
        let resized = if (rh, rw) == (h, w) {
            img.clone()
        } else {
            resize(img, rh, rw, filter).ok_or_else(|| {
                DataError::image(name, format!("{w}x{h}: cannot resize to {rw}x{rh}"))
            })?
        };
        let values = match arithmetic {
            Arithmetic::Image => preprocess(&resized, name, &self.base)?,
            Arithmetic::Video => torch_normalize(&resized, &self.base),
        };
        Ok((values, rh, rw))
    }

    /// Frames (CHW each, all `rh` x `rw`) -> patch rows. `frames.len()` is
    /// 1 for an image (repeated T times) or a multiple of T for a video.
    ///
    /// # Shapes
    /// each frame (C, H, W) -> rows (gt · gh · gw, C · T · p · p), the rows
    /// ordered (t, block_h, block_w, m_h, m_w) and each row (C, T, p_h, p_w)
    fn patchify(&self, frames: &[Vec<f32>], rh: usize, rw: usize) -> Qwen2VlPatches {
        let (p, m, tp) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (gh, gw) = (rh / p, rw / p);
        let gt = frames.len().div_ceil(tp);
        let row_len = 3 * tp * p * p;
        let mut values = Vec::with_capacity(gt * gh * gw * row_len);
        for ti in 0..gt {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (py, px) = ((bh * m + mh) * p, (bw * m + mw) * p);
                            for c in 0..3 {
                                for k in 0..tp {
                                    // one image: every temporal slot reads it
                                    let frame = &frames[(ti * tp + k).min(frames.len() - 1)];
                                    let plane = &frame[c * rh * rw..(c + 1) * rh * rw];
                                    for y in 0..p {
                                        let start = (py + y) * rw + px;
                                        values.extend_from_slice(&plane[start..start + p]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Qwen2VlPatches {
            values,
            grid_thw: [gt, gh, gw],
            row_len,
        }
    }
}

/// Whose rescale / normalize arithmetic turns pixels into floats.
#[derive(Debug, Clone, Copy)]
enum Arithmetic {
    /// The image processor's (PIL backend, [`preprocess`]).
    Image,
    /// The video processor's (torchvision backend, [`torch_normalize`]).
    Video,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_branches() {
        // nearest multiple, half to even
        assert_eq!(smart_resize(45, 20, 8, 256, 2048), Ok((48, 16)));
        // below the minimum: scaled up by ceil
        assert_eq!(smart_resize(10, 13, 8, 256, 2048), Ok((16, 24)));
        // above the maximum: scaled down by floor, never below one factor
        assert_eq!(smart_resize(30, 75, 8, 256, 2048), Ok((24, 64)));
        assert_eq!(smart_resize(17, 3000, 8, 256, 2048), Ok((8, 600)));
        let e = smart_resize(1, 300, 8, 256, 2048).unwrap_err();
        assert_eq!(
            e,
            "absolute aspect ratio must be smaller than 200, got 300.0"
        );
    }

    #[test]
    fn size_fields_resolve_like_the_class() {
        let p = Path::new("preprocessor_config.json");
        let a = Qwen2VlProcessor::from_json(
            r#"{"size": {"shortest_edge": 100, "longest_edge": 900}, "patch_size": 4}"#,
            p,
        )
        .unwrap();
        assert_eq!(
            (a.min_pixels, a.max_pixels, a.patch_size, a.merge_size),
            (100, 900, 4, 2)
        );
        let b = Qwen2VlProcessor::from_json(
            r#"{"min_pixels": 3136, "max_pixels": 12845056, "size": {"shortest_edge": 1, "longest_edge": 2}}"#,
            p,
        )
        .unwrap();
        assert_eq!(
            (b.min_pixels, b.max_pixels, b.patch_size),
            (3136, 12845056, 14)
        );
        let e = Qwen2VlProcessor::from_json(r#"{"merge_size": 0}"#, p).unwrap_err();
        assert!(e.to_string().contains("merge_size 0"), "{e}");
        let e =
            Qwen2VlProcessor::from_json(r#"{"min_pixels": 10, "max_pixels": 5}"#, p).unwrap_err();
        assert!(e.to_string().contains("min_pixels 10"), "{e}");
    }
}
