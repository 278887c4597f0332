//! Masked language-model cross-entropy (HF `LlamaForCausalLM` loss / `F.cross_entropy` with
//! `ignore_index=-100`).

use super::log_softmax_last_dim;
use crate::error::{Result, TrainError};
use candle_core::{DType, Tensor};

/// Label value that takes no part in the loss (the collate masks prompts and padding with it).
pub const IGNORE_INDEX: i64 = -100;

/// Mean token cross-entropy over labels that are not [`IGNORE_INDEX`].
///
/// `shift = false`: `logits[b, t]` is scored against `labels[b, t]` (the caller already aligned
/// them). `shift = true`: `logits[b, t]` predicts `labels[b, t + 1]` (HF causal-LM convention:
/// labels are the input ids and the last position predicts nothing).
/// Errors with [`TrainError::AllLabelsIgnored`] when no label is left to average over.
///
/// # Shapes
/// `logits`: (b, t, v) float; `labels`: (b, t), i64 / i32 / i16 / u32 / u8; returns a scalar.
pub fn masked_lm_loss(logits: &Tensor, labels: &Tensor, shift: bool) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let (lb, lt) = labels.dims2()?;
    if (b, t) != (lb, lt) {
        return Err(TrainError::Shape(format!(
            "logits ({b}, {t}, {v}) vs labels ({lb}, {lt})"
        )));
    }
    let scored = LabelledRows::new(labels, shift, v)?;
    // With the shift, logits[b, t] is scored at row b·T + t of (b·T, v).
    let n = scored.len();
    let dev = logits.device();
    // (b, t, v) -> (b*t, v) -> (n, v): only the scored positions
    let picked = logits
        .reshape((b * t, v))?
        .index_select(&scored.rows_tensor(dev)?, 0)?;
    token_cross_entropy(&picked, &scored.targets, n)
}

/// The positions a masked LM batch scores: flat `b·T + t` rows of the
/// (b, T) logits, and the label each is scored against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledRows {
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
}

impl LabelledRows {
    /// Rows of `labels` (b, T) that are not [`IGNORE_INDEX`]; with `shift`,
    /// `logits[b, t]` is scored against `labels[b, t + 1]` (so row `b·T + t`
    /// carries the label at `t + 1`). Errors on a label outside `0..vocab`
    /// and when every label is ignored.
    pub fn new(labels: &Tensor, shift: bool, vocab: usize) -> Result<Self> {
        let (b, t) = labels.dims2()?;
        if shift && t < 2 {
            return Err(TrainError::AllLabelsIgnored);
        }
        let flat: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let skip = usize::from(shift);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for row in 0..b {
            for col in 0..t - skip {
                let label = flat[row * t + col + skip];
                if label == IGNORE_INDEX {
                    continue;
                }
                if label < 0 || label as usize >= vocab {
                    return Err(TrainError::LabelOutOfRange {
                        label,
                        // Position among the scored (b, T - shift) labels.
                        position: row * (t - skip) + col,
                        vocab,
                    });
                }
                rows.push((row * t + col) as u32);
                targets.push(label as u32);
            }
        }
        if rows.is_empty() {
            return Err(TrainError::AllLabelsIgnored);
        }
        Ok(Self { rows, targets })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// # Shapes
    /// -> (n) u32
    pub fn rows_tensor(&self, dev: &candle_core::Device) -> Result<Tensor> {
        Ok(Tensor::new(self.rows.as_slice(), dev)?)
    }
}

/// Summed negative log-likelihood of `targets` under `logits`, divided by
/// `denominator`: the mean when it is the row count; a shard of a larger
/// batch divides by the whole batch's count, so the shards' losses (and
/// gradients) add up to the batch's.
///
/// # Shapes
/// `logits`: (n, v) float, `targets`: n ids; returns a scalar.
pub fn token_cross_entropy(logits: &Tensor, targets: &[u32], denominator: usize) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if n != targets.len() || n == 0 {
        return Err(TrainError::Shape(format!(
            "{n} logit rows vs {} targets",
            targets.len()
        )));
    }
    if super::token_ce::applies(logits) {
        return Ok(super::token_ce::token_cross_entropy(
            logits,
            targets,
            denominator,
        )?);
    }
    composed_cross_entropy(logits, targets, denominator)
}

/// [`token_cross_entropy`] from candle ops, for any device and dtype (the
/// fused op's reference in its tests).
pub(super) fn composed_cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    denominator: usize,
) -> Result<Tensor> {
    let n = targets.len();
    let logp = log_softmax_last_dim(logits)?;
    // (n, v) gather (n, 1) -> (n, 1)
    let target_logp = logp.gather(
        &Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?,
        1,
    )?;
    Ok((target_logp.sum_all()?.neg()? / denominator.max(1) as f64)?)
}
