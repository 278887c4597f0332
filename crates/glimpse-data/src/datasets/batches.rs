//! Seeded shuffling, resumable batching and label-masked collate for
//! conversation training.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Label of a position the loss skips (PyTorch's `CrossEntropyLoss`
/// `ignore_index`, the value HF trainers use).
pub const IGNORE_INDEX: i32 = -100;

/// The order of `0..len` for one seed: the same seed always gives the same
/// order.
pub fn shuffled(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order
}

/// Where the sampler stands: `index` is the next position in `epoch`'s
/// order. Saved with a checkpoint, it resumes the run mid-epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchPosition {
    pub epoch: u64,
    pub index: usize,
}

/// Yields batches of dataset indices forever, reshuffling each epoch. Epoch
/// `e`'s order depends only on `(seed, e)`, so a sampler rebuilt at a saved
/// [`BatchPosition`] continues exactly the sequence of one never stopped.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    len: usize,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
    pos: BatchPosition,
    order: Vec<usize>,
}

impl BatchSampler {
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Result<Self> {
        Self::resume(len, batch_size, seed, BatchPosition::default())
    }

    /// A sampler at `pos`, as saved by [`BatchSampler::position`].
    pub fn resume(len: usize, batch_size: usize, seed: u64, pos: BatchPosition) -> Result<Self> {
        if len == 0 || batch_size == 0 {
            return Err(DataError::Input(format!(
                "batch sampler needs a non-empty dataset and batch size (len {len}, batch size {batch_size})"
            )));
        }
        if pos.index > len {
            return Err(DataError::Input(format!(
                "batch position {} is past the dataset's {len} examples",
                pos.index
            )));
        }
        Ok(Self {
            len,
            batch_size,
            seed,
            drop_last: false,
            pos,
            order: Self::epoch_order(len, seed, pos.epoch),
        })
    }

    /// Skip an epoch's short final batch so every batch has `batch_size`.
    pub fn with_drop_last(mut self, drop_last: bool) -> Result<Self> {
        if drop_last && self.len < self.batch_size {
            return Err(DataError::Input(format!(
                "drop_last with {} examples would never fill a batch of {}",
                self.len, self.batch_size
            )));
        }
        self.drop_last = drop_last;
        Ok(self)
    }

    /// The order of epoch `epoch`: its own seed, mixed from `seed` and the
    /// epoch so that epochs differ but never depend on one another.
    pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
        shuffled(len, seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn position(&self) -> BatchPosition {
        self.pos
    }

    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.len / self.batch_size
        } else {
            self.len.div_ceil(self.batch_size)
        }
    }

    /// The next batch, moving to the next epoch (and its order) when this
    /// one is used up.
    pub fn next_batch(&mut self) -> Vec<usize> {
        let left = self.len - self.pos.index;
        if left == 0 || (self.drop_last && left < self.batch_size) {
            self.pos = BatchPosition {
                epoch: self.pos.epoch + 1,
                index: 0,
            };
            self.order = Self::epoch_order(self.len, self.seed, self.pos.epoch);
        }
        let start = self.pos.index;
        let end = (start + self.batch_size).min(self.len);
        self.pos.index = end;
        self.order[start..end].to_vec()
    }
}

impl Iterator for BatchSampler {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        Some(self.next_batch())
    }
}

/// Who a run of tokens belongs to. Template markup (role headers, end-of-turn
/// tokens) goes with the turn the caller wants it trained as: an assistant's
/// closing end-of-turn token is usually part of its `Assistant` segment, so
/// the model learns to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    System,
    User,
    /// Image placeholder tokens; never trained.
    Image,
    /// Assistant answer tokens: the only ones with labels.
    Assistant,
}

/// A right-padded batch. `labels` line up with `input_ids` (unshifted, the HF
/// convention: the loss shifts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollatedBatch {
    pub input_ids: Vec<Vec<u32>>,
    /// The token id on assistant tokens, [`IGNORE_INDEX`] elsewhere and on
    /// padding.
    pub labels: Vec<Vec<i32>>,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

/// Concatenates each example's segments, labels only its assistant tokens,
/// and pads every row to the batch's longest with `pad_id` / -100 / 0.
pub fn collate_conversation(
    examples: &[Vec<(SegmentKind, Vec<u32>)>],
    pad_id: u32,
) -> Result<CollatedBatch> {
    if examples.is_empty() {
        return Err(DataError::Input("collate: empty batch".into()));
    }
    let mut rows = Vec::with_capacity(examples.len());
    for (i, segments) in examples.iter().enumerate() {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for (kind, tokens) in segments {
            for &t in tokens {
                let label = if *kind == SegmentKind::Assistant {
                    i32::try_from(t).map_err(|_| {
                        DataError::Input(format!("collate: example {i}: token id {t} exceeds i32"))
                    })?
                } else {
                    IGNORE_INDEX
                };
                ids.push(t);
                labels.push(label);
            }
        }
        if ids.is_empty() {
            return Err(DataError::Input(format!(
                "collate: example {i} has no tokens"
            )));
        }
        rows.push((ids, labels));
    }
    let max_len = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let mut batch = CollatedBatch {
        input_ids: Vec::with_capacity(rows.len()),
        labels: Vec::with_capacity(rows.len()),
        attention_mask: Vec::with_capacity(rows.len()),
    };
    for (mut ids, mut labels) in rows {
        let real = ids.len();
        ids.resize(max_len, pad_id);
        labels.resize(max_len, IGNORE_INDEX);
        let mut mask = vec![1u32; real];
        mask.resize(max_len, 0);
        batch.input_ids.push(ids);
        batch.labels.push(labels);
        batch.attention_mask.push(mask);
    }
    Ok(batch)
}
