//! The image processors of the Hub's VQ image tokenizers:
//! `ChameleonImageProcessor` is the plain pipeline (shortest-edge resize
//! with LANCZOS, centre crop, rescale by 0.0078, mean = std = 1), read by
//! [`ProcessorConfig`] as it is; `JanusImageProcessor` (PIL backend) resizes
//! the longer side to `size` (the shorter rounded half-to-even, at least
//! `min_size`), pads to a square with the mean colour, then rescales and
//! normalises as the plain pipeline does; `Emu3ImageProcessor` resizes to
//! the multiples of `spatial_factor` nearest the image's size within
//! `[min_pixels, max_pixels]` (its `smart_resize`), then rescales and
//! normalises.

use std::path::Path;

use image::{Rgb, RgbImage};
use serde_json::Value;

use crate::error::{one_line, DataError, Result};
use crate::files::{read_bounded_text, MAX_CONFIG_BYTES};
use crate::pil_resize::resize;
use crate::preprocess::preprocess;
use crate::processor_config::{ProcessorConfig, SizeSpec};

/// How an image becomes a VQ tokenizer's pixel values.
#[derive(Debug, Clone)]
pub enum VqProcessor {
    /// Resize / crop / rescale / normalise as [`preprocess`].
    Plain(ProcessorConfig),
    /// Janus: longer side to `side`, centred on a `side` square of the mean
    /// colour, then rescale and normalise.
    PadToSquare {
        cfg: ProcessorConfig,
        side: usize,
        min_size: usize,
    },
    /// Emu3: `smart_resize` to multiples of `factor`, then rescale and
    /// normalise (`cfg` has resizing off; `resize` says whether to).
    SmartResize {
        cfg: ProcessorConfig,
        resize: bool,
        factor: usize,
        min_pixels: usize,
        max_pixels: usize,
    },
}

/// Most pixels a smart resize may ask for (as `preprocess`'s canvas cap).
const MAX_SMART_PIXELS: usize = 1 << 24;

