//! `align`, `instruct`, `full`: the VLM learns to answer from the image.
//! align trains the projector (and cross-attention blocks) on captions;
//! instruct adds the decoder on the questions; full adds the tower.
//! While the tower is frozen its features are computed once for every
//! image and reused by every step (no tower pass, no gradient).

use candle_core::{Device, Tensor};
use glimpse_data::datasets::SegmentKind;
use glimpse_models::{FusionConfig, LogitsFor, Vlm, VlmCache};

use super::batch::{exact_matches, labelled_loss, left_padded, scored_tokens};
use super::corpus::{Corpus, Split, DESCRIBE};
use super::lm::spread;
use crate::error::{Result, TrainError};
use crate::losses::masked_lm_loss;
use crate::trainer::{EvalMetrics, Task};

type Segments = Vec<(SegmentKind, Vec<u32>)>;

/// One training or evaluation example: an image row and its token segments.
pub struct VlmExample {
    pub image: usize,
    pub segments: Segments,
}

/// What a VLM stage trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlmData {
    /// align: "what is in the image?" → caption.
    Captions,
    /// instruct / full: every training question, one per example.
    Questions,
}

pub struct VlmTask<'a> {
    pub model: Vlm,
    corpus: &'a Corpus,
    train: Vec<VlmExample>,
    eval: Vec<VlmExample>,
    /// Tower features of every train / test image when the tower is frozen:
    /// (N, L, Dv).
    train_features: Option<Tensor>,
    test_features: Option<Tensor>,
    device: Device,
}

