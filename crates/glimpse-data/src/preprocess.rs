//! HF image-processor parity: `preprocessor_config.json` -> pixel values,
//! exactly as transformers' PIL backend of `CLIPImageProcessor` and
//! `SiglipImageProcessor` computes them (resize on 8-bit pixels with Pillow's
//! resampler, center crop, rescale in float64 then float32, normalize in float32).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;

use crate::error::{one_line, DataError, Result};
use crate::pil_resize::{resize, Filter};

// Digits as transformers' OPENAI_CLIP_MEAN / _STD write them.
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// `size` as HF writes it.
/// Largest intermediate canvas preprocessing will allocate (Pillow's limit).
const MAX_RESIZED_PIXELS: usize = 89_478_485;

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// Fixed output size (SigLIP).
    HeightWidth { height: usize, width: usize },
    /// Short side to `shortest_edge`, aspect kept (CLIP).
    ShortestEdge { shortest_edge: usize },
    /// Legacy configs: a bare integer means the shortest edge.
    Int(usize),
}

/// `crop_size` as HF writes it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CropSpec {
    HeightWidth { height: usize, width: usize },
    Int(usize),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProcessorConfig {
    pub image_processor_type: Option<String>,
    #[serde(default = "yes")]
    pub do_resize: bool,
    pub size: Option<SizeSpec>,
    #[serde(default = "bicubic_code")]
    pub resample: u32,
    pub do_center_crop: Option<bool>,
    pub crop_size: Option<CropSpec>,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "inv_255")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "clip_mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "clip_std")]
    pub image_std: [f32; 3],
    pub do_convert_rgb: Option<bool>,
}

fn yes() -> bool {
    true
}
fn bicubic_code() -> u32 {
    3
}
fn inv_255() -> f64 {
    1.0 / 255.0
}
fn clip_mean() -> [f32; 3] {
    OPENAI_CLIP_MEAN
}
fn clip_std() -> [f32; 3] {
    OPENAI_CLIP_STD
}

impl ProcessorConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::Config {
            path: path.to_path_buf(),
            msg: one_line(e),
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| DataError::Config {
            path: path.to_path_buf(),
            msg: one_line(format!("invalid image processor config: {e}")),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let err = |msg: String| DataError::Config {
            path: path.to_path_buf(),
            msg,
        };
        self.resample_filter().map_err(err)?;
        if self.do_resize && self.size.is_none() {
            return Err(err("do_resize is true but size is missing".into()));
        }
        if self.center_crop() && self.crop_size.is_none() {
            return Err(err("do_center_crop is true but crop_size is missing".into()));
        }
        if self.image_std.contains(&0.0) {
            return Err(err("image_std contains 0".into()));
        }
        let zero = match self.size {
            Some(SizeSpec::HeightWidth { height, width }) => height == 0 || width == 0,
            Some(SizeSpec::ShortestEdge { shortest_edge: s }) | Some(SizeSpec::Int(s)) => s == 0,
            None => false,
        } || self.crop_hw().is_some_and(|(h, w)| h == 0 || w == 0);
        if zero {
            return Err(err("size or crop_size is 0".into()));
        }
        Ok(())
    }

    /// CLIP's processor crops by default; SigLIP's has no crop.
    fn center_crop(&self) -> bool {
        self.do_center_crop.unwrap_or(self.crop_size.is_some())
    }

    fn crop_hw(&self) -> Option<(usize, usize)> {
        self.crop_size.map(|c| match c {
            CropSpec::HeightWidth { height, width } => (height, width),
            CropSpec::Int(s) => (s, s),
        })
    }

    /// `resample` is Pillow's integer filter code.
    pub fn resample_filter(&self) -> std::result::Result<Filter, String> {
        match self.resample {
            1 => Ok(Filter::Lanczos),
            2 => Ok(Filter::Bilinear),
            3 => Ok(Filter::Bicubic),
            other => Err(format!(
                "resample {other} is not supported (1 lanczos, 2 bilinear, 3 bicubic)"
            )),
        }
    }

