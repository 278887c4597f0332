//! Left-padded batches of token segments (the decoder's batch convention:
//! `valid` marks real tokens, rotary positions count only them), with
//! labels on the tokens the stage trains.

use candle_core::{Device, Tensor};
use glimpse_data::datasets::SegmentKind;

use crate::error::Result;
use crate::losses::IGNORE_INDEX;

pub struct TokenBatch {
    /// (B, T)
    pub ids: Tensor,
    pub rows: Vec<Vec<u32>>,
    /// (B, T), i64; [`IGNORE_INDEX`] off the trained tokens and on padding.
    pub labels: Tensor,
    pub label_rows: Vec<Vec<i64>>,
    pub valid: Vec<Vec<bool>>,
}

/// `train`: which segment kinds carry labels.
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
                    ids.push(t);
                    labels.push(if train(*kind) {
                        i64::from(t)
                    } else {
                        IGNORE_INDEX
                    });
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
