//! Gated cross-attention block (Flamingo §2.2 "GATED XATTN-DENSE"; HF
//! `MllamaCrossAttentionDecoderLayer`): text states attend to image states,
//! then a SwiGLU MLP, each branch scaled by `tanh(gate)` with the gate
//! initialised at 0, so a fresh block is exactly the identity and a decoder
//! with blocks inserted computes what the text-only decoder computes.
//!
//! No rotary positions (image features carry their own) and no causal mask
//! (every text position sees every image token); an optional key mask
//! removes padding image tokens. A text row that sees no image token at
//! all leaves the block unchanged, or, as transformers' Mllama computes it,
//! attends to every image token and skips only the MLP ([`EmptyRows`]).
//! The attention itself is the decoder's core,
//! [`crate::nn::causal_attention::grouped_attention`].

use crate::nn::causal_attention::grouped_attention;
use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::nn::linear::linear_no_bias;
use crate::nn::qlinear::QLinear;
use crate::nn::rms_norm::RmsNorm;
use crate::nn::swiglu::SwiGlu;
use crate::text::DecoderConfig;

/// Score added to masked keys: large and finite, so a row with no visible
/// key gets a uniform softmax instead of NaN (its output is then zeroed).
const BLOCKED: f64 = -1e9;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GatedCrossAttentionConfig {
    /// Width D of the text states.
    pub hidden_size: usize,
    /// Width Dv of the image states, projected to heads by `k_proj`/`v_proj`.
    pub vision_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    /// Per-head RMSNorm of queries and keys (`q_norm`/`k_norm`), as Mllama
    /// has; Flamingo has none.
    #[serde(default)]
    pub qk_norm: bool,
}

impl GatedCrossAttentionConfig {
    /// Heads, widths and eps of the decoder the block is inserted into.
    pub fn for_decoder(dec: &DecoderConfig, vision_size: usize, qk_norm: bool) -> Self {
        Self {
            hidden_size: dec.hidden_size,
            vision_size,
            num_heads: dec.num_attention_heads,
            num_kv_heads: dec.num_key_value_heads,
            head_dim: dec.head_dim,
            intermediate_size: dec.intermediate_size,
            rms_norm_eps: dec.rms_norm_eps,
            qk_norm,
        }
    }

    /// Matches `DecoderConfig::tiny()` (width 64, 4 heads over 2 K/V heads)
    /// with 32-wide image states, and the Mllama q/k norms.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            vision_size: 32,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            intermediate_size: 128,
            rms_norm_eps: 1e-6,
            qk_norm: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let (h, hkv) = (self.num_heads, self.num_kv_heads);
        if h == 0 || hkv == 0 || h % hkv != 0 {
            return Err(ModelError::config(
                "GatedCrossAttentionConfig",
                format!("num_heads {h} is not a multiple of num_kv_heads {hkv}"),
            ));
        }
        if self.hidden_size == 0 || self.vision_size == 0 || self.head_dim == 0 {
            return Err(ModelError::config(
                "GatedCrossAttentionConfig",
                "hidden_size, vision_size and head_dim must be non-zero",
            ));
        }
        Ok(())
    }
}

/// What a text row that sees no image token gets from the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyRows {
    /// Both branches zeroed: the row leaves the block unchanged (glimpse's
    /// own cross-fusion models).
    #[default]
    Unchanged,
    /// transformers' Mllama (`_prepare_cross_attention_mask`): the row's
    /// mask is lifted, so it attends to every image token (padding
    /// tiles included) as its scores say, and keeps that attention branch; only the MLP branch
    /// is zeroed (`full_text_row_masked_out_mask`).
    AttendAll,
}

/// Projected keys and values of one request's images: computed once by
/// [`GatedCrossAttention::image_kv`] and reused for prefill and every
/// decode step (each block has its own).
#[derive(Debug, Clone)]
pub struct CrossKv {
    /// (B, Hkv, S, hd)
    pub k: Tensor,
    /// (B, Hkv, S, hd)
    pub v: Tensor,
}