impl<'a> VlmTask<'a> {
    pub fn new(
        model: Vlm,
        corpus: &'a Corpus,
        data: VlmData,
        tower_frozen: bool,
        eval_n: usize,
        device: &Device,
    ) -> Result<Self> {
        // Placeholders per image in the prompt: early fusion expands `<image>`
        // to the image's rows; cross fusion keeps one token (as `glimpse ask`).
        let m = match model.config().fusion {
            FusionConfig::Early => model.config().image_tokens()?,
            FusionConfig::Cross { .. } => 1,
        };
        let train = match data {
            VlmData::Captions => corpus
                .train_captions()?
                .into_iter()
                .map(|(image, caption)| {
                    Ok(VlmExample {
                        image,
                        segments: corpus.qa_segments(DESCRIBE, &caption, Some(m))?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            VlmData::Questions => questions(
                corpus,
                &corpus.train,
                &corpus.train.questions.iter().collect::<Vec<_>>(),
                m,
            )?,
        };
        // Held out like the training data: test captions for align, test
        // questions otherwise.
        let eval = match data {
            VlmData::Captions => spread(&corpus.test.attributes, eval_n)
                .into_iter()
                .map(|a| {
                    Ok(VlmExample {
                        image: corpus.test.image_row(&a.image),
                        segments: corpus.qa_segments(DESCRIBE, &a.caption(), Some(m))?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            VlmData::Questions => questions(
                corpus,
                &corpus.test,
                &spread(&corpus.test.questions, eval_n),
                m,
            )?,
        };
        if eval.is_empty() {
            return Err(TrainError::NoData {
                path: corpus.test.source.clone(),
                msg: "no test example to evaluate the VLM stage on".into(),
            });
        }
        let (train_features, test_features) = if tower_frozen {
            (
                Some(tower_features(&model, &corpus.train.pixels)?),
                Some(tower_features(&model, &corpus.test.pixels)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            model,
            corpus,
            train,
            eval,
            train_features,
            test_features,
            device: device.clone(),
        })
    }

    /// The decoder's input for a batch of examples from `split`: embeddings
    /// with the images in place (early fusion) or attached to the cache
    /// (cross fusion), the tokens and labels, and the cache.
    ///
    /// # Shapes
    /// -> embeds (B, T, D)
    fn inputs(
        &self,
        examples: &[&VlmExample],
        split: &Split,
        features: Option<&Tensor>,
    ) -> Result<(Tensor, super::batch::TokenBatch, VlmCache)> {
        let segs: Vec<&[(SegmentKind, Vec<u32>)]> =
            examples.iter().map(|e| e.segments.as_slice()).collect();
        let batch = left_padded(&segs, self.corpus.ids.pad, &trained, &self.device)?;
        let rows: Vec<u32> = examples.iter().map(|e| e.image as u32).collect();
        let index = Tensor::new(rows.as_slice(), &self.device)?;
        let feats = match features {
            // (N, L, Dv) -> (B, L, Dv)
            Some(f) => f.index_select(&index, 0)?,
            None => tower_features(&self.model, &split.pixels.index_select(&index, 0)?)?,
        };
        // (B, L, Dv) -> (B, M, D)
        let images = self
            .model
            .multi_modal_projector
            .forward_with_instruction(&feats, None, None)?;
        let (b, t) = batch.ids.dims2()?;
        let text = self.model.language_model.embed(&batch.ids)?;
        let mut cache = self.model.new_cache(b);
        let embeds = match self.model.config().fusion {
            FusionConfig::Early => splice(
                &text,
                &images,
                &batch.rows,
                self.model.config().image_token_id,
            )?,
            FusionConfig::Cross { .. } => {
                self.model.attach_images(&mut cache, &images, None)?;
                text
            }
        };
        debug_assert_eq!(embeds.dims3()?.1, t);
        Ok((embeds, batch, cache))
    }

    /// Logits at every position and labels of a batch of examples from
    /// `split`.
    ///
    /// # Shapes
    /// -> logits (B, T, V)
    fn forward(
        &self,
        examples: &[&VlmExample],
        split: &Split,
        features: Option<&Tensor>,
    ) -> Result<(Tensor, super::batch::TokenBatch)> {
        let (embeds, batch, mut cache) = self.inputs(examples, split, features)?;
        let logits =
            self.model
                .forward_embeds(&embeds, Some(&batch.valid), &mut cache, LogitsFor::All)?;
        Ok((logits, batch))
    }

    fn segments<'e>(&'e self, batch: &[usize]) -> Vec<&'e [(SegmentKind, Vec<u32>)]> {
        batch
            .iter()
            .map(|&i| self.train[i].segments.as_slice())
            .collect()
    }
}

/// The tokens a VLM stage trains: the answer's (the collate labels them,
/// and each shard's loss divides by their count).
fn trained(kind: SegmentKind) -> bool {
    kind == SegmentKind::Assistant
}

fn questions(
    corpus: &Corpus,
    split: &Split,
    qs: &[&glimpse_data::datasets::VqaExample],
    image_tokens: usize,
) -> Result<Vec<VlmExample>> {
    qs.iter()
        .map(|q| {
            Ok(VlmExample {
                image: split.image_row(&q.image),
                segments: corpus.qa_segments(&q.question, &q.answer, Some(image_tokens))?,
            })
        })
        .collect()
}

/// The tower's features as the projector reads them, in chunks.
///
/// # Shapes
/// `pixels`: (N, 3, H, W) -> (N, L, Dv)
pub fn tower_features(model: &Vlm, pixels: &Tensor) -> Result<Tensor> {
    let cfg = model.config();
    let layer = cfg.feature_layers.first().copied().unwrap_or(-1);
    let n = pixels.dim(0)?;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = 256.min(n - start);
        let h = model
            .vision_tower
            .hidden_state(&pixels.narrow(0, start, len)?, layer)?;
        parts.push(cfg.select.select(&h)?);
        start += len;
    }
    // One chunk (≤ 256 images) is the narrowed view itself; callers
    // `index_select` rows, which needs a contiguous tensor.
    Ok(Tensor::cat(&parts, 0)?.contiguous()?)
}

/// Early fusion for a batch: each row's placeholder positions take its
/// image's rows, in order (differentiable: one gather from a table).
///
/// # Shapes
/// `text`: (B, T, D), `images`: (B, M, D) -> (B, T, D)
fn splice(text: &Tensor, images: &Tensor, rows: &[Vec<u32>], placeholder: u32) -> Result<Tensor> {
    let (b, t, d) = text.dims3()?;
    let m = images.dim(1)?;
    // [(B·T, D); (B·M, D)]
    let table = Tensor::cat(
        &[
            text.reshape((b * t, d))?,
            images.reshape((b * m, d))?.to_dtype(text.dtype())?,
        ],
        0,
    )?;
    let mut index: Vec<u32> = (0..(b * t) as u32).collect();
    for (r, row) in rows.iter().enumerate() {
        let mut k = 0;
        for (p, &id) in row.iter().enumerate() {
            if id == placeholder && k < m {
                index[r * t + p] = (b * t + r * m + k) as u32;
                k += 1;
            }
        }
    }
    let index = Tensor::from_vec(index, b * t, text.device())?;
    // (B·T, D) -> (B, T, D)
    Ok(table.index_select(&index, 0)?.reshape((b, t, d))?)
}

impl Task for VlmTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn loss_terms(&self, batch: &[usize]) -> Result<Option<usize>> {
        Ok(Some(scored_tokens(&self.segments(batch), &trained)))
    }

    /// The LM head runs only at the answer positions.
    fn loss(&self, batch: &[usize], _seed: u64, denominator: Option<usize>) -> Result<Tensor> {
        let ex: Vec<&VlmExample> = batch.iter().map(|&i| &self.train[i]).collect();
        let (embeds, b, mut cache) =
            self.inputs(&ex, &self.corpus.train, self.train_features.as_ref())?;
        let vocab = self.model.config().text.vocab_size;
        labelled_loss(&b.labels, vocab, denominator, |rows| {
            // (B, T) positions -> (n, V) logits
            Ok(self
                .model
                .forward_embeds_at(&embeds, Some(&b.valid), &mut cache, rows)?)
        })
    }

    /// Exact-match accuracy of the greedy answer on the held-out questions
    /// (see [`exact_matches`]), and their loss.
    fn evaluate(&mut self) -> Result<EvalMetrics> {
        let mut right = 0usize;
        let mut loss = 0.0;
        for chunk in self.eval.chunks(128) {
            let ex: Vec<&VlmExample> = chunk.iter().collect();
            let (logits, b) = self.forward(&ex, &self.corpus.test, self.test_features.as_ref())?;
            loss += f64::from(masked_lm_loss(&logits, &b.labels, true)?.to_scalar::<f32>()?)
                * chunk.len() as f64;
            right += exact_matches(&logits, &b.label_rows)?
                .into_iter()
                .filter(|&ok| ok)
                .count();
        }
        let n = self.eval.len();
        Ok(EvalMetrics {
            loss: (n > 0).then(|| loss / n as f64),
            accuracy: (n > 0).then(|| right as f64 / n as f64),
            extra: Vec::new(),
        })
    }
}
