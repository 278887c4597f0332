//! Hard-negative mining for the CLIP loss: each row's softmax runs over its positives plus a
//! chosen subset of in-batch negatives instead of the whole batch.
//!
//! # Definition
//! For row `i` of a (b, b) similarity matrix `s` (logits, detached), with positives `P_i`
//! (diagonal and same-group columns) and negatives `N_i` = the other columns:
//! - if `|N_i| <= k`, every negative is kept;
//! - otherwise `n_rand = round(k · random_share)` and `n_hard = k − n_rand`;
//!   `H_i` = the `n_hard` columns of `N_i` with the highest `s_ij` (ties: lower column first);
//!   `R_i` = `n_rand` columns drawn uniformly without replacement from `N_i \ H_i` by a
//!   SplitMix64 stream seeded with `seed` and consumed row by row (text→image rows use the
//!   seed `seed ^ 0x9E37_79B9_7F4A_7C15`);
//! - the row keeps `P_i ∪ H_i ∪ R_i`; positives are always kept.
//!
//! The loss row is `-log Σ_{j∈P_i} softmax_{kept}(l_i)_j`, averaged over rows and both directions.

use super::{check_pair, multi_positive_ce, positive_pairs, transpose_mask};
use crate::error::{Result, TrainError};
use crate::losses::clip_logits;
use candle_core::{DType, Tensor};

/// Which negatives each row keeps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HardNegativeConfig {
    /// Negatives kept per row (hard + random).
    pub k: usize,
    /// Share of the `k` negatives drawn at random instead of by hardness, in `[0, 1]`.
    pub random_share: f64,
    /// Seed of the random picks.
    pub seed: u64,
}

/// SplitMix64 (Steele et al. 2014): tiny, seedable, good enough for picking columns.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is negligible for batch-sized n.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Row-major (b, b) keep mask following the module-level definition.
///
/// # Shapes
/// `similarity`: (b, b), rows are the anchors; `groups`: b ids.
pub fn hard_negative_mask(
    similarity: &Tensor,
    groups: Option<&[u32]>,
    cfg: &HardNegativeConfig,
) -> Result<Vec<bool>> {
    if !(0.0..=1.0).contains(&cfg.random_share) {
        return Err(TrainError::Config(format!(
            "random_share {} is outside [0, 1]",
            cfg.random_share
        )));
    }
    let (b, bc) = similarity.dims2()?;
    if b != bc {
        return Err(TrainError::Shape(format!(
            "similarity must be square, got ({b}, {bc})"
        )));
    }
    let sim = similarity.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let pos = positive_pairs(b, groups)?;
    let mut keep = pos.clone();
    let mut rng = SplitMix64(cfg.seed);
    for (i, row) in sim.iter().enumerate() {
        let mut negs: Vec<usize> = (0..b).filter(|&j| !pos[i * b + j]).collect();
        if negs.len() <= cfg.k {
            negs.iter().for_each(|&j| keep[i * b + j] = true);
            continue;
        }
        let n_rand = (cfg.k as f64 * cfg.random_share).round() as usize;
        let n_hard = cfg.k - n_rand.min(cfg.k);
        // Stable sort: equal similarities keep the lower column first.
        negs.sort_by(|&a, &c| row[c].total_cmp(&row[a]));
        let (hard, rest) = negs.split_at_mut(n_hard);
        hard.iter().for_each(|&j| keep[i * b + j] = true);
        // Partial Fisher–Yates over the remaining negatives.
        for r in 0..n_rand.min(rest.len()) {
            let pick = r + rng.below(rest.len() - r);
            rest.swap(r, pick);
            keep[i * b + rest[r]] = true;
        }
    }
    Ok(keep)
}

/// CLIP loss (see [`crate::clip_loss`]) where each row's softmax only sees its positives and
/// the negatives chosen by [`hard_negative_mask`], in both directions.
///
/// # Shapes
/// `image`, `text`: (b, d); `logit_scale`: scalar; `groups`: b ids; returns a scalar.
pub fn hard_negative_clip_loss(
    image: &Tensor,
    text: &Tensor,
    logit_scale: &Tensor,
    groups: Option<&[u32]>,
    cfg: &HardNegativeConfig,
) -> Result<Tensor> {
    let b = check_pair(image, text)?;
    let logits = clip_logits(image, text, logit_scale)?;
    let pos = positive_pairs(b, groups)?;
    let keep_i2t = hard_negative_mask(&logits, groups, cfg)?;
    // (b, b) -> (b, b) transposed: rows are texts
    let logits_t = logits.t()?;
    let t2i_cfg = HardNegativeConfig {
        seed: cfg.seed ^ 0x9E37_79B9_7F4A_7C15,
        ..*cfg
    };
    let keep_t2i = hard_negative_mask(&logits_t, groups, &t2i_cfg)?;
    let i2t = multi_positive_ce(&logits, &pos, &keep_i2t)?;
    let t2i = multi_positive_ce(&logits_t, &transpose_mask(&pos, b), &keep_t2i)?;
    Ok(((i2t + t2i)? * 0.5)?)
}
