//! Two-layer feed-forward block `fc2(act(fc1(x)))` (HF `CLIPMLP`, `SiglipMLP`).

use candle_core::Module;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::Linear;

use super::Activation;

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(
        hidden: usize,
        intermediate: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            fc1: crate::nn::linear::linear(hidden, intermediate, vb.pp("fc1"))?,
            fc2: crate::nn::linear::linear(intermediate, hidden, vb.pp("fc2"))?,
            act,
        })
    }

    /// # Shapes
    /// `xs`: (..., hidden) -> (..., hidden)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = match self.fc1.bias() {
            // bias and activation in one pass over the widest tensor
            Some(bias) => self
                .act
                .forward_biased(&self.fc1.forward_no_bias(xs)?, bias)?,
            None => self.act.forward(&self.fc1.forward(xs)?)?,
        };
        self.fc2.forward(&hidden)
    }
}