impl VqProcessor {
    /// Reads `preprocessor_config.json`; the class it names picks the pipeline.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            read_bounded_text(path, MAX_CONFIG_BYTES, "config").map_err(|e| DataError::Config {
                path: path.to_path_buf(),
                msg: one_line(e),
            })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let kind = value
            .get("image_processor_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let bad = |msg: String| DataError::Config {
            path: path.to_path_buf(),
            msg,
        };
        if kind.starts_with("Emu3ImageProcessor") {
            return Self::emu3(&value, path, &bad);
        }
        let cfg = ProcessorConfig::from_json(&text, path)?;
        if !kind.starts_with("JanusImageProcessor") {
            return Ok(VqProcessor::Plain(cfg));
        }
        let side = match cfg.size {
            Some(SizeSpec::HeightWidth { height, width }) if height == width => height,
            other => {
                return Err(bad(format!(
                    "size {other:?}: JanusImageProcessor needs a square {{\"height\": N, \"width\": N}}"
                )))
            }
        };
        let min_size = match value.get("min_size") {
            None | Some(Value::Null) => 14,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=side).contains(n))
                .ok_or_else(|| bad(format!("min_size {v} must be an integer in 1..={side}")))?,
        };
        Ok(VqProcessor::PadToSquare {
            cfg,
            side,
            min_size,
        })
    }

    /// Emu3's fields; its `size` (`{min_pixels, max_pixels}`) is not a
    /// resize target, so the shared parser sees the file without it.
    fn emu3(value: &Value, path: &Path, bad: &dyn Fn(String) -> DataError) -> Result<Self> {
        let field = |name: &str, default: usize| -> Result<usize> {
            match value.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| (1..=MAX_SMART_PIXELS).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "{name} {v} must be an integer in 1..={MAX_SMART_PIXELS}"
                        ))
                    }),
            }
        };
        let factor = field("spatial_factor", 8)?;
        let min_pixels = field("min_pixels", 512 * 512)?;
        let max_pixels = field("max_pixels", 1024 * 1024)?;
        if min_pixels > max_pixels || factor.saturating_mul(factor) > max_pixels {
            return Err(bad(format!(
                "min_pixels {min_pixels}, max_pixels {max_pixels}, spatial_factor {factor}: need min_pixels <= max_pixels and spatial_factor² <= max_pixels"
            )));
        }
        let resize = value
            .get("do_resize")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut rest = value.clone();
        if let Some(map) = rest.as_object_mut() {
            map.remove("size");
            map.insert("do_resize".into(), Value::Bool(false));
            map.insert("do_center_crop".into(), Value::Bool(false));
        }
        let cfg = ProcessorConfig::from_json(&rest.to_string(), path)?;
        Ok(VqProcessor::SmartResize {
            cfg,
            resize,
            factor,
            min_pixels,
            max_pixels,
        })
    }

    /// One image → CHW pixel values and their (H, W).
    pub fn preprocess(&self, img: &RgbImage, name: &str) -> Result<(Vec<f32>, usize, usize)> {
        match self {
            VqProcessor::Plain(cfg) => {
                let (h, w) = cfg.output_hw(img.height() as usize, img.width() as usize);
                Ok((preprocess(img, name, cfg)?, h, w))
            }
            VqProcessor::PadToSquare {
                cfg,
                side,
                min_size,
            } => {
                let padded = pad_to_square(img, name, cfg, *side, *min_size)?;
                // the resize and padding are done: rescale and normalise only
                let mut rest = cfg.clone();
                rest.do_resize = false;
                rest.do_center_crop = Some(false);
                let (h, w) = (padded.height() as usize, padded.width() as usize);
                Ok((preprocess(&padded, name, &rest)?, h, w))
            }
            VqProcessor::SmartResize {
                cfg, resize: false, ..
            } => {
                let (h, w) = (img.height() as usize, img.width() as usize);
                Ok((preprocess(img, name, cfg)?, h, w))
            }
            VqProcessor::SmartResize {
                cfg,
                factor,
                min_pixels,
                max_pixels,
                ..
            } => {
                let (h, w) = (img.height() as usize, img.width() as usize);
                let (rh, rw) = smart_resize(h, w, *factor, *min_pixels, *max_pixels)
                    .map_err(|m| DataError::image(name, m))?;
                let filter =
                    crate::pil_resize::Filter::from_pil_code(cfg.resample).ok_or_else(|| {
                        DataError::image(
                            name,
                            format!("resample {} is not supported", cfg.resample),
                        )
                    })?;
                let resized = resize(img, rh, rw, filter).ok_or_else(|| {
                    DataError::image(name, format!("{w}x{h}: cannot resize to {rw}x{rh}"))
                })?;
                Ok((preprocess(&resized, name, cfg)?, rh, rw))
            }
        }
    }
}

impl VqProcessor {
    /// The inverse of the rescale and normalise steps: CHW pixel values
    /// as the model reads (or a VQ decoder writes) them back to 8-bit RGB,
    /// `(x·std + mean) / rescale`, rounded and clamped.
    ///
    /// # Shapes
    /// `chw`: 3·h·w values
    pub fn to_rgb(&self, chw: &[f32], h: usize, w: usize) -> Result<RgbImage> {
        if chw.len() != 3 * h * w {
            return Err(DataError::Input(format!(
                "{} pixel values are not 3 channels of {h}x{w}",
                chw.len()
            )));
        }
        let cfg = match self {
            VqProcessor::Plain(c)
            | VqProcessor::PadToSquare { cfg: c, .. }
            | VqProcessor::SmartResize { cfg: c, .. } => c,
        };
        let (mean, std) = if cfg.do_normalize {
            (cfg.image_mean.0, cfg.image_std.0)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let rescale = if cfg.do_rescale {
            cfg.rescale_factor
        } else {
            1.0
        };
        let plane = h * w;
        Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let i = y as usize * w + x as usize;
            Rgb(std::array::from_fn(|c| {
                let v = f64::from(chw[c * plane + i] * std[c] + mean[c]);
                (v / rescale).round().clamp(0.0, 255.0) as u8
            }))
        }))
    }
}