impl CrossKv {
    pub fn batch_size(&self) -> usize {
        self.k.dims().first().copied().unwrap_or(0)
    }

    /// Image tokens S per row (padding included).
    pub fn num_tokens(&self) -> usize {
        self.k.dims().get(2).copied().unwrap_or(0)
    }
}

/// Multi-head attention of text queries over image keys/values (HF
/// `MllamaTextCrossAttention`), grouped-query.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    pub q_proj: QLinear,
    pub k_proj: QLinear,
    pub v_proj: QLinear,
    pub o_proj: QLinear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// A key mask resolved for one forward: the additive score bias and the
/// 0/1 factor of text rows that see at least one image token.
struct ResolvedMask {
    /// (B, 1, 1, T', S) f32, T' = 1 or T
    bias: Tensor,
    /// (B, T', 1) f32
    rows: Tensor,
}

impl CrossAttention {
    pub fn new(cfg: &GatedCrossAttentionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, dv, hd) = (cfg.hidden_size, cfg.vision_size, cfg.head_dim);
        let (h, hkv) = (cfg.num_heads, cfg.num_kv_heads);
        let dense = |i, o, name: &str| -> Result<QLinear> {
            Ok(QLinear::Dense(linear_no_bias(i, o, vb.pp(name))?))
        };
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(rms_norm(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?),
                Some(rms_norm(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: dense(d, h * hd, "q_proj")?,
            k_proj: dense(dv, hkv * hd, "k_proj")?,
            v_proj: dense(dv, hkv * hd, "v_proj")?,
            o_proj: dense(h * hd, d, "o_proj")?,
            q_norm,
            k_norm,
            num_heads: h,
            num_kv_heads: hkv,
            head_dim: hd,
        })
    }

