//! Qwen2-VL's vision tower (HF `Qwen2VisionTransformerPretrainedModel`):
//! the Conv3d patch embedding (a matmul over the flattened (C, T, p, p)
//! patch), pre-LayerNorm blocks whose attention turns q and k by a 2-D
//! rope over each patch's (row, column) and stays inside each image or
//! frame (transformers' `cu_seqlens`), and the 2×2 `PatchMerger` (`ln_q`,
//! then an MLP over the four patches of a merge block side by side).
//!
//! Patch rows arrive block-major (glimpse-data's `qwen2_vl_patches`), so
//! a merge block's four patches are consecutive rows and the merger is a
//! reshape.

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};
use crate::nn::causal_attention::grouped_attention;
use crate::nn::fused_attention;
use crate::nn::layer_norm::layer_norm;
use crate::nn::linear::linear;
use crate::nn::rope::Rope;
use crate::nn::{Activation, LayerNorm, Linear, Mlp};
use crate::qwen2_vl::config::Qwen2VlVisionConfig;

/// Most attention scores (heads × patches² of one image) the tower computes
/// at once: 2^30 f32, 4 GiB.
const MAX_SCORES: usize = 1 << 30;

/// The tower's rope angles for every patch row, and on the CPU in f32 the
/// same as flat rows for the fused path.
struct Angles {
    /// (N, hd/2)
    cos: Tensor,
    /// (N, hd/2)
    sin: Tensor,
    flat: Option<(Vec<f32>, Vec<f32>)>,
}

/// `VisionAttention`: one (3D, D) qkv projection, rope on q and k.
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    /// # Shapes
    /// `xs`: (N, D), `angles`: cos/sin (N, hd/2), `groups`: (start, len)
    /// row ranges that attend among themselves -> (N, D)
    fn forward(
        &self,
        xs: &Tensor,
        rope: &Rope,
        angles: &Angles,
        groups: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (n, d) = xs.dims2()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        // (N, 3D)
        let qkv = self.qkv.forward(xs)?;
        if let Some((cos, sin)) = &angles.flat {
            if fused_attention::applies(&qkv) {
                // rotate q, k and scale q inside the packed rows, then one
                // fused pass per (group, head): no per-head copies
                let mut rows = qkv.flatten_all()?.to_vec1::<f32>()?;
                rope.rotate_packed_qk(&mut rows, h, cos, sin, 1.0 / (hd as f32).sqrt())?;
                // (N·3D) -> (N, 3, H, hd)
                let packed = Tensor::from_vec(rows, (n, 3, h, hd), xs.device())?;
                let out = fused_attention::attention_segments(&packed, groups)?;
                return Ok(self.proj.forward(&out)?);
            }
        }
        let (cos, sin) = (&angles.cos, &angles.sin);
        // (N, 3D) -> (N, 3, H, hd) -> (3, H, N, hd)
        let qkv = qkv
            .reshape((n, 3, h, hd))?
            .permute((1, 2, 0, 3))?
            .contiguous()?;
        // (H, N, hd) -> (1, H, N, hd)
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.get(i)?.unsqueeze(0)?) };
        let q = rope.apply(&part(0)?, cos, sin)?;
        let k = rope.apply(&part(1)?, cos, sin)?;
        let v = part(2)?;
        let mut outs = Vec::with_capacity(groups.len());
        for &(start, len) in groups {
            // (1, H, len, hd) each
            let cut = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(2, start, len)?.contiguous()?) };
            // (1, len, H·hd)
            outs.push(grouped_attention(&cut(&q)?, &cut(&k)?, &cut(&v)?, None, false)?.0);
        }
        // G x (1, len_g, D) -> (1, N, D) -> (N, D)
        let out = Tensor::cat(&outs, 1)?.reshape((n, d))?;
        Ok(self.proj.forward(&out)?)
    }
}

/// `Qwen2VLVisionBlock`: x + attn(norm1 x), then x + mlp(norm2 x).
struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    attn: VisionAttention,
    mlp: Mlp,
}

/// `PatchMerger`: LayerNorm per patch, then the merge block's patches
/// side by side through Linear → GELU (erf) → Linear.
struct PatchMerger {
    ln_q: LayerNorm,
    /// `mlp.0`, (m²·D, m²·D)
    mlp_0: Linear,
    /// `mlp.2`, (out, m²·D)
    mlp_2: Linear,
    merged: usize,
}

impl PatchMerger {
    /// # Shapes
    /// `xs`: (N, D) -> (N / m², out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (n, d) = xs.dims2()?;
        let blocks = n * d / self.merged;
        // (N, D) -> (N / m², m²·D): a block's patches are consecutive rows
        let xs = self.ln_q.forward(xs)?.reshape((blocks, self.merged))?;
        let hidden = match self.mlp_0.bias() {
            Some(b) => Activation::Gelu.forward_biased(&self.mlp_0.forward_no_bias(&xs)?, b)?,
            None => Activation::Gelu.forward(&self.mlp_0.forward(&xs)?)?,
        };
        Ok(self.mlp_2.forward(&hidden)?)
    }
}

