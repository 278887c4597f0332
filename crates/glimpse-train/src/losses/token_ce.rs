//! Token cross-entropy on f32 CPU logits as one autograd node.
//!
//! Composed from candle ops, −log softmax(l)[t] over (n, V) logits is a
//! max, a subtraction, an exp, a sum, a log, a broadcast subtraction and a
//! gather, and the backward walks each again with a zero-filled gradient
//! buffer per node: about a dozen passes over an (n, V) tensor, which for
//! a 49k vocabulary is 200 MB per 1,000 scored tokens each. Here the
//! forward reads each row twice (max, then Σ exp) and keeps nothing; the
//! backward writes (softmax − onehot) · g / denominator in one parallel
//! pass per row.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Whether the fused op takes `logits`: f32 on the CPU.
pub(super) fn applies(logits: &Tensor) -> bool {
    logits.device().is_cpu() && logits.dtype() == candle_core::DType::F32
}

/// Σ_i (logsumexp(l_i) − l_i[t_i]) / denominator.
///
/// # Shapes
/// `logits`: (n, V) f32 CPU, `targets`: n ids below V -> scalar
pub(super) fn token_cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    denominator: usize,
) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(TokenCe {
        targets: targets.to_vec(),
        denominator: denominator.max(1) as f64,
    })
}

struct TokenCe {
    targets: Vec<u32>,
    denominator: f64,
}

/// (max, Σ exp(l − max)) of one row.
fn max_and_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = row.iter().map(|&x| (x - max).exp()).sum();
    (max, sum)
}

impl TokenCe {
    /// The (n, V) logits as a slice, checked against the targets.
    fn rows<'a>(&self, data: &'a [f32], layout: &Layout) -> Result<(&'a [f32], usize)> {
        let (n, v) = layout.shape().dims2()?;
        if n != self.targets.len() {
            candle_core::bail!(
                "cross-entropy: {n} logit rows vs {} targets",
                self.targets.len()
            );
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target {t} outside a vocabulary of {v}");
        }
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok((&data[start..end], v)),
            None => candle_core::bail!("cross-entropy takes contiguous logits"),
        }
    }
}

impl CustomOp1 for TokenCe {
    fn name(&self) -> &'static str {
        "token-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("cross-entropy takes f32 logits");
        };
        let (logits, v) = self.rows(data, layout)?;
        let total: f64 = logits
            .par_chunks(v.max(1))
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (max, sum) = max_and_sum_exp(row);
                f64::from(max + sum.ln() - row[t as usize])
            })
            .sum();
        let loss = (total / self.denominator) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = (f64::from(grad_res.to_scalar::<f32>()?) / self.denominator) as f32;
        let (storage, layout) = arg.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            candle_core::bail!("cross-entropy backward takes f32 CPU logits");
        };
        let (logits, v) = self.rows(data, layout)?;
        let mut grad = vec![0f32; logits.len()];
        grad.par_chunks_mut(v.max(1))
            .zip(logits.par_chunks(v.max(1)))
            .zip(self.targets.par_iter())
            .for_each(|((out, row), &t)| {
                let (max, sum) = max_and_sum_exp(row);
                let scale = g / sum;
                for (o, &x) in out.iter_mut().zip(row) {
                    *o = (x - max).exp() * scale;
                }
                out[t as usize] -= g;
            });
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::masked_lm::composed_cross_entropy;
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
    }

    /// Loss and gradient equal to the composed ops, with large logits (the
    /// max subtraction matters) and a denominator other than the row count.
    #[test]
    fn matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (7, 1000), &dev)? * 30.0)?)?;
        let targets: Vec<u32> = vec![0, 999, 5, 17, 500, 5, 123];
        let fused = token_cross_entropy(logits.as_tensor(), &targets, 11)?;
        let composed = composed_cross_entropy(logits.as_tensor(), &targets, 11)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (f, c) = (fused.to_scalar::<f32>()?, composed.to_scalar::<f32>()?);
        assert!((f - c).abs() <= 1e-5 * c.abs(), "loss {f} vs {c}");
        // a weight on the loss, so the upstream gradient is not 1
        let gf = (fused * 0.37)?.backward()?;
        let gc = (composed * 0.37)?.backward()?;
        let (gf, gc) = (gf.get(&logits).unwrap(), gc.get(&logits).unwrap());
        let d = max_rel_diff(gf, gc);
        assert!(d <= 1e-5, "gradient max |diff| / max |grad| {d}");
        Ok(())
    }

    #[test]
    fn bad_targets_are_errors() {
        let logits = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(token_cross_entropy(&logits, &[0], 1).is_err());
        assert!(token_cross_entropy(&logits, &[0, 4], 1).is_err());
    }
}
