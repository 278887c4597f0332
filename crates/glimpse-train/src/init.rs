//! Seeded parameter initialisation.
//!
//! candle draws CPU random tensors from a thread RNG that cannot be seeded,
//! so a fresh model would differ between runs. Here every fresh tensor is
//! drawn from its own RNG, seeded from the run's seed and the tensor's name:
//! the same seed gives the same model whatever the construction order.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::init::{Init, NormalOrUniform};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{Result, TrainError};

/// FNV-1a over the name, mixed with the seed: stable across platforms and
/// Rust versions (unlike `DefaultHasher`).
pub fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A tensor drawn as `init` asks (candle's meaning of each hint), from an
/// RNG seeded by `seed` and `name`.
pub fn seeded_tensor(
    init: Init,
    shape: &Shape,
    name: &str,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(seed, name));
    let values: Vec<f32> = match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => normal(&mut rng, n, mean, stdev, name)?,
        Init::Uniform { lo, up } => uniform(&mut rng, n, lo, up, name)?,
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(&mut rng, n, 0.0, std, name)?,
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, n, -bound, bound, name)?
                }
            }
        }
    };
    Ok(Tensor::from_vec(values, shape.clone(), device)?.to_dtype(dtype)?)
}

fn normal(rng: &mut impl Rng, n: usize, mean: f64, std: f64, name: &str) -> Result<Vec<f32>> {
    let dist = Normal::new(mean, std)
        .map_err(|e| TrainError::Config(format!("init of {name}: normal({mean}, {std}): {e}")))?;
    Ok((0..n).map(|_| dist.sample(rng) as f32).collect())
}

fn uniform(rng: &mut impl Rng, n: usize, lo: f64, up: f64, name: &str) -> Result<Vec<f32>> {
    if lo >= up {
        return Ok(vec![lo as f32; n]);
    }
    let dist = Uniform::new(lo, up)
        .map_err(|e| TrainError::Config(format!("init of {name}: uniform({lo}, {up}): {e}")))?;
    Ok((0..n).map(|_| dist.sample(rng) as f32).collect())
}