/// Emu3's `smart_resize`: both sides multiples of `factor`, the area
/// within `[min_pixels, max_pixels]`, the aspect kept as closely as that
/// allows. Python's arithmetic: `round` half to even, true division.
pub fn smart_resize(
    h: usize,
    w: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> std::result::Result<(usize, usize), String> {
    if h == 0 || w == 0 {
        return Err(format!("{w}x{h} image has no pixels"));
    }
    let (hf, wf, f) = (h as f64, w as f64, factor as f64);
    if hf.max(wf) / hf.min(wf) > 200.0 {
        return Err(format!(
            "{w}x{h}: aspect ratio over 200, which Emu3's processor refuses"
        ));
    }
    let mut hb = (hf / f).round_ties_even() * f;
    let mut wb = (wf / f).round_ties_even() * f;
    if hb * wb > max_pixels as f64 {
        let beta = (hf * wf / max_pixels as f64).sqrt();
        hb = f.max((hf / beta / f).floor() * f);
        wb = f.max((wf / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        hb = (hf * beta / f).ceil() * f;
        wb = (wf * beta / f).ceil() * f;
    }
    let (rh, rw) = (hb as usize, wb as usize);
    if rh == 0 || rw == 0 || rh.saturating_mul(rw) > MAX_SMART_PIXELS {
        return Err(format!("{w}x{h} would resize to {rw}x{rh}"));
    }
    Ok((rh, rw))
}

/// Janus's resize + pad on 8-bit pixels.
///
/// # Shapes
/// HWC u8 (h, w, 3) -> (side', side', 3), side' = max of the resized sides
fn pad_to_square(
    img: &RgbImage,
    name: &str,
    cfg: &ProcessorConfig,
    side: usize,
    min_size: usize,
) -> Result<RgbImage> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    if h == 0 || w == 0 {
        return Err(DataError::image(
            name,
            format!("{w}x{h} image has no pixels"),
        ));
    }
    let img = if cfg.do_resize {
        let delta = side as f64 / h.max(w) as f64;
        // Python's round(): half to even
        let rh = ((h as f64 * delta).round_ties_even() as usize).max(min_size);
        let rw = ((w as f64 * delta).round_ties_even() as usize).max(min_size);
        resize(img, rh, rw, cfg.filter()?)
            .ok_or_else(|| DataError::image(name, format!("{w}x{h}: cannot resize to {rw}x{rh}")))?
    } else {
        img.clone()
    };
    let (h, w) = (img.height(), img.width());
    if h == w {
        return Ok(img);
    }
    let n = h.max(w);
    // the processor's __init__ derives the colour from image_mean
    let mean = cfg.image_mean.0;
    let bg = Rgb([0, 1, 2].map(|c| (f64::from(mean[c]) * 255.0) as u8));
    let mut out = RgbImage::from_pixel(n, n, bg);
    let (top, left) = if w > h {
        ((n - h) / 2, 0)
    } else {
        (0, (n - w) / 2)
    };
    for y in 0..h {
        for x in 0..w {
            out.put_pixel(x + left, y + top, *img.get_pixel(x, y));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::smart_resize;

    #[test]
    fn smart_resize_follows_emu3() {
        // fits: nearest multiples (Python rounds 40/8 = 5.0, 50/8 = 6.25)
        assert_eq!(smart_resize(40, 50, 8, 64, 4096), Ok((40, 48)));
        // too many pixels: scaled down, floored to the factor
        assert_eq!(smart_resize(40, 48, 2, 576, 1024), Ok((28, 34)));
        // too few: scaled up, ceiled to the factor
        assert_eq!(
            smart_resize(10, 10, 8, 512 * 512, 1024 * 1024),
            Ok((512, 512))
        );
        // half to even: 20/8 = 2.5 rounds to 2
        assert_eq!(smart_resize(20, 20, 8, 1, 4096), Ok((16, 16)));
        assert!(smart_resize(1, 300, 8, 1, 1 << 20)
            .unwrap_err()
            .contains("aspect ratio"));
        assert!(smart_resize(0, 3, 8, 1, 64).is_err());
    }
}
