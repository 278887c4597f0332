//! The `[discrete]` stage's [`Task`]: one decoder trained on sequences that
//! mix text and image codes both ways, with the masked LM loss of
//! [`super::super::batch`]:
//!
//! - understanding: `<image>` of the chat prompt replaced by `<boi> codes
//!   <eoi>`, the question, the answer and `</s>` (loss on the answer);
//! - generation: BOS, the caption ("a red circle"), `<boi>`, the codes and
//!   `<eoi>` (loss on the codes and `<eoi>`), the caption dropped in a
//!   share of the rows (loss as before) so that the model also learns the
//!   unconditional distribution classifier-free guidance contrasts with.
//!
//! Indices `0..U` are the understanding rows, `U..U + G` generation rows
//! (the images' rows repeated to make `generation_share` of the whole).

use candle_core::{Device, Tensor};
use glimpse_data::datasets::SegmentKind;
use glimpse_eval::{answer_kind_label, KindTally};
use glimpse_models::discrete::DiscreteConfig;
use glimpse_models::{Decoder, LogitsFor};

use super::super::batch::{exact_matches, left_padded, scored_tokens};
use super::super::corpus::{Corpus, Split};
use super::super::lm::spread;
use crate::error::{Result, TrainError};
use crate::init::name_seed;
use crate::losses::{masked_lm_loss, token_cross_entropy, LabelledRows};
use crate::text_side::Segments;
use crate::trainer::{EvalMetrics, Task};

/// One image's generation row: its caption's ids, and `codes + <eoi>`
/// as token ids.
struct Drawn {
    caption: Vec<u32>,
    image: Vec<u32>,
}

pub struct DiscreteTask {
    pub model: Decoder,
    cfg: DiscreteConfig,
    pad: u32,
    understanding: Vec<Segments>,
    generation: Vec<Drawn>,
    /// Generation slots in the index space (after the understanding rows).
    generation_slots: usize,
    uncond_share: f64,
    /// Each answer token counts this many times in the loss: an answer is
    /// a couple of tokens, an image 65, and without a weight the images'
    /// gradient drowns the answers'.
    answer_weight: usize,
    /// Held-out questions with their answer kind, and held-out images.
    eval_questions: Vec<(Segments, &'static str)>,
    eval_images: Vec<Drawn>,
    device: Device,
}

/// The tokens a discrete row trains: the answer's, or the image's.
fn trained(kind: SegmentKind) -> bool {
    kind == SegmentKind::Assistant
}

/// Image codes per split image (row = the split's image row), as ids.
pub struct SplitCodes<'a> {
    pub train: &'a [Vec<u32>],
    pub test: &'a [Vec<u32>],
}

