//! `contrastive`: the vision tower and a text tower learn a shared
//! embedding space from image–caption pairs (CLIP's InfoNCE or SigLIP's
//! sigmoid loss; optional hard-negative mining). easy-VQA repeats captions,
//! so rows with the same caption are positives of each other (`groups`).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use glimpse_eval::{caption_prompts, ZeroShotReport};
use glimpse_models::DualEncoder;

use super::augment::{augment, orientations, Augment};
use super::corpus::Corpus;
use super::lm::spread;
use crate::error::{Result, TrainError};
use crate::losses::{clip_loss, hard_negative_clip_loss, siglip_loss, HardNegativeConfig};
use crate::recipe::StageSpec;
use crate::trainer::{EvalMetrics, Task};

pub struct ContrastiveTask<'a> {
    pub model: DualEncoder,
    corpus: &'a Corpus,
    /// (train image row, caption id)
    pairs: Vec<(usize, u32)>,
    /// Distinct captions as (ids, mask) rows padded to the longest.
    captions: Vec<Vec<u32>>,
    logit_scale: Var,
    /// SigLIP's learnable bias (only with `loss = "siglip"`).
    logit_bias: Option<Var>,
    loss: String,
    hard: Option<(usize, f64)>,
    /// What each training image goes through (identity: nothing).
    augment: Augment,
    eval_images: Vec<usize>,
    max_len: usize,
    device: Device,
}

impl<'a> ContrastiveTask<'a> {
    pub fn new(
        model: DualEncoder,
        corpus: &'a Corpus,
        vars: &[(String, Var)],
        spec: &StageSpec,
        eval_n: usize,
        device: &Device,
    ) -> Result<Self> {
        let find = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let logit_scale = find("logit_scale").ok_or_else(|| {
            TrainError::Config("contrastive: logit_scale is not trainable".into())
        })?;
        let logit_bias = find("logit_bias");
        let mut caption_ids: BTreeMap<String, u32> = BTreeMap::new();
        let mut captions = Vec::new();
        let mut pairs = Vec::new();
        for (row, caption) in corpus.train_captions()? {
            let next = caption_ids.len() as u32;
            let id = *caption_ids.entry(caption.clone()).or_insert_with(|| {
                captions.push(caption.clone());
                next
            });
            pairs.push((row, id));
        }
        let max_len = model.config().text.max_position_embeddings;
        let encoded = captions
            .iter()
            .map(|c| clip_ids(corpus, c, max_len))
            .collect::<Result<Vec<_>>>()?;
        let known: Vec<usize> = (0..corpus.test.attributes.len())
            .filter(|&i| {
                let a = &corpus.test.attributes[i];
                a.color.is_some() && a.shape.is_some()
            })
            .collect();
        let eval_images: Vec<usize> = spread(&known, eval_n).into_iter().copied().collect();
        if eval_images.is_empty() {
            return Err(TrainError::NoData {
                path: corpus.test.source.clone(),
                msg: "no test image has both its colour and shape known: the zero-shot \
                      evaluation of [contrastive] has nothing to score"
                    .into(),
            });
        }
        Ok(Self {
            model,
            corpus,
            pairs,
            captions: encoded,
            logit_scale,
            logit_bias,
            loss: spec.loss.clone(),
            hard: (spec.hard_negatives > 0)
                .then_some((spec.hard_negatives, spec.hard_negative_random_share)),
            augment: Augment {
                orientations: orientations(&spec.augment),
                shift: spec.shift,
                rotate: spec.rotate,
            },
            eval_images,
            max_len,
            device: device.clone(),
        })
    }

    /// (B, E) text features of token rows, right-padded with a mask.
    fn text_features(&self, rows: &[&Vec<u32>]) -> Result<Tensor> {
        let (ids, mask) = pad_rows(rows, self.corpus.ids.pad, &self.device)?;
        Ok(self.model.text_features(&ids, Some(&mask))?)
    }
}

