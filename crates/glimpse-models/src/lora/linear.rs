//! A linear layer with a low-rank adapter (Hu et al. 2021, LoRA):
//! `y = base(x) + scale · (dropout(x) Aᵀ) Bᵀ`, A (r, in), B (out, r), the
//! base frozen (dense or still quantized). The order of operations is
//! PEFT's (`result + lora_B(lora_A(dropout(x))) * scaling`), so gradients
//! round the same way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};

use crate::nn::qlinear::QLinear;
use crate::nn::Linear;

#[derive(Debug, Clone)]
pub struct LoraLinear {
    pub base: QLinear,
    /// (r, in)
    lora_a: Linear,
    /// (out, r)
    lora_b: Linear,
    pub scale: f64,
    pub dropout: LoraDropout,
    /// The adapted module's name: it seeds this layer's dropout masks.
    pub module: String,
}

impl LoraLinear {
    /// `lora_a` (r, in), `lora_b` (out, r); the caller has checked the
    /// shapes against the base.
    pub fn new(
        base: QLinear,
        lora_a: Tensor,
        lora_b: Tensor,
        scale: f64,
        dropout: LoraDropout,
        module: impl Into<String>,
    ) -> Self {
        Self {
            base,
            lora_a: Linear::new(lora_a, None),
            lora_b: Linear::new(lora_b, None),
            scale,
            dropout,
            module: module.into(),
        }
    }

    /// (r, in)
    pub fn lora_a(&self) -> &Tensor {
        self.lora_a.weight()
    }

    /// (out, r)
    pub fn lora_b(&self) -> &Tensor {
        self.lora_b.weight()
    }

    /// The base's weight with the adapter added, `W + scale · B A`, as a
    /// dense layer in the base's dtype (f32 for a quantized base: merging
    /// dequantizes, a quantized model grows to f32 where it is merged).
    pub fn merge(&self) -> Result<QLinear> {
        let w = self.base.dense_weight()?;
        let dtype = w.dtype();
        // (out, r) x (r, in) -> (out, in), in f32 whatever the base's dtype
        let delta = self
            .lora_b()
            .to_dtype(DType::F32)?
            .matmul(&self.lora_a().to_dtype(DType::F32)?)?;
        let merged = (w.to_dtype(DType::F32)? + delta.affine(self.scale, 0.0)?)?.to_dtype(dtype)?;
        Ok(QLinear::Dense(Linear::new(
            merged.detach(),
            self.base.bias().map(Tensor::detach),
        )))
    }
}

impl Module for LoraLinear {
    /// # Shapes
    /// `xs`: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.base.forward(xs)?;
        let xs = self.dropout.apply(&self.module, xs)?;
        // (..., in) -> (..., r) -> (..., out)
        let low = self
            .lora_b
            .forward(&self.lora_a.forward(&xs.to_dtype(self.lora_a().dtype())?)?)?;
        let low = low.affine(self.scale, 0.0)?.to_dtype(ys.dtype())?;
        ys + low
    }
}

/// Dropout on the adapters' inputs, shared by every adapted layer of a
/// model: the trainer switches it on for training steps and sets the seed
/// each step, so a run's masks are the same when it is resumed. A layer's
/// mask is drawn from (seed, module name, input shape): shards of equal
/// size in one step share masks, which leaves the expectation unchanged.
#[derive(Debug, Clone)]
pub struct LoraDropout(Arc<DropoutState>);

#[derive(Debug)]
struct DropoutState {
    p: f32,
    training: AtomicBool,
    seed: AtomicU64,
}

impl LoraDropout {
    /// Off (inference) until [`Self::set_training`].
    pub fn new(p: f32) -> Self {
        Self(Arc::new(DropoutState {
            p,
            training: AtomicBool::new(false),
            seed: AtomicU64::new(0),
        }))
    }

    pub fn p(&self) -> f32 {
        self.0.p
    }

    pub fn set_training(&self, on: bool) {
        self.0.training.store(on, Ordering::Relaxed);
    }

    pub fn is_training(&self) -> bool {
        self.0.training.load(Ordering::Relaxed)
    }

    /// The seed masks are drawn from (set it per step).
    pub fn set_seed(&self, seed: u64) {
        self.0.seed.store(seed, Ordering::Relaxed);
    }

    /// `xs` with inputs zeroed with probability p and the rest scaled by
    /// 1/(1-p) while training; `xs` itself otherwise.
    pub fn apply(&self, module: &str, xs: &Tensor) -> Result<Tensor> {
        let p = self.0.p;
        if !(p > 0.0 && self.is_training()) {
            return Ok(xs.clone());
        }
        let keep = 1.0 / (1.0 - p);
        let mut state = name_seed(self.0.seed.load(Ordering::Relaxed), module)
            ^ (xs.elem_count() as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| {
                // top 24 bits of splitmix64 -> uniform in [0, 1)
                let u = (splitmix64(&mut state) >> 40) as f32 / (1u32 << 24) as f32;
                if u < p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

/// FNV-1a over the name, mixed with the seed.
fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_is_off_until_training_and_seeded() {
        let d = LoraDropout::new(0.5);
        let xs = Tensor::ones((4, 256), DType::F32, &Device::Cpu).unwrap();
        let same = d.apply("m", &xs).unwrap();
        assert_eq!(same.sum_all().unwrap().to_scalar::<f32>().unwrap(), 1024.0);
        d.set_training(true);
        d.set_seed(7);
        let a: Vec<f32> = d
            .apply("m", &xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = d
            .apply("m", &xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "the same seed gives the same mask");
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = a.iter().filter(|&&v| v > 0.0).count();
        assert!(
            (412..=612).contains(&kept),
            "{kept} of 1024 kept at p = 0.5"
        );
        let other: Vec<f32> = d
            .apply("n", &xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(a, other, "another module draws another mask");
        d.set_seed(8);
        let next: Vec<f32> = d
            .apply("m", &xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(a, next, "another seed draws another mask");
    }
}
