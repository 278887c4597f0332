//! Gated feed-forward block of Llama-family decoders (Shazeer 2020, SwiGLU;
//! HF `LlamaMLP`): `down(silu(gate(x)) * up(x))`.

use candle_core::{Module, Result, Tensor};

use crate::nn::qlinear::QLinear;

#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate_proj: QLinear,
    pub up_proj: QLinear,
    pub down_proj: QLinear,
}

impl SwiGlu {
    /// # Shapes
    /// `xs`: (B, T, D) -> (B, T, D)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(xs)?)?;
        let up = self.up_proj.forward(xs)?;
        self.down_proj.forward(&(gate * up)?)
    }
}