/// `<s> caption </s>`, as CLIP's tokenizer frames a caption (the text
/// tower pools at `</s>`), cut to the tower's positions.
pub fn clip_ids(corpus: &Corpus, caption: &str, max_len: usize) -> Result<Vec<u32>> {
    let mut ids = vec![corpus.ids.bos];
    ids.extend(corpus.encode(caption)?);
    ids.truncate(max_len.saturating_sub(1));
    ids.push(corpus.ids.eos);
    Ok(ids)
}

fn pad_rows(rows: &[&Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let l = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(rows.len() * l);
    let mut mask = Vec::with_capacity(rows.len() * l);
    for r in rows {
        ids.extend(r.iter().copied());
        ids.extend(std::iter::repeat_n(pad, l - r.len()));
        mask.extend(std::iter::repeat_n(1u32, r.len()));
        mask.extend(std::iter::repeat_n(0u32, l - r.len()));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), l), device)?,
        Tensor::from_vec(mask, (rows.len(), l), device)?,
    ))
}

impl Task for ContrastiveTask<'_> {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn loss(&self, batch: &[usize], seed: u64, _denominator: Option<usize>) -> Result<Tensor> {
        let rows: Vec<u32> = batch.iter().map(|&i| self.pairs[i].0 as u32).collect();
        let groups: Vec<u32> = batch.iter().map(|&i| self.pairs[i].1).collect();
        let index = Tensor::new(rows.as_slice(), &self.device)?;
        // (N, 3, H, W) -> (B, 3, H, W)
        let mut pixels = self.corpus.train.pixels.index_select(&index, 0)?;
        if !self.augment.is_identity() {
            // its own stream: the hard-negative picks keep `seed`
            pixels = augment(&pixels, self.augment, seed ^ 0xa5a5_5a5a_dead_beef)?;
        }
        let image = self.model.image_features(&pixels)?;
        let texts: Vec<&Vec<u32>> = groups.iter().map(|&g| &self.captions[g as usize]).collect();
        let text = self.text_features(&texts)?;
        let scale = self.logit_scale.as_tensor();
        match (self.loss.as_str(), self.hard) {
            ("siglip", _) => {
                let bias = self.logit_bias.as_ref().ok_or_else(|| {
                    TrainError::Config("siglip loss: no logit_bias parameter".into())
                })?;
                siglip_loss(&image, &text, scale, bias.as_tensor(), Some(&groups))
            }
            (_, Some((k, random_share))) => hard_negative_clip_loss(
                &image,
                &text,
                scale,
                Some(&groups),
                &HardNegativeConfig {
                    k,
                    random_share,
                    seed,
                },
            ),
            _ => clip_loss(&image, &text, scale, Some(&groups)),
        }
    }

    /// Zero-shot: each test image against the 24 captions "a {color}
    /// {shape}"; the share whose best caption has both right (and each
    /// attribute's share).
    fn evaluate(&mut self) -> Result<EvalMetrics> {
        let rows = caption_prompts()
            .iter()
            .map(|caption| clip_ids(self.corpus, caption, self.max_len))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Vec<u32>> = rows.iter().collect();
        let captions = l2(&self.text_features(&refs)?)?;
        let mut report = ZeroShotReport::default();
        for chunk in self.eval_images.chunks(256) {
            let idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
            let index = Tensor::new(idx.as_slice(), &self.device)?;
            let image = l2(&self
                .model
                .image_features(&self.corpus.test.pixels.index_select(&index, 0)?)?)?;
            // (B, E) x (E, 24) -> (B, 24) -> (B,)
            let best = image.matmul(&captions.t()?)?.argmax(1)?.to_vec1::<u32>()?;
            for (k, &i) in chunk.iter().enumerate() {
                let a = &self.corpus.test.attributes[i];
                report.add(a.color, a.shape, best[k] as usize);
            }
        }
        // every eval image has both attributes known (see `new`)
        Ok(EvalMetrics {
            loss: None,
            accuracy: (report.both.total > 0).then(|| report.both.fraction()),
            extra: vec![
                ("color_accuracy".into(), report.color.fraction()),
                ("shape_accuracy".into(), report.shape.fraction()),
            ],
        })
    }
}

fn l2(x: &Tensor) -> Result<Tensor> {
    Ok(glimpse_models::dual::l2_normalize(x)?)
}
