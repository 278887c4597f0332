//! Causal self-attention of Llama-family decoders (HF `LlamaAttention`,
//! `Qwen2Attention`): rotary positions, grouped-query heads, a key/value
//! cache, and an additive mask for padding and sliding windows.

use candle_core::{DType, Module, Result, Tensor};

use crate::nn::kv_cache::KvCache;
use crate::nn::qlinear::QLinear;
use crate::nn::rope::Rope;

/// The q, k, v projections as the checkpoint holds them, or joined into
/// one layer for inference ([`QLinear::stack`]).
#[derive(Debug, Clone)]
pub enum QkvProjection {
    Separate {
        q_proj: QLinear,
        k_proj: QLinear,
        v_proj: QLinear,
    },
    /// Output columns: q (H·hd), then k, then v (Hkv·hd each).
    Fused(QLinear),
}

impl QkvProjection {
    /// Joins frozen projections; trainable ones stay separate.
    pub fn new(q_proj: QLinear, k_proj: QLinear, v_proj: QLinear) -> Result<Self> {
        Ok(match QLinear::stack(&[&q_proj, &k_proj, &v_proj])? {
            Some(fused) => Self::Fused(fused),
            None => Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            },
        })
    }
}

#[derive(Debug, Clone)]
pub struct CausalSelfAttention {
    pub qkv: QkvProjection,
    pub o_proj: QLinear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// What a forward pass shares across layers: rotary angles of the new
/// tokens and the mask over (new tokens × all cached tokens).
pub struct AttentionInputs {
    /// (T, hd/2) or (B, T, hd/2) each.
    pub cos: Tensor,
    pub sin: Tensor,
    /// Additive f32 mask (B, 1, 1, T, S), 0 where a query may look and a
    /// large negative number where it may not; `None` when every query may
    /// see every key (one new token, no padding).
    pub mask: Option<Tensor>,
    /// Also return the attention probabilities (attention maps).
    pub want_probs: bool,
}

impl CausalSelfAttention {
    /// # Shapes
    /// `xs`: (B, T, D) -> (B, T, D), and with `inputs.want_probs` the
    /// probabilities averaged over heads, f32 (B, T, S); the cache grows by T.
    pub fn forward(
        &self,
        xs: &Tensor,
        rope: &Rope,
        inputs: &AttentionInputs,
        cache: &mut KvCache,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (q, k, v) = self.project(xs, rope, &inputs.cos, &inputs.sin)?;
        // (B, Hkv, S, hd) each
        let (k, v) = cache.append(&k, &v)?;
        let (out, probs) = self.attend(&q, &k, &v, inputs.mask.as_ref(), inputs.want_probs)?;
        Ok((self.o_proj.forward(&out)?, probs))
    }

    /// One new position for each of B independent sequences (continuous
    /// batching): the projections run once over all rows, then each row
    /// appends to its own cache and attends over its own keys, under its
    /// own mask.
    ///
    /// # Shapes
    /// `xs`: (B, 1, D), `cos`/`sin`: (B, 1, hd/2), `masks[b]`: (1, 1, 1, 1, S_b)
    /// -> (B, 1, D); cache b grows by one column.
    pub fn forward_rows(
        &self,
        xs: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        masks: &[Option<Tensor>],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(xs, rope, cos, sin)?;
        let mut rows = Vec::with_capacity(caches.len());
        for (b, cache) in caches.iter_mut().enumerate() {
            // (B, n, 1, hd) -> (1, n, 1, hd)
            let row = |t: &Tensor| t.narrow(0, b, 1);
            let (k, v) = cache.append(&row(&k)?, &row(&v)?)?;
            let mask = masks.get(b).and_then(Option::as_ref);
            rows.push(self.attend(&row(&q)?, &k, &v, mask, false)?.0);
        }
        // B x (1, 1, H*hd) -> (B, 1, H*hd)
        let out = Tensor::cat(&rows, 0)?;
        self.o_proj.forward(&out)
    }

