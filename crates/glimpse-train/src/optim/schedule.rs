//! Linear warmup then cosine decay (nanoGPT `train.py` `get_lr`).

/// `lr(step)`: `max_lr · (step + 1) / warmup_steps` while `step < warmup_steps`, then a half
/// cosine from `max_lr` down to `min_lr` at `total_steps`, then `min_lr`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WarmupCosine {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl WarmupCosine {
    /// Learning rate for the 0-based optimiser step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step > self.total_steps || self.total_steps <= self.warmup_steps {
            return self.min_lr;
        }
        let ratio =
            (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}
