//! The codebook's own updates, outside the gradient: the exponential
//! moving average of the encoder outputs each code is chosen for (VQ-VAE,
//! van den Oord et al. 2017, appendix A.1; Laplace-smoothed counts as in
//! Razavi et al. 2019's VQ-VAE-2 code) and dead-code restarts (a code no
//! batch chose over a window is moved onto a random encoder output of the
//! current batch, as Dhariwal et al. 2020's Jukebox does).
//!
//! Plain `f32` slices: the trainer keeps these buffers as `Var`s so they
//! are written to checkpoints with the weights, and reads and sets them
//! around these functions once per optimiser step.

use rand::{Rng, SeedableRng};

/// `ema_decay` and `ema_epsilon` of the recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaSettings {
    /// Weight of the old average (0.99: about the last 100 steps count).
    pub decay: f64,
    /// Laplace smoothing of the counts, so a rarely chosen code's row is
    /// not divided by (almost) zero.
    pub epsilon: f64,
}

/// What one optimiser step's batches assigned to each code.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignments {
    pub dim: usize,
    /// Rows chosen per code, length K.
    pub counts: Vec<f64>,
    /// Sum of the rows chosen per code, (K, D) row-major.
    pub sums: Vec<f64>,
}

impl Assignments {
    pub fn new(num_codes: usize, dim: usize) -> Self {
        Self {
            dim,
            counts: vec![0.0; num_codes],
            sums: vec![0.0; num_codes * dim],
        }
    }

    /// Adds encoder outputs `rows` ((N, D) row-major) chosen for `codes` (N).
    pub fn add(&mut self, rows: &[f32], codes: &[u32]) {
        let d = self.dim;
        for (row, &c) in rows.chunks_exact(d).zip(codes) {
            let c = c as usize;
            if c >= self.counts.len() {
                continue;
            }
            self.counts[c] += 1.0;
            for (s, &x) in self.sums[c * d..(c + 1) * d].iter_mut().zip(row) {
                *s += f64::from(x);
            }
        }
    }
}

/// One EMA step. With n_k the rows chosen for code k and s_k their sum:
///
/// ```text
/// cluster_size_k ← decay·cluster_size_k + (1 − decay)·n_k
/// embed_sum_k    ← decay·embed_sum_k    + (1 − decay)·s_k
/// N = Σ cluster_size,  smoothed_k = (cluster_size_k + ε) / (N + K·ε) · N
/// e_k ← embed_sum_k / smoothed_k          (codes chosen at least once so far)
/// ```
///
/// Both buffers start at zero; a code no batch has chosen yet keeps its
/// initial row (dividing its zero sum would move it to the origin).
pub fn ema_update(
    codebook: &mut [f32],
    cluster_size: &mut [f32],
    embed_sum: &mut [f32],
    batch: &Assignments,
    s: EmaSettings,
) {
    let d = batch.dim.max(1);
    let k = cluster_size.len();
    let old = |x: f32, new: f64| (s.decay * f64::from(x) + (1.0 - s.decay) * new) as f32;
    for (c, n) in cluster_size.iter_mut().zip(&batch.counts) {
        *c = old(*c, *n);
    }
    for (e, x) in embed_sum.iter_mut().zip(&batch.sums) {
        *e = old(*e, *x);
    }
    let total: f64 = cluster_size.iter().map(|&c| f64::from(c)).sum();
    let rows = codebook.chunks_exact_mut(d).zip(embed_sum.chunks_exact(d));
    for ((row, sum), &c) in rows.zip(cluster_size.iter()) {
        let c = f64::from(c);
        if c <= 0.0 {
            continue;
        }
        let smoothed = (c + s.epsilon) / (total + k as f64 * s.epsilon) * total;
        for (e, &x) in row.iter_mut().zip(sum) {
            *e = (f64::from(x) / smoothed) as f32;
        }
    }
}

