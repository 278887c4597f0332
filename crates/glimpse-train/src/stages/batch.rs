//! Left-padded batches of token segments (the decoder's batch convention:
//! `valid` marks real tokens, rotary positions count only them), with
//! labels on the tokens the stage trains.

use candle_core::{Device, Tensor};
use glimpse_data::datasets::SegmentKind;

use crate::error::{Result, TrainError};
use crate::losses::{token_cross_entropy, LabelledRows, IGNORE_INDEX};

pub struct TokenBatch {
    /// (B, T)
    pub ids: Tensor,
    pub rows: Vec<Vec<u32>>,
    /// (B, T), i64; [`IGNORE_INDEX`] off the trained tokens and on padding.
    pub labels: Tensor,
    pub label_rows: Vec<Vec<i64>>,
    pub valid: Vec<Vec<bool>>,
}

/// `train`: which segment kinds carry labels (every token of them but a
/// row's first, which nothing predicts; see [`scored_tokens`]).
pub fn left_padded(
    examples: &[&[(SegmentKind, Vec<u32>)]],
    pad: u32,
    train: &dyn Fn(SegmentKind) -> bool,
    device: &Device,
) -> Result<TokenBatch> {
    let seqs: Vec<(Vec<u32>, Vec<i64>)> = examples
        .iter()
        .map(|segs| {
            let mut ids = Vec::new();
            let mut labels = Vec::new();
            for (kind, toks) in segs.iter() {
                for &t in toks {
                    // The first token has nothing before it to be predicted
                    // from (in a padded row, only padding).
                    let scored = train(*kind) && !ids.is_empty();
                    ids.push(t);
                    labels.push(if scored { i64::from(t) } else { IGNORE_INDEX });
                }
            }
            (ids, labels)
        })
        .collect();
    let t = seqs.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
    let b = seqs.len();
    let mut rows = Vec::with_capacity(b);
    let mut label_rows = Vec::with_capacity(b);
    let mut valid = Vec::with_capacity(b);
    for (ids, labels) in seqs {
        let pad_n = t - ids.len();
        let mut r = vec![pad; pad_n];
        r.extend(ids);
        let mut l = vec![IGNORE_INDEX; pad_n];
        l.extend(labels);
        let mut v = vec![false; pad_n];
        v.extend(std::iter::repeat_n(true, t - pad_n));
        rows.push(r);
        label_rows.push(l);
        valid.push(v);
    }
    let flat_ids: Vec<u32> = rows.iter().flatten().copied().collect();
    let flat_labels: Vec<i64> = label_rows.iter().flatten().copied().collect();
    Ok(TokenBatch {
        ids: Tensor::from_vec(flat_ids, (b, t), device)?,
        rows,
        labels: Tensor::from_vec(flat_labels, (b, t), device)?,
        label_rows,
        valid,
    })
}

/// How many labels [`left_padded`] gives `examples` (the masked LM's terms,
/// with the causal shift): the same however the examples are batched.
pub fn scored_tokens(
    examples: &[&[(SegmentKind, Vec<u32>)]],
    train: &dyn Fn(SegmentKind) -> bool,
) -> usize {
    examples
        .iter()
        .map(|segs| {
            let mut first = true;
            let mut n = 0;
            for (kind, toks) in segs.iter() {
                for _ in toks {
                    n += usize::from(train(*kind) && !first);
                    first = false;
                }
            }
            n
        })
        .sum()
}

/// The masked LM loss (causal shift) of a batch whose `labels` came from
/// [`left_padded`], the LM head run only at the labelled rows:
/// `logits_at(rows)` maps (n) flat `b·T + t` indices to (n, V) logits.
/// `denominator` as in [`crate::trainer::Task::loss`]; a shard whose rows
/// hold no label (the batch's all fell in other shards) adds a zero.
///
/// # Shapes
/// `labels`: (B, T) -> scalar
pub fn labelled_loss(
    labels: &Tensor,
    vocab: usize,
    denominator: Option<usize>,
    logits_at: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let scored = match LabelledRows::new(labels, true, vocab) {
        Err(TrainError::AllLabelsIgnored) if denominator.is_some() => {
            return Ok(Tensor::zeros((), candle_core::DType::F32, labels.device())?)
        }
        scored => scored?,
    };
    let logits = logits_at(&scored.rows_tensor(labels.device())?)?;
    token_cross_entropy(
        &logits,
        &scored.targets,
        denominator.unwrap_or(scored.len()),
    )
}

/// Per row: whether the greedy prediction (argmax of logits at t − 1) is
/// right at every labelled position t. Greedy decoding reproduces the
/// labelled answer (and its `</s>`) exactly when this holds, so this is
/// the exact-match accuracy of generated answers, in one forward pass.
///
/// # Shapes
/// `logits`: (B, T, V)
pub fn exact_matches(logits: &Tensor, label_rows: &[Vec<i64>]) -> Result<Vec<bool>> {
    // (B, T, V) -> (B, T)
    let pred = logits.argmax(candle_core::D::Minus1)?.to_vec2::<u32>()?;
    Ok(label_rows
        .iter()
        .zip(pred)
        .map(|(labels, p)| {
            (1..labels.len())
                .filter(|&t| labels[t] != IGNORE_INDEX)
                .all(|t| i64::from(p[t - 1]) == labels[t])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label counts shards rely on: [`scored_tokens`] of any split of
    /// the examples adds up to the labels of the whole padded batch, and a
    /// row's first token is never a label (a padded row would otherwise
    /// score it from padding).
    #[test]
    fn scored_tokens_match_the_padded_labels_however_batched() -> Result<()> {
        use SegmentKind::{Assistant, User};
        let a = vec![(User, vec![5, 6]), (Assistant, vec![7, 8, 9])];
        let b = vec![(Assistant, vec![10, 11])];
        let c = vec![(User, vec![12, 13, 14, 15, 16]), (Assistant, vec![17])];
        let all: Vec<&[(SegmentKind, Vec<u32>)]> = vec![&a, &b, &c];
        let dev = Device::Cpu;
        for train in [&|k| k == Assistant, &|_| true] as [&dyn Fn(SegmentKind) -> bool; 2] {
            let whole = left_padded(&all, 0, train, &dev)?;
            let labelled = LabelledRows::new(&whole.labels, true, 32)?.len();
            assert_eq!(scored_tokens(&all, train), labelled);
            let parts = scored_tokens(&all[..1], train) + scored_tokens(&all[1..], train);
            assert_eq!(parts, labelled);
            // b's first token is an answer token, and still no label
            let b_row = &whole.label_rows[1];
            let b_start = b_row.len() - 2;
            assert_eq!(b_row[b_start], IGNORE_INDEX);
            assert_eq!(b_row[b_start + 1], 11);
        }
        assert_eq!(scored_tokens(&all, &|k| k == Assistant), 3 + 1 + 1);
        assert_eq!(scored_tokens(&all, &|_| true), 4 + 1 + 5);
        Ok(())
    }

    /// A shard whose rows hold no label adds zero to its batch; a whole
    /// batch without labels stays an error.
    #[test]
    fn a_shard_without_labels_adds_zero() -> Result<()> {
        let labels = Tensor::new(&[[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]], &Device::Cpu)?;
        let never = |_: &Tensor| -> Result<Tensor> { panic!("no logits are needed") };
        let zero = labelled_loss(&labels, 8, Some(5), never)?;
        assert_eq!(zero.to_scalar::<f32>()?, 0.0);
        assert!(matches!(
            labelled_loss(&labels, 8, None, never),
            Err(TrainError::AllLabelsIgnored)
        ));
        Ok(())
    }
}
