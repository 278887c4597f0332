//! `preprocessor_config.json` as transformers' `CLIPImageProcessor`,
//! `SiglipImageProcessor` and `LlavaNextImageProcessor` write it, with the
//! defaults of those classes, plus the output geometry it implies.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::anyres::{tile_size, GridPinpoints};
use crate::error::{one_line, DataError, Result};
use crate::files::{read_bounded_text, MAX_CONFIG_BYTES};
use crate::pil_resize::Filter;

/// Largest `size` or `crop_size` side accepted. Processors in use go up
/// to about 1500; the bound keeps a resize or crop canvas (which is
/// allocated from these numbers) under 8192² pixels.
pub const MAX_PROCESSOR_SIDE: usize = 8192;

// Digits as transformers' OPENAI_CLIP_MEAN / _STD write them.
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// `size`: `{"shortest_edge": N}`, `{"height": H, "width": W}`,
/// `{"longest_edge": N}` (Idefics3 / SmolVLM), or a bare integer (legacy CLIP
/// configs), which means the shortest edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub enum SizeSpec {
    /// Short side to N, aspect kept (CLIP).
    ShortestEdge(usize),
    /// Exactly this size, aspect not kept (SigLIP).
    HeightWidth { height: usize, width: usize },
    /// Long side to N, aspect kept, the short side made even (Idefics3's
    /// rule, [`crate::image_split::longest_edge_hw`]).
    LongestEdge(usize),
}

impl TryFrom<Value> for SizeSpec {
    type Error = String;

    fn try_from(v: Value) -> std::result::Result<Self, String> {
        // CLIPImageProcessor.resize looks at shortest_edge before height/width
        // and ignores longest_edge when shortest_edge is there.
        if let Some(n) = v.as_u64() {
            return Ok(SizeSpec::ShortestEdge(to_usize(n)));
        }
        if let Some(n) = v.get("shortest_edge").and_then(Value::as_u64) {
            return Ok(SizeSpec::ShortestEdge(to_usize(n)));
        }
        if let Some((height, width)) = height_width(&v) {
            return Ok(SizeSpec::HeightWidth { height, width });
        }
        if let Some(n) = v.get("longest_edge").and_then(Value::as_u64) {
            return Ok(SizeSpec::LongestEdge(to_usize(n)));
        }
        Err(format!(
            "expected {{\"shortest_edge\": N}}, {{\"height\": H, \"width\": W}}, {{\"longest_edge\": N}} or an integer, got {v}"
        ))
    }
}

/// `crop_size`: `{"height": H, "width": W}` or a bare integer for a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct CropSize {
    pub height: usize,
    pub width: usize,
}

impl TryFrom<Value> for CropSize {
    type Error = String;

    fn try_from(v: Value) -> std::result::Result<Self, String> {
        // get_size_dict(crop_size, default_to_square=True): an int is a square
        let (height, width) = match v.as_u64() {
            Some(n) => (to_usize(n), to_usize(n)),
            None => height_width(&v).ok_or_else(|| {
                format!("expected {{\"height\": H, \"width\": W}} or an integer, got {v}")
            })?,
        };
        Ok(CropSize { height, width })
    }
}

/// `image_mean` / `image_std`: three floats, or one for all channels (as
/// transformers' `normalize` broadcasts it).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub struct PerChannel(pub [f32; 3]);

impl TryFrom<Value> for PerChannel {
    type Error = String;

    fn try_from(v: Value) -> std::result::Result<Self, String> {
        let as_f32 = |x: &Value| x.as_f64().map(|f| f as f32);
        if let Some(x) = as_f32(&v) {
            return Ok(PerChannel([x; 3]));
        }
        match v
            .as_array()
            .map(|a| a.iter().map(as_f32).collect::<Option<Vec<_>>>())
        {
            Some(Some(xs)) if xs.len() == 3 => Ok(PerChannel([xs[0], xs[1], xs[2]])),
            _ => Err(format!("expected 3 numbers (R, G, B), got {v}")),
        }
    }
}

