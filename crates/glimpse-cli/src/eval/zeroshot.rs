//! Zero-shot colour and shape classification of easy-VQA images with a
//! contrastive dual encoder (CLIP §3.1.2 zero-shot transfer): each image is
//! matched against the 24 captions "a {color} {shape}" and its colour and
//! shape are read from the closest one. The captions the encoders were
//! trained on name both attributes, so a lone "a circle" is off their
//! distribution (and averaging caption embeddings over the other attribute,
//! CLIP's prompt ensembling, loses to the joint match here: 68% vs 88% on
//! shape with the shipped encoders).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use glimpse_data::datasets::{
    image_attributes, load_easy_vqa_split, ImageAttributes, COLORS, SHAPES,
};
use glimpse_data::DataError;
use serde_json::{json, Value};

use super::{progress_bar, Accuracy};
use glimpse_engine::pipeline::{DualPipeline, Result};

/// Images per pass of the image tower (memory of one batch, not of the split).
const BATCH: usize = 64;

/// The 24 prompts "a {color} {shape}", colour-major ([`COLORS`] × [`SHAPES`]).
pub fn caption_prompts() -> Vec<String> {
    COLORS
        .iter()
        .flat_map(|c| SHAPES.iter().map(move |s| format!("a {c} {s}")))
        .collect()
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

/// Classifies each image's colour and shape by its closest caption (see
/// the module note); an image is skipped for a task whose truth is
/// unknown (and not embedded at all when both are).
pub fn evaluate_zeroshot(
    pipeline: &DualPipeline,
    images: &[ImageAttributes],
    progress: bool,
) -> Result<ZeroShotReport> {
    // (E, 24): a matmul with image rows gives cosine similarities
    let captions_t = pipeline
        .text_embeds(&as_str(&caption_prompts()))?
        .t()?
        .contiguous()?;
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
        // (B, E) x (E, 24) -> (B, 24); caption k is colour k / 3, shape k % 3
        let sim = emb.matmul(&captions_t)?.to_vec2::<f32>()?;
        for (a, row) in chunk.iter().zip(&sim) {
            let best = argmax(row);
            let color_hit = a.color.map(|c| COLORS[best / SHAPES.len()] == c);
            let shape_hit = a.shape.map(|s| SHAPES[best % SHAPES.len()] == s);
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