impl DiscreteTask {
    /// `codes`: each split image's codes, in the split's image order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Decoder,
        cfg: &DiscreteConfig,
        corpus: &Corpus,
        codes: SplitCodes,
        generation_share: f64,
        uncond_share: f64,
        answer_weight: usize,
        eval_questions: usize,
        eval_images: usize,
        device: &Device,
    ) -> Result<Self> {
        let image_ids = |c: &[u32]| -> Result<Vec<u32>> {
            let mut ids = Vec::with_capacity(c.len() + 2);
            ids.push(cfg.boi_token_id);
            ids.extend(c.iter().map(|&c| cfg.image_code_start + c));
            ids.push(cfg.eoi_token_id);
            Ok(ids)
        };
        let question =
            |split: &Split, codes: &[Vec<u32>], q: &glimpse_data::datasets::VqaExample| {
                let row = split.image_row(&q.image);
                // every split image was tokenised; a missing row would
                // train the question on an empty image
                let codes = codes.get(row).ok_or_else(|| {
                    TrainError::State(format!(
                        "{}: no image codes for row {row} of {}",
                        q.image.display(),
                        codes.len()
                    ))
                })?;
                let image = image_ids(codes)?;
                understanding_row(corpus, &q.question, &q.answer, image)
            };
        let understanding = corpus
            .train
            .questions
            .iter()
            .map(|q| question(&corpus.train, codes.train, q))
            .collect::<Result<Vec<_>>>()?;
        let drawn = |split: &Split, codes: &[Vec<u32>]| -> Result<Vec<Drawn>> {
            split
                .attributes
                .iter()
                .zip(codes)
                .map(|(a, c)| {
                    let mut image = image_ids(c)?;
                    // the row starts at <boi>, which the prompt holds
                    image.remove(0);
                    Ok(Drawn {
                        caption: corpus.encode(&a.caption())?,
                        image,
                    })
                })
                .collect()
        };
        let generation = drawn(&corpus.train, codes.train)?;
        let generation_slots = if generation_share >= 1.0 {
            generation.len()
        } else {
            (understanding.len() as f64 * generation_share / (1.0 - generation_share)).round()
                as usize
        };
        let understanding = if generation_share >= 1.0 {
            Vec::new()
        } else {
            understanding
        };
        let eval_questions = spread(&corpus.test.questions, eval_questions)
            .into_iter()
            .map(|q| {
                Ok((
                    question(&corpus.test, codes.test, q)?,
                    answer_kind_label(&q.answer),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let all_test = drawn(&corpus.test, codes.test)?;
        let eval_images = spread(&all_test, eval_images)
            .into_iter()
            .map(|d| Drawn {
                caption: d.caption.clone(),
                image: d.image.clone(),
            })
            .collect();
        Ok(Self {
            model,
            cfg: cfg.clone(),
            pad: corpus.ids.pad,
            understanding,
            generation,
            generation_slots,
            uncond_share,
            answer_weight: answer_weight.max(1),
            eval_questions,
            eval_images,
            device: device.clone(),
        })
    }

    /// Example `i`'s segments, and whether it is an understanding row;
    /// `seed` decides whether a generation row drops its caption (per
    /// row, so every shard decides alike).
    fn example(&self, i: usize, seed: u64) -> (Segments, bool) {
        let u = self.understanding.len();
        if i < u {
            return (self.understanding[i].clone(), true);
        }
        let d = &self.generation[(i - u) % self.generation.len().max(1)];
        let draw = name_seed(seed, &format!("uncond/{i}")) as f64 / u64::MAX as f64;
        let caption: &[u32] = if draw < self.uncond_share {
            &[]
        } else {
            &d.caption
        };
        (self.generation_row(caption, d), false)
    }

    fn generation_row(&self, caption: &[u32], d: &Drawn) -> Segments {
        vec![
            (SegmentKind::User, self.cfg.generation_prompt(caption)),
            (SegmentKind::Assistant, d.image.clone()),
        ]
    }

    /// The loss's terms: each generation label once, each answer label
    /// `answer_weight` times.
    fn weighted_terms(&self, examples: &[(Segments, bool)]) -> usize {
        examples
            .iter()
            .map(|(s, und)| {
                let n = scored_tokens(&[s.as_slice()], &trained);
                if *und {
                    n * self.answer_weight
                } else {
                    n
                }
            })
            .sum()
    }

    /// The weighted masked LM loss of `examples`: (`answer_weight` · the
    /// answers' summed NLL + the images' summed NLL) over the batch's
    /// weighted term count, `denominator` when this is a shard; the LM
    /// head only at the labelled positions.
    fn batch_loss(
        &self,
        examples: &[(Segments, bool)],
        denominator: Option<usize>,
    ) -> Result<Tensor> {
        let refs: Vec<&[(SegmentKind, Vec<u32>)]> =
            examples.iter().map(|(s, _)| s.as_slice()).collect();
        let batch = left_padded(&refs, self.pad, &trained, &self.device)?;
        let vocab = self.model.config().vocab_size;
        let scored = match LabelledRows::new(&batch.labels, true, vocab) {
            Err(TrainError::AllLabelsIgnored) if denominator.is_some() => {
                return Ok(Tensor::zeros((), candle_core::DType::F32, &self.device)?)
            }
            scored => scored?,
        };
        let t = batch.labels.dim(1)?;
        // the answers' rows first, then the images'
        let (mut rows, mut targets, mut answers) = (Vec::new(), Vec::new(), 0usize);
        for pass_und in [true, false] {
            for (&r, &target) in scored.rows.iter().zip(&scored.targets) {
                if examples[r as usize / t].1 == pass_und {
                    rows.push(r);
                    targets.push(target);
                    answers += usize::from(pass_und);
                }
            }
        }
        let denominator = denominator.unwrap_or_else(|| self.weighted_terms(examples));
        let mut cache = self.model.new_cache(examples.len());
        let embeds = self.model.embed(&batch.ids)?;
        let index = Tensor::new(rows.as_slice(), &self.device)?;
        // (B, T) positions -> (n, V) logits
        let logits =
            self.model
                .forward_embeds_at(&embeds, Some(&batch.valid), &mut cache, &index, None)?;
        let n = rows.len();
        let mut loss = Tensor::zeros((), candle_core::DType::F32, &self.device)?;
        if answers > 0 {
            let part = token_cross_entropy(
                &logits.narrow(0, 0, answers)?,
                &targets[..answers],
                denominator,
            )?;
            loss = (loss + (part * self.answer_weight as f64)?)?;
        }
        if answers < n {
            let part = token_cross_entropy(
                &logits.narrow(0, answers, n - answers)?,
                &targets[answers..],
                denominator,
            )?;
            loss = (loss + part)?;
        }
        Ok(loss)
    }

    /// Logits at every position of `examples` and their padded batch.
    fn logits(&self, examples: &[Segments]) -> Result<(Tensor, super::super::batch::TokenBatch)> {
        let refs: Vec<&[(SegmentKind, Vec<u32>)]> = examples.iter().map(|s| s.as_slice()).collect();
        let batch = left_padded(&refs, self.pad, &trained, &self.device)?;
        let mut cache = self.model.new_cache(examples.len());
        let logits =
            self.model
                .forward(&batch.ids, Some(&batch.valid), &mut cache, LogitsFor::All)?;
        Ok((logits, batch))
    }
}

/// The understanding row of a question about an image whose tokens are
/// `image` (`<boi> codes <eoi>`): the chat prompt's `<image>` replaced.
fn understanding_row(
    corpus: &Corpus,
    question: &str,
    answer: &str,
    image: Vec<u32>,
) -> Result<Segments> {
    let segments = corpus.qa_segments(question, answer, Some(1))?;
    let mut out: Segments = Vec::with_capacity(segments.len());
    for (kind, ids) in segments {
        let (kind, ids) = if kind == SegmentKind::Image {
            (SegmentKind::User, image.clone())
        } else {
            (kind, ids)
        };
        match out.last_mut() {
            Some((k, v)) if *k == kind => v.extend(ids),
            _ => out.push((kind, ids)),
        }
    }
    if !out.iter().any(|(k, _)| *k == SegmentKind::Assistant) {
        return Err(TrainError::Config(format!(
            "question {question:?}: no answer tokens to learn from"
        )));
    }
    Ok(out)
}

impl Task for DiscreteTask {
    fn len(&self) -> usize {
        self.understanding.len() + self.generation_slots
    }

    fn loss_terms(&self, batch: &[usize]) -> Result<Option<usize>> {
        // dropping a caption changes no label: any seed counts alike
        let ex: Vec<(Segments, bool)> = batch.iter().map(|&i| self.example(i, 0)).collect();
        Ok(Some(self.weighted_terms(&ex)))
    }

    fn loss(&self, batch: &[usize], seed: u64, denominator: Option<usize>) -> Result<Tensor> {
        let ex: Vec<(Segments, bool)> = batch.iter().map(|&i| self.example(i, seed)).collect();
        self.batch_loss(&ex, denominator)
    }

    /// Teacher-forced exact match of the held-out answers (overall and by
    /// kind) and their loss; the held-out images' code loss (nats per
    /// code, captioned) and how often the argmax code is right.
    fn evaluate(&mut self) -> Result<EvalMetrics> {
        let mut tally = KindTally::default();
        let (mut loss, mut n) = (0.0f64, 0usize);
        for chunk in self.eval_questions.chunks(64) {
            let ex: Vec<Segments> = chunk.iter().map(|(s, _)| s.clone()).collect();
            let (logits, b) = self.logits(&ex)?;
            loss += f64::from(masked_lm_loss(&logits, &b.labels, true)?.to_scalar::<f32>()?)
                * ex.len() as f64;
            n += ex.len();
            for ((_, kind), ok) in chunk.iter().zip(exact_matches(&logits, &b.label_rows)?) {
                tally.add(kind, ok);
            }
        }
        let (mut gen_loss, mut gen_n, mut hits, mut codes) = (0.0f64, 0usize, 0usize, 0usize);
        for chunk in self.eval_images.chunks(32) {
            let ex: Vec<Segments> = chunk
                .iter()
                .map(|d| self.generation_row(&d.caption, d))
                .collect();
            let (logits, b) = self.logits(&ex)?;
            gen_loss += f64::from(masked_lm_loss(&logits, &b.labels, true)?.to_scalar::<f32>()?)
                * ex.len() as f64;
            gen_n += ex.len();
            // (B, T, V) -> (B, T): argmax at t − 1 against the label at t
            let pred = logits.argmax(candle_core::D::Minus1)?.to_vec2::<u32>()?;
            for (labels, p) in b.label_rows.iter().zip(pred) {
                for t in 1..labels.len() {
                    if labels[t] >= 0 {
                        codes += 1;
                        hits += usize::from(i64::from(p[t - 1]) == labels[t]);
                    }
                }
            }
        }
        let mut extra: Vec<(String, f64)> = tally
            .by_kind
            .iter()
            .map(|(k, a)| (format!("{k}_accuracy"), a.fraction()))
            .collect();
        if gen_n > 0 {
            extra.push(("image_code_loss".into(), gen_loss / gen_n as f64));
            extra.push((
                "image_code_accuracy".into(),
                hits as f64 / codes.max(1) as f64,
            ));
        }
        Ok(EvalMetrics {
            loss: (n > 0).then(|| loss / n as f64),
            accuracy: (n > 0).then(|| tally.overall.fraction()),
            extra,
        })
    }
}