/// Moves every code whose `window` count is 0 onto a row of `rows`
/// ((N, D) row-major encoder outputs of the current batch) drawn with an
/// RNG seeded by `seed`, and sets every window count back to 0. Under EMA
/// the moved code's buffers restart as one observation of that row
/// (cluster size 1, sum = the row), so the next update keeps it there.
/// Returns the codes moved.
pub fn restart_dead_codes(
    codebook: &mut [f32],
    window: &mut [f32],
    rows: &[f32],
    dim: usize,
    seed: u64,
    ema: Option<(&mut [f32], &mut [f32])>,
) -> Vec<usize> {
    let n = rows.len() / dim.max(1);
    let dead: Vec<usize> = (0..window.len()).filter(|&k| window[k] <= 0.0).collect();
    window.iter_mut().for_each(|w| *w = 0.0);
    if n == 0 || dead.is_empty() {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ema = ema;
    for &k in &dead {
        let r = rng.random_range(0..n);
        let row = &rows[r * dim..(r + 1) * dim];
        codebook[k * dim..(k + 1) * dim].copy_from_slice(row);
        if let Some((cluster_size, embed_sum)) = ema.as_mut() {
            cluster_size[k] = 1.0;
            embed_sum[k * dim..(k + 1) * dim].copy_from_slice(row);
        }
    }
    dead
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two codes of width 2, decay 0.5, ε 0: the update worked by hand.
    #[test]
    fn ema_matches_a_hand_computed_step() {
        let mut codebook = vec![0.0, 0.0, 10.0, 10.0];
        let mut cluster = vec![2.0, 0.0];
        let mut sums = vec![2.0, 4.0, 0.0, 0.0];
        let mut batch = Assignments::new(2, 2);
        // code 0 gets (1, 1) and (3, 5); code 1 nothing
        batch.add(&[1.0, 1.0, 3.0, 5.0], &[0, 0]);
        let s = EmaSettings {
            decay: 0.5,
            epsilon: 0.0,
        };
        ema_update(&mut codebook, &mut cluster, &mut sums, &batch, s);
        // cluster_0 = 0.5·2 + 0.5·2 = 2; sum_0 = 0.5·(2, 4) + 0.5·(4, 6) = (3, 5)
        assert_eq!(cluster, vec![2.0, 0.0]);
        assert_eq!(sums, vec![3.0, 5.0, 0.0, 0.0]);
        // e_0 = (3, 5) / 2; code 1 never chosen: unchanged
        assert_eq!(codebook, vec![1.5, 2.5, 10.0, 10.0]);
    }

    /// With ε > 0 the counts are smoothed: (c + ε) / (N + Kε) · N.
    #[test]
    fn ema_smooths_counts() {
        let mut codebook = vec![0.0; 2];
        let mut cluster = vec![0.0, 0.0];
        let mut sums = vec![0.0; 2];
        let mut batch = Assignments::new(2, 1);
        batch.add(&[4.0, 2.0], &[0, 1]);
        let s = EmaSettings {
            decay: 0.0,
            epsilon: 0.5,
        };
        ema_update(&mut codebook, &mut cluster, &mut sums, &batch, s);
        // N = 2, smoothed = (1 + 0.5) / (2 + 1) · 2 = 1 for both codes
        assert_eq!(codebook, vec![4.0, 2.0]);
    }

    #[test]
    fn restart_moves_only_unused_codes_onto_batch_rows() {
        let mut codebook = vec![0.0, 0.0, 7.0, 7.0, 9.0, 9.0];
        let mut window = vec![3.0, 0.0, 1.0];
        let rows = [1.0, 2.0, 3.0, 4.0];
        let mut cluster = vec![5.0, 0.0, 1.0];
        let mut sums = vec![0.0; 6];
        let moved = restart_dead_codes(
            &mut codebook,
            &mut window,
            &rows,
            2,
            7,
            Some((&mut cluster, &mut sums)),
        );
        assert_eq!(moved, vec![1]);
        let new = &codebook[2..4];
        assert!(new == [1.0, 2.0] || new == [3.0, 4.0], "{new:?}");
        assert_eq!(&codebook[..2], &[0.0, 0.0]);
        assert_eq!(&codebook[4..], &[9.0, 9.0]);
        assert_eq!(cluster[1], 1.0);
        assert_eq!(&sums[2..4], new);
        assert_eq!(window, vec![0.0; 3]);
    }
}
