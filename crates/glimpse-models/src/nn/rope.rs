//! Rotary position embeddings (RoFormer, Su et al. 2021) with the frequency
//! scalings Llama-family checkpoints use: none, linear (position
//! interpolation) and Llama 3's wavelength-banded scaling.
//!
//! cos/sin are computed for exactly the positions of each forward (a few
//! thousand `sin_cos` calls) instead of a table for the whole context, which
//! for 128k-context models would cost tens of MB to save microseconds.
//!
//! Multi-axis positions (Qwen2-VL) are one more mode of the same rope:
//! `sections` cut the frequencies into consecutive runs and run k turns by
//! position axis k. M-RoPE (`mrope_section`, axes temporal / height / width)
//! sections the decoder's frequencies; the vision tower's 2-D rope is the
//! frequencies of half the head repeated twice, the first copy turned by
//! the patch row, the second by its column. Text positions (every axis
//! equal) give the plain rope's angles.

use candle_core::{Device, Result, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// transformers `_compute_llama3_parameters`: long wavelengths divided
    /// by `factor`, short ones kept, a smooth blend in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Which dimensions rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// HF layout: dimension i pairs with i + d/2.
    HalfSplit,
    /// GGUF llama layout: llama.cpp's converter permutes q/k rows so that
    /// dimensions 2i and 2i+1 pair.
    Interleaved,
}

#[derive(Debug, Clone)]
pub struct Rope {
    /// (head_dim / 2) angular frequencies, f32 as transformers keeps them.
    inv_freq: Vec<f32>,
    style: RopeStyle,
    /// Multi-axis mode: run k of `inv_freq` (these lengths, in order)
    /// turns by position axis k ([`Self::cos_sin_axes`]).
    sections: Option<Vec<usize>>,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: usize, style: RopeStyle) -> Self {
        // transformers computes `base ** (arange(0, d, 2) / d)` in f32.
        let base = cfg.theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match cfg.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let (factor, low, high, old_ctx) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    old_ctx as f32,
                );
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Self {
            inv_freq,
            style,
            sections: None,
        }
    }

    /// Qwen2-VL's M-RoPE: `section[k]` consecutive frequencies turn by
    /// position axis k (transformers' `mrope_section`, which must cover
    /// the head_dim / 2 frequencies exactly).
    pub fn with_sections(mut self, section: &[usize]) -> std::result::Result<Self, String> {
        let total: usize = section.iter().sum();
        if total != self.inv_freq.len() || section.is_empty() {
            return Err(format!(
                "mrope_section {section:?} sums to {total}, the rope has {} frequencies (head_dim / 2)",
                self.inv_freq.len()
            ));
        }
        self.sections = Some(section.to_vec());
        Ok(self)
    }

    /// The 2-D rope of Qwen2-VL's vision tower (transformers' "axial"
    /// rope): the frequencies of a head_dim / 2 rope, once for the patch
    /// row and once for its column, half-split over the whole head.
    pub fn axial_2d(theta: f64, head_dim: usize) -> Self {
        let cfg = RopeConfig {
            theta,
            scaling: RopeScaling::Default,
        };
        let half = Self::new(&cfg, head_dim / 2, RopeStyle::HalfSplit);
        let n = half.inv_freq.len();
        Self {
            inv_freq: [half.inv_freq.as_slice(), half.inv_freq.as_slice()].concat(),
            style: RopeStyle::HalfSplit,
            sections: Some(vec![n, n]),
        }
    }

    /// cos and sin for positions given per axis, for one sequence: a
    /// frequency in section k is turned by `axes[k]`'s position.
    ///
    /// # Shapes
    /// `axes`: one row of T positions per section -> cos, sin: (T, head_dim/2)
    pub fn cos_sin_axes(&self, axes: &[Vec<usize>], device: &Device) -> Result<(Tensor, Tensor)> {
        let sections = self.sections.as_deref().unwrap_or(&[]);
        let t = axes.first().map_or(0, Vec::len);
        if axes.len() != sections.len() || axes.iter().any(|a| a.len() != t) {
            candle_core::bail!(
                "rope: {} position rows for {} sections (each row as long as the first)",
                axes.len(),
                sections.len()
            );
        }
        // the position row each frequency reads
        let rows: Vec<&Vec<usize>> = sections
            .iter()
            .zip(axes)
            .flat_map(|(&n, row)| std::iter::repeat_n(row, n))
            .collect();
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for i in 0..t {
            for (f, row) in self.inv_freq.iter().zip(&rows) {
                let (s, c) = (row[i] as f32 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), device)?,
            Tensor::from_vec(sin, (t, half), device)?,
        ))
    }

    /// Divides each frequency by a per-frequency factor, as GGUF llama3
    /// files store their scaling (`rope_freqs.weight`).
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Self {
        for (f, d) in self.inv_freq.iter_mut().zip(factors) {
            *f /= d;
        }
        self
    }

    /// cos and sin for the given positions.
    ///
    /// # Shapes
    /// `positions`: B rows of T each -> cos, sin: (B, T, head_dim/2), or
    /// (T, head_dim/2) when B = 1.
    pub fn cos_sin(&self, positions: &[Vec<usize>], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    // f32 product then f32 sin/cos, as transformers does.
                    let (s, c) = (p as f32 * f).sin_cos();
                    cos.push(c);
                    sin.push(s);
                }
            }
        }
        if b == 1 {
            Ok((
                Tensor::from_vec(cos, (t, half), device)?,
                Tensor::from_vec(sin, (t, half), device)?,
            ))
        } else {
            Ok((
                Tensor::from_vec(cos, (b, t, half), device)?,
                Tensor::from_vec(sin, (b, t, half), device)?,
            ))
        }
    }

    /// Rotates q or k.
    ///
    /// # Shapes
    /// `xs`: (B, H, T, head_dim) contiguous; cos/sin from [`Self::cos_sin`].
    pub fn apply(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let cos = cos.to_dtype(xs.dtype())?;
        let sin = sin.to_dtype(xs.dtype())?;
        if xs.track_op() {
            // candle's rope kernels have no backward pass: ours (CPU f32)
            // or the composed rotation.
            if super::rope_op::applies(xs) {
                let t = xs.dim(2)?;
                let cut = |c: &Tensor| c.narrow(c.rank() - 2, 0, t);
                return super::rope_op::rotate(xs, &cut(&cos)?, &cut(&sin)?, self.style);
            }
            return self.apply_composed(xs, &cos, &sin);
        }
        match self.style {
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(xs, &cos, &sin),
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(xs, &cos, &sin),
        }
    }
}

