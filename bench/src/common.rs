//! What the training benchmarks share: step timings, medians and reproducible token ids.

/// The median of `xs` (upper middle for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Deterministic ids in `0..below` (a 64-bit LCG; the values only need to be
/// valid tokens).
pub fn random_ids(n: usize, below: u32, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % below as u64) as u32
        })
        .collect()
}

/// Seconds of each phase of one step, and the loss.
pub struct StepTimes {
    pub forward_backward: f64,
    pub optimizer: f64,
    pub loss_value: f32,
}

impl StepTimes {
    pub fn total(&self) -> f64 {
        self.forward_backward + self.optimizer
    }
}