/// serde_json's type errors do not say which field; every field is optional,
/// so the first one that fails on its own is the one at fault.
fn blame_field(value: &Value, e: serde_json::Error) -> String {
    let Some(map) = value.as_object() else {
        return format!("expected a JSON object: {e}");
    };
    for (key, v) in map {
        let alone = Value::Object([(key.clone(), v.clone())].into_iter().collect());
        if let Err(field_err) = serde_json::from_value::<ProcessorConfig>(alone) {
            return format!("field {key}: {field_err}");
        }
    }
    e.to_string()
}

fn unsupported_resample(code: u32) -> String {
    format!(
        "resample {code} is not supported (PIL codes: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"
    )
}

/// A processor config error naming `path`, on one line.
pub(crate) fn config_err(path: &Path, msg: impl std::fmt::Display) -> DataError {
    DataError::Config {
        path: path.to_path_buf(),
        msg: one_line(msg),
    }
}

/// A processor config file's JSON, read bounded; errors name the file.
pub(crate) fn read_config_json(path: &Path) -> Result<Value> {
    let text =
        read_bounded_text(path, MAX_CONFIG_BYTES, "config").map_err(|e| config_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| config_err(path, format!("invalid JSON: {e}")))
}

/// Where a model directory's video processor settings were found.
pub(crate) enum VideoConfigSource {
    /// The video processor's dict and the file it came from.
    Found(Value, PathBuf),
    /// None of the files transformers reads; `processor_config.json`'s
    /// whole dict when that file exists (without a `video_processor`).
    Missing(Option<(Value, PathBuf)>),
}

/// The video processor settings of the model directory `dir`, looked up as
/// transformers 5's `get_video_processor_dict` does: `processor_config.json`'s
/// `video_processor`, else `video_preprocessor_config.json`, else
/// `preprocessor_config.json` (an image processor's fields, which the video
/// class reads). Every video family's processor starts here.
pub(crate) fn find_video_processor_config(dir: &Path) -> Result<VideoConfigSource> {
    let nested = dir.join("processor_config.json");
    // exists, not is_file: a FIFO or directory here is refused, not skipped
    let nested_value = if nested.exists() {
        let value = read_config_json(&nested)?;
        if let Some(v) = value.get("video_processor") {
            return Ok(VideoConfigSource::Found(v.clone(), nested));
        }
        Some((value, nested))
    } else {
        None
    };
    for name in ["video_preprocessor_config.json", "preprocessor_config.json"] {
        let path = dir.join(name);
        if path.exists() {
            return Ok(VideoConfigSource::Found(read_config_json(&path)?, path));
        }
    }
    Ok(VideoConfigSource::Missing(nested_value))
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn height_width(v: &Value) -> Option<(usize, usize)> {
    let h = v.get("height")?.as_u64()?;
    let w = v.get("width")?.as_u64()?;
    Some((to_usize(h), to_usize(w)))
}

/// Fields transformers reads; any other field in the file is ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessorConfig {
    pub image_processor_type: Option<String>,
    /// What configs written before image processors existed carry instead
    /// (`"CLIPFeatureExtractor"`).
    pub feature_extractor_type: Option<String>,
    #[serde(default = "yes")]
    pub do_resize: bool,
    pub size: Option<SizeSpec>,
    /// Pillow's integer filter code (`PIL.Image.Resampling`).
    #[serde(default = "bicubic_code")]
    pub resample: u32,
    /// Absent: the class default (see [`ProcessorConfig::does_center_crop`]).
    pub do_center_crop: Option<bool>,
    pub crop_size: Option<CropSize>,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "inv_255")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "clip_mean")]
    pub image_mean: PerChannel,
    #[serde(default = "clip_std")]
    pub image_std: PerChannel,
    /// LLaVA-NeXT's tiling resolutions, `(height, width)`: present, images
    /// are cut into crop-sized tiles plus the whole image
    /// ([`crate::anyres::preprocess_anyres`]). `LlavaNextImageProcessor`'s
    /// default when the file names that class and omits them.
    pub image_grid_pinpoints: Option<GridPinpoints>,
    /// Llama 3.2 Vision (`MllamaImageProcessor`): most tiles an image is
    /// cut into ([`crate::mllama_tiles`]).
    pub max_image_tiles: Option<usize>,
    /// Idefics3 / SmolVLM: the tile side, `{"longest_edge": M}`; present,
    /// images go through [`crate::image_split::preprocess_split`].
    pub max_image_size: Option<SizeSpec>,
    /// Idefics3 / SmolVLM: cut images into tiles plus the global image
    /// (absent: true, the classes' default), or read the global image alone.
    pub do_image_splitting: Option<bool>,
    /// Decoding always yields RGB (`load_rgb` applies `convert_to_rgb`), so
    /// this is kept only to be reported.
    pub do_convert_rgb: Option<bool>,
    /// The file the config came from (what errors about it name).
    #[serde(skip)]
    pub source: PathBuf,
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
fn clip_mean() -> PerChannel {
    PerChannel(OPENAI_CLIP_MEAN)
}
fn clip_std() -> PerChannel {
    PerChannel(OPENAI_CLIP_STD)
}

