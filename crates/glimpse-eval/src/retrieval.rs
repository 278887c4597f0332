//! Image–text retrieval recall@K with a contrastive dual encoder, over the
//! distinct captions (easy-VQA has many images per caption, so a caption
//! → image search is a hit when any top-K image carries that caption).

use std::path::Path;

use glimpse_data::datasets::{
    easy_vqa_to_captions, load_caption_jsonl, load_easy_vqa_split, CaptionRecord,
};
use glimpse_data::{DataError, Result};
use serde_json::{json, Value};

/// The K of recall@K.
pub const RECALL_KS: [usize; 3] = [1, 5, 10];

/// Captions of an easy-VQA split directory (one per image, see
/// [`easy_vqa_to_captions`]) or of an image–caption JSONL file.
pub fn load_captions(path: &Path) -> Result<Vec<CaptionRecord>> {
    if path.is_dir() {
        return easy_vqa_to_captions(&load_easy_vqa_split(path)?);
    }
    if !path.exists() {
        return Err(DataError::Dataset {
            path: path.to_path_buf(),
            msg: "not found (expected an easy-VQA split directory or an image–caption JSONL file)"
                .into(),
        });
    }
    load_caption_jsonl(path)
}

/// Recall at K = 1, 5, 10, each in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecallAtK {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
}

impl RecallAtK {
    pub fn to_json(&self) -> Value {
        json!({"r1": self.r1, "r5": self.r5, "r10": self.r10})
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetrievalReport {
    pub image_to_text: RecallAtK,
    pub text_to_image: RecallAtK,
    pub images: usize,
    /// Distinct captions.
    pub captions: usize,
}

impl RetrievalReport {
    pub fn to_json(&self) -> Value {
        json!({
            "image_to_text": self.image_to_text.to_json(),
            "text_to_image": self.text_to_image.to_json(),
            "images": self.images,
            "captions": self.captions,
        })
    }
}

/// Indices of `scores` from the highest down (ties: lower index first).
fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Recall@K from a similarity matrix `sim[image][caption]` over distinct
/// captions, `caption_of[image]` the index of the image's caption.
/// Image → text: a hit when the image's caption is among its top K captions;
/// text → image: a hit when any of the caption's top K images has it.
pub fn recall_at_k(sim: &[Vec<f32>], caption_of: &[usize], captions: usize) -> RetrievalReport {
    let mut i2t = [0usize; 3];
    for (row, &want) in sim.iter().zip(caption_of) {
        let rank = ranking(row).iter().position(|&c| c == want);
        for (hits, k) in i2t.iter_mut().zip(RECALL_KS) {
            *hits += usize::from(rank.is_some_and(|r| r < k));
        }
    }
    let mut t2i = [0usize; 3];
    for c in 0..captions {
        // a short row or a missing caption index ranks last, never panics
        let column: Vec<f32> = sim
            .iter()
            .map(|row| row.get(c).copied().unwrap_or(f32::NEG_INFINITY))
            .collect();
        let first = ranking(&column)
            .iter()
            .position(|&i| caption_of.get(i) == Some(&c));
        for (hits, k) in t2i.iter_mut().zip(RECALL_KS) {
            *hits += usize::from(first.is_some_and(|r| r < k));
        }
    }
    let recall = |hits: [usize; 3], n: usize| RecallAtK {
        r1: super::ratio(hits[0], n),
        r5: super::ratio(hits[1], n),
        r10: super::ratio(hits[2], n),
    };
    RetrievalReport {
        image_to_text: recall(i2t, sim.len()),
        text_to_image: recall(t2i, captions),
        images: sim.len(),
        captions,
    }
}

#[cfg(feature = "engine")]
pub use run::evaluate_retrieval;

#[cfg(feature = "engine")]
mod run {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use glimpse_data::datasets::CaptionRecord;
    use glimpse_data::DataError;
    use glimpse_engine::pipeline::{DualPipeline, Result};

    use super::{recall_at_k, RetrievalReport};
    use crate::progress_bar;

    /// Images per pass of the image tower.
    const BATCH: usize = 64;

    /// Embeds every image and every distinct caption and scores retrieval both ways.
    pub fn evaluate_retrieval(
        pipeline: &DualPipeline,
        records: &[CaptionRecord],
        progress: bool,
    ) -> Result<RetrievalReport> {
        if records.is_empty() {
            return Err(DataError::Input("no image–caption pairs in the data".into()).into());
        }
        let mut distinct: Vec<&str> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let caption_of: Vec<usize> = records
            .iter()
            .map(|r| {
                *index.entry(r.caption.as_str()).or_insert_with(|| {
                    distinct.push(r.caption.as_str());
                    distinct.len() - 1
                })
            })
            .collect();
        // (C, E) -> (E, C)
        let texts = pipeline.text_embeds(&distinct)?.t()?.contiguous()?;
        let bar = progress_bar(records.len(), progress, "images");
        let mut sim: Vec<Vec<f32>> = Vec::with_capacity(records.len());
        for chunk in records.chunks(BATCH) {
            let paths: Vec<PathBuf> = chunk.iter().map(|r| r.image.clone()).collect();
            // (B, E) x (E, C) -> (B, C)
            let rows = pipeline.image_embeds(&paths)?.matmul(&texts)?;
            sim.extend(rows.to_vec2::<f32>()?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(recall_at_k(&sim, &caption_of, distinct.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_on_a_known_matrix() {
        // 3 images, 2 distinct captions: images 0 and 2 say caption 0.
        let sim = vec![vec![0.9, 0.1], vec![0.8, 0.2], vec![0.3, 0.7]];
        let r = recall_at_k(&sim, &[0, 1, 0], 2);
        // i2t: image 0 hit@1; image 1 (wants 1) rank 2; image 2 (wants 0) rank 2
        assert_eq!(r.image_to_text.r1, 1.0 / 3.0);
        assert_eq!(r.image_to_text.r5, 1.0);
        // t2i: caption 0 ranks image 0 first (hit); caption 1 ranks 2, 1, 0: image 1 second
        assert_eq!(r.text_to_image.r1, 0.5);
        assert_eq!(r.text_to_image.r5, 1.0);
        assert_eq!((r.images, r.captions), (3, 2));
    }
}