    /// Rotated queries and keys, and values, of the new positions.
    ///
    /// # Shapes
    /// `xs`: (B, T, D) -> q (B, H, T, hd), k and v (B, Hkv, T, hd)
    fn project(
        &self,
        xs: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = xs.dims3()?;
        let (h, hkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // (B, T, n*hd) -> (B, T, n, hd) -> (B, n, T, hd)
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = match &self.qkv {
            QkvProjection::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (
                q_proj.forward(xs)?,
                k_proj.forward(xs)?,
                v_proj.forward(xs)?,
            ),
            QkvProjection::Fused(qkv) => {
                // (B, T, (H + 2 Hkv)*hd) -> q (B, T, H*hd), k, v (B, T, Hkv*hd)
                let y = qkv.forward(xs)?;
                (
                    y.narrow(2, 0, h * hd)?,
                    y.narrow(2, h * hd, hkv * hd)?,
                    y.narrow(2, (h + hkv) * hd, hkv * hd)?,
                )
            }
        };
        let q = rope.apply(&heads(q, h)?, cos, sin)?;
        let k = rope.apply(&heads(k, hkv)?, cos, sin)?;
        let v = heads(v, hkv)?;
        let dtype = v.dtype();
        Ok((q.to_dtype(dtype)?, k.to_dtype(dtype)?, v))
    }

    /// The attention core over the cached keys ([`grouped_attention`]).
    ///
    /// # Shapes
    /// `q`: (B, H, T, hd), `k`, `v`: (B, Hkv, S, hd), `mask`: (B, 1, 1, T, S)
    /// -> (B, T, H*hd), and with `want_probs` f32 (B, T, S)
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        grouped_attention(q, k, v, mask, want_probs)
    }
}

/// The attention core every decoder-side attention shares (causal
/// self-attention here, the gated cross-attention of
/// `fusion::cross_attention`): scaled scores, an additive mask, softmax in
/// f32, weighted values, heads merged. Grouped-query heads without copying
/// K/V: the G query heads that share one K/V head are G·T rows of one
/// matmul. The scale is 1/sqrt(hd).
///
/// # Shapes
/// `q`: (B, H, T, hd), `k`, `v`: (B, Hkv, S, hd), H a multiple of Hkv,
/// `mask`: additive f32 (B, 1, 1, T', S) with T' = T or 1
/// -> (B, T, H*hd), and with `want_probs` the probabilities averaged over
/// heads, f32 (B, T, S)
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, h, t, hd) = q.dims4()?;
    let (_, hkv, s, _) = k.dims4()?;
    if hkv == 0 || !h.is_multiple_of(hkv) {
        candle_core::bail!("{h} query heads are not a multiple of {hkv} key/value heads");
    }
    let dtype = v.dtype();
    let group = h / hkv;
    // (B, H, T, hd) -> (B, Hkv, G*T, hd)
    let q = q.to_dtype(dtype)?.reshape((b, hkv, group * t, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    // (B, Hkv, G*T, hd) x (B, Hkv, hd, S) -> (B, Hkv, G*T, S)
    let scores = (q.matmul(&k.t()?)? * scale)?;
    // Softmax in f32 as transformers does, whatever the activation dtype.
    let scores = scores.to_dtype(DType::F32)?;
    let scores = match mask {
        // (B, Hkv, G*T, S) -> (B, Hkv, G, T, S) + (B, 1, 1, T', S)
        Some(mask) => scores
            .reshape((b, hkv, group, t, s))?
            .broadcast_add(mask)?
            .reshape((b, hkv, group * t, s))?,
        None => scores,
    };
    let probs = crate::nn::attention::softmax_last_dim(&scores)?;
    let mean_probs = if want_probs {
        // (B, Hkv, G*T, S) = (B, H, T, S) -> (B, T, S)
        Some(probs.reshape((b, h, t, s))?.mean(1)?)
    } else {
        None
    };
    let probs = probs.to_dtype(dtype)?;
    // (B, Hkv, G*T, S) x (B, Hkv, S, hd) -> (B, Hkv, G*T, hd)
    let out = probs.matmul(&v.contiguous()?)?;
    // (B, Hkv, G*T, hd) = (B, H, T, hd) -> (B, T, H, hd) -> (B, T, H*hd)
    let out = out
        .reshape((b, h, t, hd))?
        .transpose(1, 2)?
        .reshape((b, t, h * hd))?;
    Ok((out, mean_probs))
}

/// Builds the additive mask for new tokens against all keys.
///
/// `key_valid[b][j]`: whether column j of row b (cached columns first,
/// then the T new ones) is a real token; `offset`: cached columns before
/// the new ones. Query i (column offset+i) sees key j when j is valid,
/// j <= offset+i, and, with a window W, offset+i - j < W.
///
/// # Shapes
/// returns (B, 1, 1, T, S) f32 with S = offset + T
pub fn build_mask(
    key_valid: &[Vec<bool>],
    offset: usize,
    t: usize,
    window: Option<usize>,
    device: &candle_core::Device,
) -> Result<Tensor> {
    // Large and finite: a row with nothing visible (a padding query) gets a
    // uniform softmax instead of NaN; its output is never read.
    const BLOCKED: f32 = -1e9;
    let s = offset + t;
    let b = key_valid.len();
    let mut data = vec![BLOCKED; b * t * s];
    for (row, valid) in key_valid.iter().enumerate() {
        for i in 0..t {
            let qpos = offset + i;
            let lo = window.map_or(0, |w| (qpos + 1).saturating_sub(w));
            let base = (row * t + i) * s;
            for j in lo..=qpos {
                if valid.get(j).copied().unwrap_or(false) {
                    data[base + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(data, (b, 1, 1, t, s), device)
}

/// The mask of `t` new tokens after `offset` cached ones ([`build_mask`]),
/// or `None` when every query may see every key ([`needs_mask`]).
///
/// # Shapes
/// returns (B, 1, 1, T, offset + T) f32
pub fn mask_if_needed(
    key_valid: &[Vec<bool>],
    offset: usize,
    t: usize,
    window: Option<usize>,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    if needs_mask(key_valid, t, window) {
        build_mask(key_valid, offset, t, window, device).map(Some)
    } else {
        Ok(None)
    }
}

/// Whether a forward of `t` new tokens needs an explicit mask at all.
pub fn needs_mask(key_valid: &[Vec<bool>], t: usize, window: Option<usize>) -> bool {
    let all_valid = key_valid.iter().all(|row| row.iter().all(|&v| v));
    let s = key_valid.first().map_or(0, Vec::len);
    let window_bites = window.is_some_and(|w| s > w);
    t > 1 || !all_valid || window_bites
}
