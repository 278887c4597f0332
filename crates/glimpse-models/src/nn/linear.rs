//! Linear layer `y = x Wᵀ + b` with HF's (out, in) weight layout.
//!
//! Unlike `candle_nn::Linear`, inputs with several leading dims are
//! flattened into one (N, in) matrix first, so a batch is one gemm rather
//! than a batched matmul over a broadcast weight.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    /// `x Wᵀ` without the bias, for callers that fuse the bias into the next op.
    ///
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    pub fn forward_no_bias(&self, xs: &Tensor) -> Result<Tensor> {
        self.project(xs, false)
    }

    fn project(&self, xs: &Tensor, with_bias: bool) -> Result<Tensor> {
        let dims = xs.dims();
        let (&inner, lead) = dims
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows: usize = lead.iter().product();
        // (..., in) -> (N, in) x (in, out) -> (N, out)
        let mut ys = xs.reshape((rows, inner))?.matmul(&self.weight.t()?)?;
        if let (true, Some(b)) = (with_bias, &self.bias) {
            ys = ys.broadcast_add(b)?;
        }
        let mut out_dims = lead.to_vec();
        out_dims.push(self.weight.dim(0)?);
        // (N, out) -> (..., out)
        ys.reshape(out_dims)
    }
}

impl Module for Linear {
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.project(xs, true)
    }
}

/// Weight `weight` (out, in) and bias `bias` (out) under `vb`; initialised
/// like torch's `nn.Linear` when the builder creates variables.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = vb.get_with_hints(
        out_dim,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Linear::new(weight, Some(bias)))
}

pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    Ok(Linear::new(weight, None))
}
