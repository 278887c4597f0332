//! Zero-shot colour and shape classification of easy-VQA images with a
//! contrastive dual encoder (CLIP §3.1.2 zero-shot transfer): each image is
//! matched against the 24 captions "a {color} {shape}" and its colour and
//! shape are read from the closest one. The captions the encoders were
//! trained on name both attributes, so a lone "a circle" is off their
//! distribution (and averaging caption embeddings over the other attribute,
//! CLIP's prompt ensembling, loses to the joint match here: 68% vs 88% on
//! shape with the shipped encoders).

use std::path::Path;

use glimpse_data::datasets::{
    image_attributes, load_easy_vqa_split, ImageAttributes, COLORS, SHAPES,
};
use glimpse_data::{DataError, Result};
use serde_json::{json, Value};

use super::Accuracy;

/// The 24 prompts "a {color} {shape}", colour-major ([`COLORS`] × [`SHAPES`]).
pub fn caption_prompts() -> Vec<String> {
    COLORS
        .iter()
        .flat_map(|c| SHAPES.iter().map(move |s| format!("a {c} {s}")))
        .collect()
}

/// The (colour, shape) caption `k` of [`caption_prompts`] names; `None`
/// past the 24.
pub fn caption_attributes(k: usize) -> Option<(&'static str, &'static str)> {
    Some((*COLORS.get(k / SHAPES.len())?, SHAPES[k % SHAPES.len()]))
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
        });
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
    /// Scores one image whose closest caption is `best` (an index into
    /// [`caption_prompts`]) against its known colour and shape; a task
    /// whose truth is `None` is not counted (the image still is, in
    /// `images`). A `best` past the captions is wrong on both.
    pub fn add(&mut self, color: Option<&str>, shape: Option<&str>, best: usize) {
        let predicted = caption_attributes(best);
        let color_hit = color.map(|c| predicted.is_some_and(|(pc, _)| pc == c));
        let shape_hit = shape.map(|s| predicted.is_some_and(|(_, ps)| ps == s));
        if let Some(hit) = color_hit {
            self.color.add(hit);
        }
        if let Some(hit) = shape_hit {
            self.shape.add(hit);
        }
        if let (Some(c), Some(s)) = (color_hit, shape_hit) {
            self.both.add(c && s);
        }
        self.images += 1;
    }

    pub fn to_json(&self) -> Value {
        json!({
            "colour": self.color.to_json(),
            "shape": self.shape.to_json(),
            "both": self.both.to_json(),
            "images": self.images,
            "skipped_colour": self.images.saturating_sub(self.color.total),
            "skipped_shape": self.images.saturating_sub(self.shape.total),
        })
    }
}

#[cfg(feature = "engine")]
pub use run::evaluate_zeroshot;

#[cfg(feature = "engine")]
mod run {
    use std::path::PathBuf;

    use candle_core::Tensor;
    use glimpse_data::datasets::ImageAttributes;
    use glimpse_engine::pipeline::{DualPipeline, Result};

    use super::{caption_prompts, ZeroShotReport};
    use crate::progress_bar;

    /// Images per pass of the image tower (memory of one batch, not of the split).
    const BATCH: usize = 64;

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
        let prompts = caption_prompts();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        // (E, 24): a matmul with image rows gives cosine similarities
        let captions_t = pipeline.text_embeds(&prompts)?.t()?.contiguous()?;
        let known: Vec<&ImageAttributes> = images
            .iter()
            .filter(|a| a.color.is_some() || a.shape.is_some())
            .collect();
        // an image with nothing known counts in `images`, unembedded
        let mut report = ZeroShotReport {
            images: images.len() - known.len(),
            ..Default::default()
        };
        let bar = progress_bar(known.len(), progress, "images");
        for chunk in known.chunks(BATCH) {
            let paths: Vec<PathBuf> = chunk.iter().map(|a| a.image.clone()).collect();
            let emb: Tensor = pipeline.image_embeds(&paths)?;
            // (B, E) x (E, 24) -> (B, 24)
            let sim = emb.matmul(&captions_t)?.to_vec2::<f32>()?;
            for (a, row) in chunk.iter().zip(&sim) {
                report.add(a.color, a.shape, argmax(row));
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_colour_major() {
        let p = caption_prompts();
        assert_eq!(p.len(), 24);
        for (k, prompt) in p.iter().enumerate() {
            let (c, s) = caption_attributes(k).unwrap_or(("?", "?"));
            assert_eq!(prompt, &format!("a {c} {s}"));
        }
        assert_eq!(caption_attributes(4), Some((COLORS[1], SHAPES[1])));
        assert_eq!(caption_attributes(24), None);
    }

    #[test]
    fn report_counts_known_attributes_only() {
        // caption k: colour k / 3, shape k % 3
        let red_circle = 0;
        let green_triangle = 5;
        let mut r = ZeroShotReport::default();
        r.add(Some("red"), Some("circle"), red_circle); // both right
        r.add(Some("red"), Some("triangle"), green_triangle); // shape right
        r.add(Some("green"), None, red_circle); // colour wrong, shape unknown
        r.add(None, None, red_circle); // nothing known
        r.add(Some("red"), Some("circle"), 99); // out of range: wrong
        let a = |c, t| Accuracy {
            correct: c,
            total: t,
        };
        assert_eq!(r.color, a(1, 4));
        assert_eq!(r.shape, a(2, 3));
        assert_eq!(r.both, a(1, 3));
        assert_eq!(r.images, 5);
        let j = r.to_json();
        assert_eq!(j["skipped_colour"], 1);
        assert_eq!(j["skipped_shape"], 2);
    }
}