pub struct Qwen2VlVisionModel {
    /// `patch_embed.proj` (Conv3d, no bias) as a matrix (D, C·T·p·p).
    patch_embed: Linear,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    rope: Rope,
    cfg: Qwen2VlVisionConfig,
}

impl Qwen2VlVisionModel {
    /// Tensors under `vb` as `model.visual` (or 4.x's `visual`) names them.
    pub fn new(cfg: &Qwen2VlVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, p, t, c) = (
            cfg.embed_dim,
            cfg.patch_size,
            cfg.temporal_patch_size,
            cfg.in_channels,
        );
        // (D, C, T, p, p) -> (D, C·T·p·p): a stride-p kernel-p conv is a matmul
        let conv = vb.pp("patch_embed.proj").get((d, c, t, p, p), "weight")?;
        let patch_embed = Linear::new(conv.reshape((d, cfg.patch_dim()))?, None);
        let blocks = (0..cfg.depth)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(VisionBlock {
                    norm1: layer_norm(d, 1e-6, vb.pp("norm1"))?,
                    norm2: layer_norm(d, 1e-6, vb.pp("norm2"))?,
                    attn: VisionAttention {
                        qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
                        proj: linear(d, d, vb.pp("attn.proj"))?,
                        num_heads: cfg.num_heads,
                        head_dim: cfg.head_dim(),
                    },
                    mlp: Mlp::new(d, d * cfg.mlp_ratio, cfg.hidden_act, vb.pp("mlp"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let m2 = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let vm = vb.pp("merger");
        let merger = PatchMerger {
            ln_q: layer_norm(d, 1e-6, vm.pp("ln_q"))?,
            mlp_0: linear(m2 * d, m2 * d, vm.pp("mlp.0"))?,
            mlp_2: linear(m2 * d, cfg.hidden_size, vm.pp("mlp.2"))?,
            merged: m2 * d,
        };
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            rope: Rope::axial_2d(cfg.rope_theta, cfg.head_dim()),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Qwen2VlVisionConfig {
        &self.cfg
    }

    /// Merged rows of one or more images / videos, in order.
    ///
    /// # Shapes
    /// `pixels`: (Σ t·h·w, C·T·p·p) patch rows of every grid, one after
    /// another; `grids`: each `[t, h, w]` -> (Σ t·h·w / m², hidden_size)
    pub fn forward(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let m = self.cfg.spatial_merge_size;
        let rows: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let (n, width) = pixels.dims2()?;
        if n != rows || width != self.cfg.patch_dim() || grids.is_empty() {
            return Err(ModelError::Input(format!(
                "pixel values ({n}, {width}) for grids {grids:?}: need ({rows}, {})",
                self.cfg.patch_dim()
            )));
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g.contains(&0) || !g[1].is_multiple_of(m) || !g[2].is_multiple_of(m))
        {
            return Err(ModelError::Input(format!(
                "grid {g:?}: height and width must be positive multiples of spatial_merge_size {m}"
            )));
        }
        let (rows_h, rows_w, groups) = positions(grids, m);
        // Attention runs over each image whole: its scores, heads × L², are
        // the tower's largest buffer.
        let heads = self.cfg.num_heads;
        if let Some(&(_, len)) = groups
            .iter()
            .find(|(_, len)| len.saturating_mul(*len).saturating_mul(heads) > MAX_SCORES)
        {
            return Err(ModelError::Input(format!(
                "an image of {len} patches needs {heads}·{len}² attention scores (over {MAX_SCORES}); lower the processor's max_pixels"
            )));
        }
        let (cos, sin) = self.rope.cos_sin_axes(&[rows_h, rows_w], &Device::Cpu)?;
        let dtype = self.patch_embed.weight().dtype();
        let flat = if pixels.device().is_cpu() && dtype == candle_core::DType::F32 {
            Some((
                cos.flatten_all()?.to_vec1::<f32>()?,
                sin.flatten_all()?.to_vec1::<f32>()?,
            ))
        } else {
            None
        };
        let angles = Angles {
            cos: cos.to_device(pixels.device())?,
            sin: sin.to_device(pixels.device())?,
            flat,
        };
        let mut xs = self.patch_embed.forward(&pixels.to_dtype(dtype)?)?;
        for b in &self.blocks {
            let attn = b
                .attn
                .forward(&b.norm1.forward(&xs)?, &self.rope, &angles, &groups)?;
            xs = (xs + attn)?;
            let mlp = b.mlp.forward(&b.norm2.forward(&xs)?)?;
            xs = (xs + mlp)?;
        }
        self.merger.forward(&xs)
    }
}

/// Each patch row's (row, column) in its grid, in the block-major order of
/// the patch rows, repeated for every frame; and the row ranges that
/// attend among themselves (one per frame).
pub fn positions(grids: &[[usize; 3]], m: usize) -> (Vec<usize>, Vec<usize>, Vec<(usize, usize)>) {
    let (mut hs, mut ws, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for &[t, h, w] in grids {
        for _ in 0..t {
            groups.push((hs.len(), h * w));
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            hs.push(bh * m + mh);
                            ws.push(bw * m + mw);
                        }
                    }
                }
            }
        }
    }
    (hs, ws, groups)
}
