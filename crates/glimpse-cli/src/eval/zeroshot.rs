//! Zero-shot colour and shape classification of easy-VQA images with a
//! contrastive dual encoder (CLIP §3.1.2 zero-shot transfer): the predicted
//! class is the prompt whose embedding is closest to the image's.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use glimpse_data::datasets::{
    image_attributes, load_easy_vqa_split, ImageAttributes, COLORS, SHAPES,
};
use glimpse_data::DataError;
use serde_json::{json, Value};

use super::{progress_bar, Accuracy};
use crate::pipeline::{DualPipeline, Result};

/// Images per pass of the image tower (memory of one batch, not of the split).
const BATCH: usize = 64;

/// The 8 colour prompts, in [`COLORS`] order.
pub fn color_prompts() -> Vec<String> {
    COLORS.iter().map(|c| format!("a {c} shape")).collect()
}

/// The 3 shape prompts, in [`SHAPES`] order.
pub fn shape_prompts() -> Vec<String> {
    SHAPES.iter().map(|s| format!("a {s}")).collect()
}

/// Each image of an easy-VQA split with the colour and shape its questions
/// establish, in image-id order.
pub fn load_image_attributes(dir: &Path) -> Result<Vec<ImageAttributes>> {
    if !dir.is_dir() {
        return Err(DataError::Dataset {
            path: dir.to_path_buf(),
            msg: if dir.exists() {
                "not a directory (expected an easy-VQA split: images/ + questions.json)".into()
            } else {
                "not found".into()
            },
        }
        .into());
    }
    Ok(image_attributes(&load_easy_vqa_split(dir)?)?
        .into_values()
        .collect())
}

#[derive(Debug, Clone, Default)]
pub struct ZeroShotReport {
    /// Over images whose colour is known.
    pub color: Accuracy,
    /// Over images whose shape is known.
    pub shape: Accuracy,
    /// Over images whose colour and shape are both known: both right.
    pub both: Accuracy,
    /// All images given, known attributes or not.
    pub images: usize,
}

impl ZeroShotReport {
    pub fn to_json(&self) -> Value {
        json!({
            "colour": self.color.to_json(),
            "shape": self.shape.to_json(),
            "both": self.both.to_json(),
            "images": self.images,
            "skipped_colour": self.images - self.color.total,
            "skipped_shape": self.images - self.shape.total,
        })
    }
}

/// Index of the largest value, the first of equals.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Classifies each image's colour among [`color_prompts`] and its shape
/// among [`shape_prompts`]; an image is skipped for a task whose truth is
/// unknown (and not embedded at all when both are).
pub fn evaluate_zeroshot(
    pipeline: &DualPipeline,
    images: &[ImageAttributes],
    progress: bool,
) -> Result<ZeroShotReport> {
    let colors: Vec<String> = color_prompts();
    let shapes: Vec<String> = shape_prompts();
    // (E, classes): a matmul with image rows gives cosine similarities
    let color_t = pipeline.text_embeds(&as_str(&colors))?.t()?.contiguous()?;
    let shape_t = pipeline.text_embeds(&as_str(&shapes))?.t()?.contiguous()?;
    let known: Vec<&ImageAttributes> = images
        .iter()
        .filter(|a| a.color.is_some() || a.shape.is_some())
        .collect();
    let mut report = ZeroShotReport {
        images: images.len(),
        ..Default::default()
    };
    let bar = progress_bar(known.len(), progress, "images");
    for chunk in known.chunks(BATCH) {
        let paths: Vec<PathBuf> = chunk.iter().map(|a| a.image.clone()).collect();
        let emb: Tensor = pipeline.image_embeds(&paths)?;
        // (B, E) x (E, 8) -> (B, 8); (B, E) x (E, 3) -> (B, 3)
        let color_sim = emb.matmul(&color_t)?.to_vec2::<f32>()?;
        let shape_sim = emb.matmul(&shape_t)?.to_vec2::<f32>()?;
        for ((a, cs), ss) in chunk.iter().zip(&color_sim).zip(&shape_sim) {
            let color_hit = a.color.map(|c| COLORS[argmax(cs)] == c);
            let shape_hit = a.shape.map(|s| SHAPES[argmax(ss)] == s);
            if let Some(hit) = color_hit {
                report.color.add(hit);
            }
            if let Some(hit) = shape_hit {
                report.shape.add(hit);
            }
            if let (Some(c), Some(s)) = (color_hit, shape_hit) {
                report.both.add(c && s);
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(report)
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
