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
    let (logits, labels, t) = if shift {
        if t < 2 {
            return Err(TrainError::AllLabelsIgnored);
        }
        // (b, t, v) -> (b, t-1, v) and (b, t) -> (b, t-1)
        (
            logits.narrow(1, 0, t - 1)?,
            labels.narrow(1, 1, t - 1)?,
            t - 1,
        )
    } else {
        (logits.clone(), labels.clone(), t)
    };
    let flat: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (position, &label) in flat.iter().enumerate() {
        if label == IGNORE_INDEX {
            continue;
        }
        if label < 0 || label as usize >= v {
            return Err(TrainError::LabelOutOfRange {
                label,
                position,
                vocab: v,
            });
        }
        rows.push(position as u32);
        targets.push(label as u32);
    }
    if rows.is_empty() {
        return Err(TrainError::AllLabelsIgnored);
    }
    let n = rows.len();
    let dev = logits.device();
    // (b, t, v) -> (b*t, v) -> (n, v): only the scored positions
    let picked = logits
        .reshape((b * t, v))?
        .index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    let logp = log_softmax_last_dim(&picked)?;
    // (n, v) gather (n, 1) -> (n, 1)
    let target_logp = logp.gather(&Tensor::from_vec(targets, (n, 1), dev)?, 1)?;
    Ok((target_logp.sum_all()?.neg()? / n as f64)?)
}
