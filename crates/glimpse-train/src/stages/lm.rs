//! `lm`: text-only pretraining of the from-scratch decoder on the training
//! text (the questions and answers in the chat format, no image), every
//! token trained.

use candle_core::{Device, Tensor};
use glimpse_data::datasets::SegmentKind;
use glimpse_models::Decoder;

use super::batch::{labelled_loss, left_padded, scored_tokens};
use super::corpus::Corpus;
use crate::error::{Result, TrainError};
use crate::trainer::{EvalMetrics, Task};

type Segments = Vec<(SegmentKind, Vec<u32>)>;

pub struct LmTask<'a> {
    pub model: Decoder,
    corpus: &'a Corpus,
    train: Vec<Segments>,
    eval: Vec<Segments>,
    device: Device,
}

impl<'a> LmTask<'a> {
    pub fn new(model: Decoder, corpus: &'a Corpus, eval_n: usize, device: &Device) -> Result<Self> {
        let seg = |q: &str, a: &str| corpus.qa_segments(q, a, None);
        let train = corpus
            .train
            .questions
            .iter()
            .map(|q| seg(&q.question, &q.answer))
            .collect::<Result<Vec<_>>>()?;
        let eval = spread(&corpus.test.questions, eval_n)
            .into_iter()
            .map(|q| seg(&q.question, &q.answer))
            .collect::<Result<Vec<_>>>()?;
        if eval.is_empty() {
            return Err(TrainError::NoData {
                path: corpus.test.source.clone(),
                msg: "no test question to evaluate [lm] on".into(),
            });
        }
        Ok(Self {
            model,
            corpus,
            train,
            eval,
            device: device.clone(),
        })
    }

    /// Masked LM loss of `examples`: their mean, or their summed terms over
    /// `denominator` (a shard; see [`Task::loss`]). The LM head runs only
    /// at the scored positions.
    fn batch_loss(
        &self,
        examples: &[&[(SegmentKind, Vec<u32>)]],
        denominator: Option<usize>,
    ) -> Result<Tensor> {
        let batch = left_padded(examples, self.corpus.ids.pad, &trained, &self.device)?;
        let mut cache = self.model.new_cache(examples.len());
        let embeds = self.model.embed(&batch.ids)?;
        let vocab = self.model.config().vocab_size;
        labelled_loss(&batch.labels, vocab, denominator, |rows| {
            // (B, T) positions -> (n, V) logits
            Ok(self
                .model
                .forward_embeds_at(&embeds, Some(&batch.valid), &mut cache, rows, None)?)
        })
    }
}

/// The tokens the `lm` stage trains: all of them (the collate labels them,
/// and each shard's loss divides by their count).
fn trained(_: SegmentKind) -> bool {
    true
}

/// `n` items spread evenly over `items` (a fixed, order-independent subset).
pub fn spread<T>(items: &[T], n: usize) -> Vec<&T> {
    if n == 0 || items.is_empty() {
        return Vec::new();
    }
    let n = n.min(items.len());
    (0..n).map(|i| &items[i * items.len() / n]).collect()
}

impl Task for LmTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn loss_terms(&self, batch: &[usize]) -> Result<Option<usize>> {
        let ex: Vec<&[(SegmentKind, Vec<u32>)]> =
            batch.iter().map(|&i| self.train[i].as_slice()).collect();
        Ok(Some(scored_tokens(&ex, &trained)))
    }

    fn loss(&self, batch: &[usize], _seed: u64, denominator: Option<usize>) -> Result<Tensor> {
        let ex: Vec<&[(SegmentKind, Vec<u32>)]> =
            batch.iter().map(|&i| self.train[i].as_slice()).collect();
        self.batch_loss(&ex, denominator)
    }

    fn evaluate(&mut self) -> Result<EvalMetrics> {
        let mut total = 0.0;
        let mut n = 0;
        for chunk in self.eval.chunks(128) {
            let ex: Vec<&[(SegmentKind, Vec<u32>)]> = chunk.iter().map(|s| s.as_slice()).collect();
            total +=
                f64::from(self.batch_loss(&ex, None)?.to_scalar::<f32>()?) * chunk.len() as f64;
            n += chunk.len();
        }
        Ok(EvalMetrics {
            loss: (n > 0).then(|| total / n as f64),
            accuracy: None,
            extra: Vec::new(),
        })
    }
}