    /// Size after resizing an `h` x `w` image (transformers'
    /// `get_resize_output_image_size` with `default_to_square=False`).
    pub fn resized_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let short_edge = match self.size {
            _ if !self.do_resize => return (h, w),
            None => return (h, w),
            Some(SizeSpec::HeightWidth { height, width }) => return (height, width),
            Some(SizeSpec::ShortestEdge { shortest_edge }) => shortest_edge,
            Some(SizeSpec::Int(s)) => s,
        };
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        // Python: int(new_short * long / short), true division then truncation.
        let new_long = ((short_edge * long) as f64 / short as f64) as usize;
        if w <= h {
            (new_long, short_edge)
        } else {
            (short_edge, new_long)
        }
    }

    /// Final (H, W) of pixel values for an `h` x `w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        match (self.center_crop(), self.crop_hw()) {
            (true, Some(hw)) => hw,
            _ => self.resized_hw(h, w),
        }
    }
}

/// transformers' `center_crop`: offsets floor((H - h) / 2), zero padding
/// where the crop is larger than the image.
///
/// # Shapes
/// HWC u8 (h_in, w_in, 3) -> (ch, cw, 3)
fn center_crop(img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
    let (h, w) = (img.height() as i64, img.width() as i64);
    let top = (h - ch as i64).div_euclid(2);
    let left = (w - cw as i64).div_euclid(2);
    let mut out = RgbImage::new(cw as u32, ch as u32);
    for y in 0..ch as i64 {
        for x in 0..cw as i64 {
            let (sy, sx) = (y + top, x + left);
            if (0..h).contains(&sy) && (0..w).contains(&sx) {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// One image -> CHW float values, length 3·H·W.
pub fn preprocess(img: &RgbImage, cfg: &ProcessorConfig) -> Result<Vec<f32>> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (rh, rw) = cfg.resized_hw(h, w);
    let filter = cfg.resample_filter().map_err(DataError::Input)?;
    // An extreme aspect ratio (1 x 80M px) would resize to a canvas far
    // larger than the input; refuse it instead of allocating it.
    if cfg.do_resize && (rh.saturating_mul(rw) > MAX_RESIZED_PIXELS || rh == 0 || rw == 0) {
        return Err(DataError::Input(format!(
            "image {w}x{h} would resize to {rw}x{rh}: aspect ratio too extreme for this processor"
        )));
    }
    let mut img = if cfg.do_resize {
        resize(img, rh, rw, filter)
            .ok_or_else(|| DataError::Input(format!("cannot resize to {rw}x{rh}")))?
    } else {
        img.clone()
    };
    if let (true, Some((ch, cw))) = (cfg.center_crop(), cfg.crop_hw()) {
        img = center_crop(&img, ch, cw);
    }
    let (oh, ow) = (img.height() as usize, img.width() as usize);
    let mut out = vec![0f32; 3 * oh * ow];
    // HWC u8 -> CHW f32
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let mut v = if cfg.do_rescale {
                (f64::from(px.0[c]) * cfg.rescale_factor) as f32
            } else {
                f32::from(px.0[c])
            };
            if cfg.do_normalize {
                v = (v - cfg.image_mean[c]) / cfg.image_std[c];
            }
            out[c * oh * ow + i] = v;
        }
    }
    Ok(out)
}

/// Several images -> one batch. All must come out at the same size (a
/// processor with a crop or fixed size guarantees it).
///
/// # Shapes
/// returns (B, 3, H, W) f32 on the CPU
pub fn preprocess_batch(images: &[RgbImage], cfg: &ProcessorConfig) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| DataError::Input("no images to preprocess".into()))?;
    let (h, w) = cfg.output_hw(first.height() as usize, first.width() as usize);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for (i, img) in images.iter().enumerate() {
        let hw = cfg.output_hw(img.height() as usize, img.width() as usize);
        if hw != (h, w) {
            return Err(DataError::Input(format!(
                "image {i} preprocesses to {}x{}, image 0 to {h}x{w}: a batch needs one size (set crop_size or a fixed size)",
                hw.0, hw.1
            )));
        }
        data.extend(preprocess(img, cfg)?);
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, h, w),
        &Device::Cpu,
    )?)
}
