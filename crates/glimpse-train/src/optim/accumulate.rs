//! Gradient accumulation over micro-batches.

use crate::error::{Result, TrainError};
use candle_core::{backprop::GradStore, Tensor, Var};

/// Sums the gradients of a fixed set of vars over micro-batches; `take_mean` / `take_scaled`
/// hand back one `GradStore` for the optimiser and reset the sums.
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
    micro_steps: usize,
}

impl GradAccumulator {
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        Self {
            vars,
            sums,
            micro_steps: 0,
        }
    }

    /// Micro-batches added since the last take.
    pub fn micro_steps(&self) -> usize {
        self.micro_steps
    }

    /// Adds one micro-batch's gradients (vars absent from `grads` count as zero).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (var, sum) in self.vars.iter().zip(self.sums.iter_mut()) {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        self.micro_steps += 1;
        Ok(())
    }

    /// The sums as they are, then reset.
    pub fn take_sum(&mut self) -> GradStore {
        let mut out = GradStore::default();
        for (var, s) in self.drain() {
            out.insert(var.as_tensor(), s);
        }
        out
    }

    /// Sums times `scale`, then reset.
    pub fn take_scaled(&mut self, scale: f64) -> Result<GradStore> {
        let mut out = GradStore::default();
        for (var, s) in self.drain() {
            out.insert(var.as_tensor(), (s * scale)?);
        }
        Ok(out)
    }

    /// Each var that has a sum, with it; resets.
    fn drain(&mut self) -> Vec<(&Var, Tensor)> {
        self.micro_steps = 0;
        self.vars
            .iter()
            .zip(self.sums.iter_mut())
            .filter_map(|(var, sum)| sum.take().map(|s| (var, s)))
            .collect()
    }

    /// Mean over the micro-batches added, then reset. Errors when none was added.
    pub fn take_mean(&mut self) -> Result<GradStore> {
        if self.micro_steps == 0 {
            return Err(TrainError::Config("no micro-batch was accumulated".into()));
        }
        self.take_scaled(1.0 / self.micro_steps as f64)
    }
}