impl ProcessorConfig {
    /// Reads and checks a `preprocessor_config.json`; every error names it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            read_bounded_text(path, MAX_CONFIG_BYTES, "config").map_err(|e| config_err(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and checks the JSON text of a processor config; `path` is the
    /// file it came from (or what holds it, such as a recipe), which errors
    /// name along with the field.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| config_err(path, format!("invalid JSON: {e}")))?;
        let mut cfg: Self = serde_json::from_value(value.clone())
            .map_err(|e| config_err(path, blame_field(&value, e)))?;
        cfg.source = path.to_path_buf();
        if cfg.image_grid_pinpoints.is_none() && cfg.is_llava_next() {
            cfg.image_grid_pinpoints = Some(GridPinpoints::llava_next_default());
        }
        if cfg.max_image_size.is_none() && cfg.is_idefics3() {
            // Idefics3ImageProcessor / SmolVLMImageProcessor's default
            cfg.max_image_size = Some(SizeSpec::LongestEdge(364));
        }
        cfg.validate().map_err(|msg| config_err(path, msg))?;
        Ok(cfg)
    }

    /// Every size in range before anything is allocated from it, and the
    /// arithmetic's constants finite.
    fn validate(&self) -> std::result::Result<(), String> {
        if Filter::from_pil_code(self.resample).is_none() {
            return Err(unsupported_resample(self.resample));
        }
        if self.do_resize && self.size.is_none() {
            return Err("missing field size (do_resize is true)".into());
        }
        if self.does_center_crop() && self.crop_size.is_none() {
            return Err("missing field crop_size (do_center_crop is true)".into());
        }
        let side_ok = |n: usize| (1..=MAX_PROCESSOR_SIDE).contains(&n);
        match self.size {
            Some(SizeSpec::ShortestEdge(s)) if !side_ok(s) => {
                return Err(format!(
                    "size shortest_edge {s} is out of range 1..={MAX_PROCESSOR_SIDE}"
                ));
            }
            Some(SizeSpec::HeightWidth { height, width })
                if !side_ok(height) || !side_ok(width) =>
            {
                return Err(format!(
                    "size height {height} width {width} is out of range: each side must be 1..={MAX_PROCESSOR_SIDE}"
                ));
            }
            Some(SizeSpec::LongestEdge(s)) if !side_ok(s) => {
                return Err(format!(
                    "size longest_edge {s} is out of range 1..={MAX_PROCESSOR_SIDE}"
                ));
            }
            _ => {}
        }
        match self.max_image_size {
            None => {}
            Some(SizeSpec::LongestEdge(s)) if side_ok(s) => {}
            Some(SizeSpec::LongestEdge(s)) => {
                return Err(format!(
                    "max_image_size longest_edge {s} is out of range 1..={MAX_PROCESSOR_SIDE}"
                ));
            }
            Some(_) => return Err("max_image_size must be {\"longest_edge\": N}".into()),
        }
        if let Some(c) = self.crop_size {
            if !side_ok(c.height) || !side_ok(c.width) {
                return Err(format!(
                    "crop_size height {} width {} is out of range: each side must be 1..={MAX_PROCESSOR_SIDE}",
                    c.height, c.width
                ));
            }
        }
        if let Some(p) = &self.image_grid_pinpoints {
            p.check(tile_size(self))
                .map_err(|e| format!("image_grid_pinpoints {e}"))?;
        }
        if !self.rescale_factor.is_finite() || self.rescale_factor <= 0.0 {
            return Err(format!(
                "rescale_factor {} must be a finite number > 0",
                self.rescale_factor
            ));
        }
        if !self.image_mean.0.iter().all(|m| m.is_finite()) {
            return Err(format!(
                "image_mean {:?} must be finite numbers",
                self.image_mean.0
            ));
        }
        if !self.image_std.0.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(format!(
                "image_std {:?} must be finite numbers > 0 (normalising divides by them)",
                self.image_std.0
            ));
        }
        Ok(())
    }

    /// The resampling filter `resample` names.
    pub fn filter(&self) -> Result<Filter> {
        Filter::from_pil_code(self.resample)
            .ok_or_else(|| config_err(&self.source, unsupported_resample(self.resample)))
    }

    /// The processor class the file names (`image_processor_type`, or the
    /// older `feature_extractor_type`).
    fn kind(&self) -> &str {
        self.image_processor_type
            .as_deref()
            .or(self.feature_extractor_type.as_deref())
            .unwrap_or("")
    }

    fn is_idefics3(&self) -> bool {
        let kind = self.kind();
        kind.starts_with("Idefics3ImageProcessor") || kind.starts_with("SmolVLMImageProcessor")
    }

    /// Whether images are cut into tiles plus the global image (a processor
    /// with `max_image_size` and `do_image_splitting` not false).
    pub fn splits_images(&self) -> bool {
        self.max_image_size.is_some() && self.do_image_splitting.unwrap_or(true)
    }

    fn is_llava_next(&self) -> bool {
        self.kind().starts_with("LlavaNextImageProcessor")
    }

    /// Whether a center crop runs. An explicit `do_center_crop` decides;
    /// absent, it is the class default: true for CLIPImageProcessor
    /// (`do_center_crop=True` in its `__init__`) and LlavaNextImageProcessor,
    /// false otherwise (SigLIP's processor has no crop at all).
    pub fn does_center_crop(&self) -> bool {
        self.do_center_crop.unwrap_or_else(|| {
            let kind = self.kind();
            kind.starts_with("CLIPImageProcessor")
                || kind == "CLIPFeatureExtractor"
                || self.is_llava_next()
        })
    }

    /// Size after resizing an `h` x `w` image (transformers'
    /// `get_resize_output_image_size` with `default_to_square=False`).
    pub fn resized_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let short_edge = match self.size {
            _ if !self.do_resize => return (h, w),
            None => return (h, w),
            Some(SizeSpec::HeightWidth { height, width }) => return (height, width),
            Some(SizeSpec::LongestEdge(s)) => return crate::image_split::longest_edge_hw(h, w, s),
            Some(SizeSpec::ShortestEdge(s)) => s,
        };
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        // Python: int(new_short * long / short), true division then truncation
        // (a 0-pixel side gives inf, which saturates and is refused by preprocess)
        let new_long =
            ((short_edge as u64).saturating_mul(long as u64) as f64 / short as f64) as usize;
        if w <= h {
            (new_long, short_edge)
        } else {
            (short_edge, new_long)
        }
    }

    /// Final (H, W) of the pixel values for an `h` x `w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        match (self.does_center_crop(), self.crop_size) {
            (true, Some(c)) => (c.height, c.width),
            _ => self.resized_hw(h, w),
        }
    }

    /// Final (H, W) when it does not depend on the input: a crop or a fixed
    /// `{"height", "width"}` resize. `None` when it does (shortest_edge
    /// without a crop, or no resize at all).
    pub fn output_size(&self) -> Option<(usize, usize)> {
        match (self.does_center_crop(), self.crop_size, self.size) {
            (true, Some(c), _) => Some((c.height, c.width)),
            (_, _, Some(SizeSpec::HeightWidth { height, width })) if self.do_resize => {
                Some((height, width))
            }
            _ => None,
        }
    }
}