impl Rope {
    /// Rotates q and k in place inside packed (N, 3, H, hd) projection rows
    /// (the fused attention core's input) and scales q, so the tower never
    /// splits them into per-head tensors. Same arithmetic as candle's
    /// half-split `rope` kernel: `x1·cos − x2·sin`, `x1·sin + x2·cos`.
    ///
    /// # Shapes
    /// `qkv`: N rows of 3·H·hd; `cos`, `sin`: (N, hd/2) row-major.
    pub fn rotate_packed_qk(
        &self,
        qkv: &mut [f32],
        heads: usize,
        cos: &[f32],
        sin: &[f32],
        q_scale: f32,
    ) -> Result<()> {
        use rayon::prelude::*;
        let half = self.inv_freq.len();
        let hd = 2 * half;
        let width = 3 * heads * hd;
        if self.style != RopeStyle::HalfSplit
            || width == 0
            || !qkv.len().is_multiple_of(width)
            || cos.len() != qkv.len() / width * half
            || sin.len() != cos.len()
        {
            candle_core::bail!(
                "rope: packed rotation of {} values in rows of {width} with {} angles",
                qkv.len(),
                cos.len()
            );
        }
        qkv.par_chunks_mut(width)
            .zip(cos.par_chunks(half).zip(sin.par_chunks(half)))
            .for_each(|(row, (cos, sin))| {
                // q heads, then k heads: the first 2·H head slots of the row
                for (slot, head) in row[..2 * heads * hd].chunks_mut(hd).enumerate() {
                    let scale = if slot < heads { q_scale } else { 1.0 };
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x1, x2) = (a[i], b[i]);
                        a[i] = (x1 * cos[i] - x2 * sin[i]) * scale;
                        b[i] = (x1 * sin[i] + x2 * cos[i]) * scale;
                    }
                }
            });
        Ok(())
    }

    /// The rotation from differentiable ops, for training.
    ///
    /// # Shapes
    /// as [`Self::apply`]
    fn apply_composed(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = xs.dims4()?;
        let half = d / 2;
        // (T, d/2) -> (1, 1, T, d/2); (B, T, d/2) -> (B, 1, T, d/2)
        let lift = |c: &Tensor| -> Result<Tensor> {
            match c.rank() {
                2 => c.narrow(0, 0, t)?.unsqueeze(0)?.unsqueeze(0),
                _ => c.narrow(1, 0, t)?.unsqueeze(1),
            }
        };
        let (cos, sin) = (lift(cos)?, lift(sin)?);
        match self.style {
            RopeStyle::HalfSplit => {
                let x1 = xs.narrow(3, 0, half)?;
                let x2 = xs.narrow(3, half, half)?;
                let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::cat(&[y1, y2], 3)
            }
            RopeStyle::Interleaved => {
                // (B, H, T, d) -> (B, H, T, d/2, 2): pairs (2i, 2i+1)
                let x = xs.reshape((b, h, t, half, 2))?;
                let x1 = x.narrow(4, 0, 1)?.squeeze(4)?;
                let x2 = x.narrow(4, 1, 1)?.squeeze(4)?;
                let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                // 2 x (B, H, T, d/2) -> (B, H, T, d/2, 2) -> (B, H, T, d)
                Tensor::stack(&[y1, y2], 4)?.reshape((b, h, t, d))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainable rope op gives the composed rotation's values and
    /// gradients, both styles, shared and per-row positions.
    #[test]
    fn trainable_op_matches_composed_rotation() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let max_diff = |a: &Tensor, b: &Tensor| crate::nn::cpu_grad::max_abs_diff(a, b).unwrap();
        for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
            let rope = Rope::new(
                &RopeConfig {
                    theta: 10000.0,
                    scaling: RopeScaling::Default,
                },
                8,
                style,
            );
            for positions in [
                vec![vec![0, 1, 2, 3, 4]],
                vec![vec![0, 1, 2, 3, 4], vec![0, 0, 0, 1, 2]],
            ] {
                let b = positions.len();
                let (cos, sin) = rope.cos_sin(&positions, &dev).unwrap();
                let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, 3, 5, 8), &dev).unwrap())
                    .unwrap();
                let w = Tensor::randn(0f32, 1.0, (b, 3, 5, 8), &dev).unwrap();
                let fused = rope.apply(&x, &cos, &sin).unwrap();
                let composed = rope.apply_composed(&x, &cos, &sin).unwrap();
                assert!(max_diff(&fused, &composed) < 1e-6);
                let gf = crate::nn::cpu_grad::grads_of_weighted_sum(&fused, &w).unwrap();
                let gc = crate::nn::cpu_grad::grads_of_weighted_sum(&composed, &w).unwrap();
                assert!(max_diff(gf.get(&x).unwrap(), gc.get(&x).unwrap()) < 1e-5);
            }
        }
    }

    #[test]
    fn llama3_keeps_short_and_divides_long_wavelengths() {
        let base = Rope::new(
            &RopeConfig {
                theta: 500000.0,
                scaling: RopeScaling::Default,
            },
            16,
            RopeStyle::HalfSplit,
        );
        let scaled = Rope::new(
            &RopeConfig {
                theta: 500000.0,
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 32.0,
                },
            },
            16,
            RopeStyle::HalfSplit,
        );
        // Wavelength 2π < 32/4: kept as is.
        assert_eq!(base.inv_freq[0], scaled.inv_freq[0]);
        // The longest wavelengths are far above 32: divided by the factor.
        let last = base.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] - base.inv_freq[last] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn composed_rotation_equals_the_kernels() -> Result<()> {
        let cfg = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Default,
        };
        let dev = Device::Cpu;
        for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
            let rope = Rope::new(&cfg, 8, style);
            for positions in [vec![vec![0, 1, 2]], vec![vec![0, 1, 2], vec![0, 0, 1]]] {
                let b = positions.len();
                let xs = Tensor::randn(0f32, 1.0, (b, 2, 3, 8), &dev)?;
                let (cos, sin) = rope.cos_sin(&positions, &dev)?;
                let fused = rope.apply(&xs, &cos, &sin)?;
                let composed = rope.apply_composed(&xs, &cos, &sin)?;
                let d = (fused - composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-6, "{style:?} batch {b}: {d}");
            }
        }
        Ok(())
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() -> Result<()> {
        let rope = Rope::new(
            &RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::Default,
            },
            8,
            RopeStyle::Interleaved,
        );
        let xs = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 2, 8))?;
        let (cos, sin) = rope.cos_sin(&[vec![0, 5]], &Device::Cpu)?;
        let ys = rope.apply(&xs, &cos, &sin)?;
        let x0: Vec<f32> = xs.get(0)?.get(0)?.get(0)?.to_vec1()?;
        let y0: Vec<f32> = ys.get(0)?.get(0)?.get(0)?.to_vec1()?;
        assert_eq!(x0, y0);
        let n = |t: &Tensor| -> Result<f32> { t.sqr()?.sum_all()?.to_scalar::<f32>() };
        let (nx, ny) = (
            n(&xs.get(0)?.get(0)?.get(1)?)?,
            n(&ys.get(0)?.get(0)?.get(1)?)?,
        );
        assert!((nx - ny).abs() < 1e-3, "{nx} vs {ny}");
        Ok(())
    }

    /// M-RoPE over text positions (every axis equal) is the plain rope;
    /// axes that differ turn their own sections only.
    #[test]
    fn sections_read_their_own_axis() -> Result<()> {
        let cfg = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Default,
        };
        let dev = Device::Cpu;
        let plain = Rope::new(&cfg, 16, RopeStyle::HalfSplit);
        let m = plain.clone().with_sections(&[2, 3, 3]).unwrap();
        assert!(plain.clone().with_sections(&[2, 3, 2]).is_err());
        let pos = vec![0, 3, 7, 8];
        let (c0, s0) = plain.cos_sin(std::slice::from_ref(&pos), &dev)?;
        let (c1, s1) = m.cos_sin_axes(&[pos.clone(), pos.clone(), pos.clone()], &dev)?;
        assert_eq!(c0.to_vec2::<f32>()?, c1.to_vec2::<f32>()?);
        assert_eq!(s0.to_vec2::<f32>()?, s1.to_vec2::<f32>()?);
        // only the height section moves when the height axis does
        let (c2, _) = m.cos_sin_axes(&[pos.clone(), vec![1, 1, 1, 1], pos.clone()], &dev)?;
        let (a, b) = (c1.to_vec2::<f32>()?, c2.to_vec2::<f32>()?);
        for (ra, rb) in a.iter().zip(&b).skip(2) {
            assert_eq!(ra[..2], rb[..2]);
            assert_eq!(ra[5..], rb[5..]);
        }
        // the vision rope: half the head's frequencies, twice
        let v = Rope::axial_2d(10000.0, 8);
        let (c, _) = v.cos_sin_axes(&[vec![2], vec![5]], &dev)?;
        let f = Rope::new(&cfg, 4, RopeStyle::HalfSplit).inv_freq;
        let want: Vec<f32> = [2f32, 2., 5., 5.]
            .iter()
            .zip(f.iter().chain(&f))
            .map(|(p, f)| (p * f).cos())
            .collect();
        assert_eq!(c.to_vec2::<f32>()?[0], want);
        Ok(())
    }
}
