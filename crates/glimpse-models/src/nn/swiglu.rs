//! Gated feed-forward block of Llama-family decoders (Shazeer 2020, SwiGLU;
//! HF `LlamaMLP`): `down(silu(gate(x)) * up(x))`.

use candle_core::{Module, Result, Tensor};

use crate::nn::qlinear::QLinear;

/// gate and up as the checkpoint holds them, or joined for inference.
#[derive(Debug, Clone)]
pub enum GateUp {
    Separate {
        gate_proj: QLinear,
        up_proj: QLinear,
    },
    /// Output columns: gate (I), then up (I).
    Fused(QLinear),
}

#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate_up: GateUp,
    pub down_proj: QLinear,
}

impl SwiGlu {
    /// Joins frozen gate and up projections ([`QLinear::stack`]).
    pub fn new(gate_proj: QLinear, up_proj: QLinear, down_proj: QLinear) -> Result<Self> {
        let gate_up = match QLinear::stack(&[&gate_proj, &up_proj])? {
            Some(fused) => GateUp::Fused(fused),
            None => GateUp::Separate { gate_proj, up_proj },
        };
        Ok(Self { gate_up, down_proj })
    }

    /// # Shapes
    /// `xs`: (B, T, D) -> (B, T, D)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => {
                (gate_proj.forward(xs)?, up_proj.forward(xs)?)
            }
            GateUp::Fused(gate_up) => {
                // (B, T, 2I) -> gate, up (B, T, I)
                let y = gate_up.forward(xs)?;
                let i = y.dim(candle_core::D::Minus1)? / 2;
                (
                    y.narrow(candle_core::D::Minus1, 0, i)?,
                    y.narrow(candle_core::D::Minus1, i, i)?,
                )
            }
        };
        self.down_proj
            .forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}