    /// # Shapes
    /// `image_states`: (B, S, Dv) -> K, V (B, Hkv, S, hd) each
    pub fn image_kv(&self, image_states: &Tensor) -> Result<CrossKv> {
        let (b, s, _) = image_states.dims3()?;
        let (hkv, hd) = (self.num_kv_heads, self.head_dim);
        // (B, S, Hkv*hd) -> (B, S, Hkv, hd) -> (B, Hkv, S, hd)
        let heads = |p: &QLinear| -> Result<Tensor> {
            Ok(p.forward(image_states)?
                .reshape((b, s, hkv, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let k = heads(&self.k_proj)?;
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?.contiguous()?,
            None => k,
        };
        Ok(CrossKv {
            k,
            v: heads(&self.v_proj)?,
        })
    }

    /// Attention output, and when `want_probs` the probabilities averaged
    /// over heads. Rows a mask leaves without keys are not zeroed here.
    ///
    /// # Shapes
    /// `xs`: (B, T, D) -> (B, T, D), probs f32 (B, T, S)
    fn forward(
        &self,
        xs: &Tensor,
        kv: &CrossKv,
        mask: Option<&ResolvedMask>,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = xs.dims3()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        // (B, T, H*hd) -> (B, T, H, hd) -> (B, H, T, hd)
        let q = self
            .q_proj
            .forward(xs)?
            .reshape((b, t, h, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?.contiguous()?,
            None => q,
        };
        // the decoder's attention core: (B, H, T, hd) over (B, Hkv, S, hd)
        // -> (B, T, H*hd)
        let (out, mean_probs) =
            grouped_attention(&q, &kv.k, &kv.v, mask.map(|m| &m.bias), want_probs)?;
        Ok((self.o_proj.forward(&out)?, mean_probs))
    }
}

#[derive(Debug, Clone)]
pub struct GatedCrossAttention {
    pub input_layernorm: RmsNorm,
    pub cross_attn: CrossAttention,
    /// (1,), zero at init; the branch is scaled by its tanh.
    pub cross_attn_attn_gate: Tensor,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: SwiGlu,
    /// (1,), zero at init.
    pub cross_attn_mlp_gate: Tensor,
    cfg: GatedCrossAttentionConfig,
    empty_rows: EmptyRows,
}

impl GatedCrossAttention {
    /// Tensors under `vb` as Mllama names them (`cross_attn.q_proj.weight`,
    /// `cross_attn_attn_gate`, `mlp.gate_proj.weight`, ...); when `vb`
    /// creates variables, linears start like torch's and gates at 0.
    pub fn new(cfg: &GatedCrossAttentionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let dense = |i, o, vb| -> Result<QLinear> { Ok(QLinear::Dense(linear_no_bias(i, o, vb)?)) };
        let mlp = vb.pp("mlp");
        Ok(Self {
            input_layernorm: rms_norm(d, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            cross_attn: CrossAttention::new(cfg, vb.pp("cross_attn"))?,
            cross_attn_attn_gate: vb.get_with_hints(
                (1,),
                "cross_attn_attn_gate",
                Init::Const(0.0),
            )?,
            post_attention_layernorm: rms_norm(
                d,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: SwiGlu::new(
                dense(d, i, mlp.pp("gate_proj"))?,
                dense(d, i, mlp.pp("up_proj"))?,
                dense(i, d, mlp.pp("down_proj"))?,
            )?,
            cross_attn_mlp_gate: vb.get_with_hints(
                (1,),
                "cross_attn_mlp_gate",
                Init::Const(0.0),
            )?,
            cfg: cfg.clone(),
            empty_rows: EmptyRows::Unchanged,
        })
    }

    /// The block with `rule` for text rows that see no image token.
    pub fn with_empty_rows(mut self, rule: EmptyRows) -> Self {
        self.empty_rows = rule;
        self
    }

    pub fn config(&self) -> &GatedCrossAttentionConfig {
        &self.cfg
    }

    /// Projects a request's image states to this block's keys and values;
    /// call once per request and pass the result to every forward.
    ///
    /// # Shapes
    /// `image_states`: (B, S, Dv) -> K, V (B, Hkv, S, hd) each
    pub fn image_kv(&self, image_states: &Tensor) -> Result<CrossKv> {
        let (_, s, dv) = image_states.dims3()?;
        if dv != self.cfg.vision_size {
            return Err(ModelError::Input(format!(
                "image states are {dv} wide, the cross-attention block takes {}",
                self.cfg.vision_size
            )));
        }
        if s == 0 {
            return Err(ModelError::Input(
                "no image tokens (mask a row without images instead)".into(),
            ));
        }
        self.cross_attn.image_kv(image_states)
    }

    /// `x + tanh(attn_gate)·xattn(norm(x), kv)`, then
    /// `x + tanh(mlp_gate)·mlp(norm(x))`.
    ///
    /// `key_mask`: nonzero where an image token is real, (B, S) for all text
    /// positions alike or (B, T, S) per position (Mllama's
    /// `cross_attention_mask`); any dtype. A text row with no real image
    /// token comes out unchanged.
    ///
    /// # Shapes
    /// `xs`: (B, T, D), `kv`: (B, Hkv, S, hd) -> (B, T, D)
    pub fn forward(&self, xs: &Tensor, kv: &CrossKv, key_mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_inner(xs, kv, key_mask, false)?.0)
    }

    /// [`Self::forward`] plus the attention probabilities averaged over
    /// heads, for attention maps; zero on rows that see no image token.
    ///
    /// # Shapes
    /// `xs`: (B, T, D) -> ((B, T, D), probs f32 (B, T, S))
    pub fn forward_with_attention(
        &self,
        xs: &Tensor,
        kv: &CrossKv,
        key_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (out, probs) = self.forward_inner(xs, kv, key_mask, true)?;
        let probs = probs.ok_or_else(|| ModelError::Input("attention probabilities".into()))?;
        Ok((out, probs))
    }

    fn forward_inner(
        &self,
        xs: &Tensor,
        kv: &CrossKv,
        key_mask: Option<&Tensor>,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, d) = xs.dims3()?;
        if d != self.cfg.hidden_size {
            return Err(ModelError::Input(format!(
                "text states are {d} wide, the cross-attention block takes {}",
                self.cfg.hidden_size
            )));
        }
        if kv.batch_size() != b {
            return Err(ModelError::Input(format!(
                "image keys/values hold {} rows, the text states {b}",
                kv.batch_size()
            )));
        }
        let mask = key_mask
            .map(|m| resolve_mask(m, b, t, kv.num_tokens(), self.empty_rows))
            .transpose()?;
        let dtype = xs.dtype();
        // Zeroes a branch on text rows that see no image token.
        let keep_rows = |branch: Tensor| -> Result<Tensor> {
            match &mask {
                Some(m) => Ok(branch.broadcast_mul(&m.rows.to_dtype(dtype)?)?),
                None => Ok(branch),
            }
        };
        let keep_attention_rows = |branch: Tensor| -> Result<Tensor> {
            match self.empty_rows {
                EmptyRows::Unchanged => keep_rows(branch),
                EmptyRows::AttendAll => Ok(branch),
            }
        };
        let (attn, probs) = self.cross_attn.forward(
            &self.input_layernorm.forward(xs)?,
            kv,
            mask.as_ref(),
            want_probs,
        )?;
        let attn = keep_attention_rows(attn)?.broadcast_mul(&self.cross_attn_attn_gate.tanh()?)?;
        let xs = (xs + attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?;
        let mlp = keep_rows(mlp)?.broadcast_mul(&self.cross_attn_mlp_gate.tanh()?)?;
        let probs = match (probs, &mask) {
            // (B, T, S) * (B, T', 1)
            (Some(p), Some(m)) => Some(p.broadcast_mul(&m.rows)?),
            (p, _) => p,
        };
        Ok(((xs + mlp)?, probs))
    }
}

/// # Shapes
/// `mask`: (B, S) or (B, T, S), nonzero = visible -> bias (B, 1, 1, T', S),
/// rows (B, T', 1), T' = 1 or T
fn resolve_mask(
    mask: &Tensor,
    b: usize,
    t: usize,
    s: usize,
    empty_rows: EmptyRows,
) -> Result<ResolvedMask> {
    let mask = match mask.rank() {
        // (B, S) -> (B, 1, S)
        2 => mask.unsqueeze(1)?,
        3 => mask.clone(),
        _ => {
            return Err(ModelError::Input(format!(
                "cross-attention key mask is {:?}, expected (B, S) or (B, T, S)",
                mask.dims()
            )))
        }
    };
    let (mb, mt, ms) = mask.dims3()?;
    if mb != b || ms != s || (mt != 1 && mt != t) {
        return Err(ModelError::Input(format!(
            "cross-attention key mask is ({mb}, {mt}, {ms}), the input needs ({b}, {t}, {s}) or ({b}, {s})"
        )));
    }
    // 1.0 where a key is visible, 0.0 where not
    let valid = mask.to_dtype(DType::F32)?.ne(0f64)?.to_dtype(DType::F32)?;
    // 0 where visible, BLOCKED where not; (B, T', S) -> (B, 1, 1, T', S)
    let bias = valid
        .affine(-BLOCKED, BLOCKED)?
        .unsqueeze(1)?
        .unsqueeze(1)?;
    // (B, T', S) -> (B, T', 1)
    let rows = valid.max_keepdim(D::Minus1)?;
    let bias = match empty_rows {
        EmptyRows::Unchanged => bias,
        // a row with no visible key sees every key: its bias row becomes 0
        // (B, 1, 1, T', S) * (B, T', 1) -> (B, 1, 1, T', 1)
        EmptyRows::AttendAll => bias.broadcast_mul(&rows.unsqueeze(1)?.unsqueeze(1)?)?,
    };
    Ok(ResolvedMask { bias, rows })
}

/// RMSNorm weight `weight` (dim) under `vb`, ones when created.
fn rms_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    Ok(RmsNorm::new(
        vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
        eps,
    ))
}
