//! Llama-family causal language model (HF `LlamaForCausalLM`,
//! `MistralForCausalLM`, `Qwen2ForCausalLM`): token embeddings, pre-norm
//! decoder layers (RMSNorm, rotary GQA self-attention, SwiGLU), final norm
//! and LM head, with an explicit KV cache for prefill and decode steps.
//!
//! The model takes either ids or input embeddings, so a VLM can splice
//! image rows into the sequence before the first layer. Batches are
//! left-padded: `valid` marks real tokens, positions count only real tokens
//! (as transformers' `generate` derives `position_ids` from the mask), and
//! padding columns are masked out as keys.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::lora::{Adapter, LoraWeights};
use crate::nn::causal_attention::{
    mask_if_needed, AttentionInputs, CausalSelfAttention, QkvProjection,
};
use crate::nn::kv_cache::KvCache;
use crate::nn::qlinear::QLinear;
use crate::nn::rms_norm::RmsNorm;
use crate::nn::rope::{Rope, RopeStyle};
use crate::nn::swiglu::{GateUp, SwiGlu};
use crate::shape_check::{self, Shapes};
use crate::text::decoder_config::DecoderConfig;
use crate::text::decoder_weights::{DecoderWeights, TokenEmbedding};
use crate::weights::Checkpoint;

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub self_attn: CausalSelfAttention,
    pub mlp: SwiGlu,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    /// `lora`: adapters for the targeted linear layers (their factors
    /// named `{prefix}.self_attn.q_proj.lora_A.weight` and so on).
    fn new(
        cfg: &DecoderConfig,
        w: &DecoderWeights,
        prefix: &str,
        lora: Option<&LoraWeights>,
        rope_style: RopeStyle,
    ) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (h, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let attn = format!("{prefix}.self_attn");
        let mlp = format!("{prefix}.mlp");
        let i = cfg.intermediate_size;
        let (dtype, device) = (w.compute_dtype(), w.device());
        // q/k rows stored interleaved per head (GGUF llama): the adapter's
        // B rows follow them.
        let rotary = |heads: usize| (rope_style == RopeStyle::Interleaved).then_some(heads);
        let linear = |name: String,
                      in_dim: usize,
                      out_dim: usize,
                      bias: bool,
                      heads: Option<usize>|
         -> Result<QLinear> {
            let base = w.linear(&name, in_dim, out_dim, bias)?;
            match lora {
                Some(l) => l.adapt(&name, base, in_dim, out_dim, dtype, &device, heads),
                None => Ok(base),
            }
        };
        Ok(Self {
            self_attn: CausalSelfAttention {
                qkv: QkvProjection::new(
                    linear(format!("{attn}.q_proj"), d, h * hd, cfg.qkv_bias, rotary(h))?,
                    linear(
                        format!("{attn}.k_proj"),
                        d,
                        hkv * hd,
                        cfg.qkv_bias,
                        rotary(hkv),
                    )?,
                    linear(format!("{attn}.v_proj"), d, hkv * hd, cfg.qkv_bias, None)?,
                )?,
                o_proj: linear(format!("{attn}.o_proj"), h * hd, d, cfg.o_bias, None)?,
                num_heads: h,
                num_kv_heads: hkv,
                head_dim: hd,
            },
            mlp: SwiGlu::new(
                linear(format!("{mlp}.gate_proj"), d, i, cfg.mlp_bias, None)?,
                linear(format!("{mlp}.up_proj"), d, i, cfg.mlp_bias, None)?,
                linear(format!("{mlp}.down_proj"), i, d, cfg.mlp_bias, None)?,
            )?,
            input_layernorm: norm(cfg, w, &format!("{prefix}.input_layernorm"))?,
            post_attention_layernorm: norm(cfg, w, &format!("{prefix}.post_attention_layernorm"))?,
        })
    }

    /// This layer with every adapter folded into its weight, the
    /// projections fused again where they can be.
    fn merge_lora(&self) -> Result<Self> {
        let mut out = self.clone();
        if let QkvProjection::Separate {
            q_proj,
            k_proj,
            v_proj,
        } = &self.self_attn.qkv
        {
            out.self_attn.qkv =
                QkvProjection::new(q_proj.merged()?, k_proj.merged()?, v_proj.merged()?)?;
        }
        out.self_attn.o_proj = self.self_attn.o_proj.merged()?;
        let down = self.mlp.down_proj.merged()?;
        out.mlp = match &self.mlp.gate_up {
            GateUp::Separate { gate_proj, up_proj } => {
                SwiGlu::new(gate_proj.merged()?, up_proj.merged()?, down)?
            }
            GateUp::Fused(fused) => SwiGlu {
                gate_up: GateUp::Fused(fused.clone()),
                down_proj: down,
            },
        };
        Ok(out)
    }

    /// Whether any linear layer here has an adapter.
    fn has_lora(&self) -> bool {
        let attn = match &self.self_attn.qkv {
            QkvProjection::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => [q_proj, k_proj, v_proj].iter().any(|p| p.lora().is_some()),
            QkvProjection::Fused(_) => false,
        };
        let gate_up = match &self.mlp.gate_up {
            GateUp::Separate { gate_proj, up_proj } => {
                gate_proj.lora().is_some() || up_proj.lora().is_some()
            }
            GateUp::Fused(_) => false,
        };
        attn || gate_up
            || self.self_attn.o_proj.lora().is_some()
            || self.mlp.down_proj.lora().is_some()
    }

    /// # Shapes
    /// `xs`: (B, T, D) -> (B, T, D), head-averaged probabilities (B, T, S)
    /// when asked for
    fn forward(
        &self,
        xs: &Tensor,
        rope: &Rope,
        inputs: &AttentionInputs,
        cache: &mut KvCache,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (attn, probs) =
            self.self_attn
                .forward(&self.input_layernorm.forward(xs)?, rope, inputs, cache)?;
        let xs = (xs + attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?;
        Ok(((xs + mlp)?, probs))
    }

    /// One new position for each of B sequences with their own caches;
    /// see [`CausalSelfAttention::forward_rows`].
    ///
    /// # Shapes
    /// `xs`: (B, 1, D) -> (B, 1, D)
    fn forward_rows(
        &self,
        xs: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        masks: &[Option<Tensor>],
        caches: &mut [&mut KvCache],
    ) -> candle_core::Result<Tensor> {
        let attn = self.self_attn.forward_rows(
            &self.input_layernorm.forward(xs)?,
            rope,
            cos,
            sin,
            masks,
            caches,
        )?;
        let xs = (xs + attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?;
        xs + mlp
    }
}

fn norm(cfg: &DecoderConfig, w: &DecoderWeights, prefix: &str) -> Result<RmsNorm> {
    Ok(RmsNorm::new(
        w.dense(
            &format!("{prefix}.weight"),
            &[cfg.hidden_size],
            candle_nn::Init::Const(1.0),
        )?,
        cfg.rms_norm_eps,
    ))
}

/// Blocks a caller runs between decoder layers (cross-attention fusion):
/// `after_layer(i, xs)` sees the output of layer `i` and returns what layer
/// `i + 1` reads. The decoder knows nothing of what the hook holds.
pub trait LayerHook {
    /// # Shapes
    /// `xs`: (B, T, D) -> (B, T, D)
    fn after_layer(&self, index: usize, xs: Tensor) -> Result<Tensor>;
}

/// Which positions get LM-head logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every input position (parity tests, training).
    All,
    /// Only the last column (generation): the head is the widest matmul,
    /// running it over a whole prompt would be wasted.
    Last,
}

/// Per-request decoding state: every layer's keys and values, and which
/// cached columns of each row are real tokens.
#[derive(Debug, Clone, Default)]
pub struct DecoderCache {
    layers: Vec<KvCache>,
    key_valid: Vec<Vec<bool>>,
    /// When set, each forward leaves every layer's self-attention
    /// probabilities, averaged over heads, in `attention` ((B, T, S) each).
    pub capture_attention: bool,
    pub attention: Vec<Tensor>,
    /// Added to the rotary position of every token that follows
    /// (transformers' `rope_deltas`): M-RoPE gives an image fewer positions
    /// than rows, so tokens after a prefill with explicit positions
    /// ([`Decoder::forward_embeds_mrope`]) continue from its largest
    /// position + 1, not from the count of cached tokens. 0 otherwise.
    pub rope_delta: i64,
}

impl DecoderCache {
    /// Columns cached so far (padding included).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batch_size(&self) -> usize {
        self.key_valid.len()
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub embed_tokens: TokenEmbedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: QLinear,
    rope: Rope,
    cfg: DecoderConfig,
    /// Rows of the token table (`vocab_size` but for Mllama's).
    embed_rows: usize,
    dtype: DType,
    device: Device,
}

/// Where a decoder's layers and token table sit in its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderLayout {
    /// Checkpoint index of each layer, in order (`{prefix}.layers.{i}`).
    pub layer_ids: Vec<usize>,
    /// Rows of `embed_tokens`: `vocab_size`, or more when ids past the LM
    /// head's outputs are embedded too (Mllama's `<|image|>`: 8 more).
    pub embed_rows: usize,
}

impl DecoderLayout {
    /// Layers 0..n, one token row per LM-head output.
    pub fn plain(cfg: &DecoderConfig) -> Self {
        Self {
            layer_ids: (0..cfg.num_hidden_layers).collect(),
            embed_rows: cfg.vocab_size,
        }
    }
}

impl Decoder {
    /// Builds the decoder from weights named as HF names them under
    /// `prefix` (`model` for `LlamaForCausalLM`), the head at `head`.
    pub fn new(
        cfg: &DecoderConfig,
        w: &DecoderWeights,
        prefix: &str,
        head: &str,
        rope_style: RopeStyle,
    ) -> Result<Self> {
        Self::new_with_lora(cfg, w, prefix, head, rope_style, None)
    }

    /// [`Self::new`] with LoRA adapters on the linear layers `lora`
    /// targets (never the LM head). The caller checks the adapter with
    /// [`LoraWeights::finish`] once the model is built.
    pub fn new_with_lora(
        cfg: &DecoderConfig,
        w: &DecoderWeights,
        prefix: &str,
        head: &str,
        rope_style: RopeStyle,
        lora: Option<&LoraWeights>,
    ) -> Result<Self> {
        let layout = DecoderLayout::plain(cfg);
        Self::new_with_layout(cfg, w, prefix, head, rope_style, lora, &layout)
    }

    /// [`Self::new_with_lora`] with the layers and token table where
    /// `layout` puts them (Mllama: self-attention layers between
    /// cross-attention ones, a table with extra rows).
    pub fn new_with_layout(
        cfg: &DecoderConfig,
        w: &DecoderWeights,
        prefix: &str,
        head: &str,
        rope_style: RopeStyle,
        lora: Option<&LoraWeights>,
        layout: &DecoderLayout,
    ) -> Result<Self> {
        if layout.layer_ids.len() != cfg.num_hidden_layers || layout.embed_rows < cfg.vocab_size {
            return Err(ModelError::Input(format!(
                "decoder layout names {} layers and {} token rows for {} layers and a vocabulary of {}",
                layout.layer_ids.len(),
                layout.embed_rows,
                cfg.num_hidden_layers,
                cfg.vocab_size
            )));
        }
        let embed_tokens = w.embedding(
            &format!("{prefix}.embed_tokens.weight"),
            layout.embed_rows,
            cfg.hidden_size,
        )?;
        let layers = layout
            .layer_ids
            .iter()
            .map(|i| DecoderLayer::new(cfg, w, &format!("{prefix}.layers.{i}"), lora, rope_style))
            .collect::<Result<Vec<_>>>()?;
        let norm = norm(cfg, w, &format!("{prefix}.norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            w.tied_head(&embed_tokens)?
        } else {
            w.linear(head, cfg.hidden_size, cfg.vocab_size, false)?
        };
        let mut rope = Rope::new(&cfg.rope, cfg.head_dim, rope_style);
        if let DecoderWeights::Gguf { file, device, .. } = w {
            // llama.cpp stores Llama 3 rope scaling as per-frequency divisors.
            if file.has_raw("rope_freqs.weight") {
                let f = file.raw_tensor("rope_freqs.weight", &[cfg.head_dim / 2], device)?;
                let f: Vec<f32> = f.dequantize(device)?.to_vec1()?;
                rope = rope.with_freq_factors(&f);
            }
        }
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            cfg: cfg.clone(),
            embed_rows: layout.embed_rows,
            dtype: w.compute_dtype(),
            device: w.device(),
        })
    }

    /// Loads an HF causal-LM directory (`config.json` + safetensors),
    /// strictly: every tensor present and shaped right, none left over.
    pub fn load_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_hf_dir_with_lora(dir, dtype, device, None)
    }

    /// [`Self::load_hf_dir`] with a PEFT adapter, unmerged: every adapter
    /// tensor must be used and every target must match a layer.
    pub fn load_hf_dir_with_lora(
        dir: &Path,
        dtype: DType,
        device: &Device,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg = DecoderConfig::from_file(&config_path)?;
        let checkpoint = Checkpoint::open_dir(dir)?;
        // The config's sizes against the header before anything is built.
        let shapes = Shapes::new(checkpoint.shapes(), checkpoint.path());
        shape_check::decoder(&cfg, &shapes, "model", "lm_head").map_err(|e| e.at(&config_path))?;
        let lora = adapter
            .map(|a| LoraWeights::from_adapter(a, "model"))
            .transpose()?;
        let strict = checkpoint.strict(dtype, device);
        let vb: VarBuilder = strict.var_builder();
        let model = Self::new_with_lora(
            &cfg,
            &DecoderWeights::Hf(vb),
            "model",
            "lm_head",
            RopeStyle::HalfSplit,
            lora.as_ref(),
        );
        // Tied checkpoints sometimes still carry a copy of the head;
        // rotary buffers of old exports are derived, not learned.
        let model = strict.conclude(model, |name| {
            (cfg.tie_word_embeddings && name == "lm_head.weight")
                || name.ends_with("rotary_emb.inv_freq")
        })?;
        if let Some(l) = &lora {
            l.finish()?;
        }
        Ok(model)
    }

    /// Loads a llama/qwen2 GGUF file. `dequantize`: `Some(dtype)` turns every
    /// weight dense at load (reference numerics), `None` keeps quantized
    /// blocks and runs candle's quantized matmuls.
    pub fn load_gguf(file: &GgufFile, dequantize: Option<DType>, device: &Device) -> Result<Self> {
        Self::load_gguf_with_lora(file, dequantize, device, None)
    }

    /// [`Self::load_gguf`] with a PEFT adapter trained on the HF model the
    /// file was converted from; the quantized base stays quantized, the
    /// adapter runs beside it in f32 (or `dequantize`'s dtype).
    pub fn load_gguf_with_lora(
        file: &GgufFile,
        dequantize: Option<DType>,
        device: &Device,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let (cfg, style) = file.decoder_config()?;
        let w = DecoderWeights::Gguf {
            file,
            dequantize,
            device: device.clone(),
        };
        let lora = adapter
            .map(|a| LoraWeights::from_adapter(a, "model"))
            .transpose()?;
        let model = Self::new_with_lora(&cfg, &w, "model", "lm_head", style, lora.as_ref())?;
        file.finish()?;
        if let Some(l) = &lora {
            l.finish()?;
        }
        Ok(model)
    }

    /// The model with every adapter folded into its weights (`W + scale ·
    /// B A`), the q/k/v and gate/up projections fused again: inference at
    /// the base model's speed. A quantized layer with an adapter becomes a
    /// dense f32 one.
    pub fn merge_lora(&self) -> Result<Self> {
        let mut out = self.clone();
        out.layers = self
            .layers
            .iter()
            .map(DecoderLayer::merge_lora)
            .collect::<Result<_>>()?;
        Ok(out)
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(DecoderLayer::has_lora)
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> DecoderCache {
        DecoderCache {
            layers: vec![KvCache::default(); self.layers.len()],
            key_valid: vec![Vec::new(); batch],
            ..Default::default()
        }
    }

    /// Token embeddings; every id must be below `vocab_size` (an id past
    /// the table is the caller's input, not a tensor fault).
    ///
    /// # Shapes
    /// `ids`: (B, T) u32 -> (B, T, D) in the compute dtype
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        crate::text::check_token_ids(ids, self.embed_rows)?;
        Ok(self.embed_tokens.forward(ids)?.to_dtype(self.dtype)?)
    }

    /// Runs new token ids through the model; see [`Self::forward_embeds`].
    pub fn forward(
        &self,
        ids: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut DecoderCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        self.forward_embeds(&self.embed(ids)?, valid, cache, logits)
    }

    /// Runs T new positions of each row after what `cache` holds, and
    /// appends them to it. `valid[b][i]` is false for padding (None: all real).
    ///
    /// # Shapes
    /// `embeds`: (B, T, D) -> logits f32 (B, T, V) for [`LogitsFor::All`],
    /// (B, 1, V) for [`LogitsFor::Last`]
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut DecoderCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        self.forward_embeds_with(embeds, valid, cache, logits, None)
    }

    /// [`Self::forward_embeds`] with `hook` run after every layer.
    ///
    /// # Shapes
    /// as [`Self::forward_embeds`]
    pub fn forward_embeds_with(
        &self,
        embeds: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut DecoderCache,
        logits: LogitsFor,
        hook: Option<&dyn LayerHook>,
    ) -> Result<Tensor> {
        let mut xs = self.hidden_states(embeds, valid, cache, hook, None)?;
        if logits == LogitsFor::Last {
            let t = xs.dim(1)?;
            // (B, T, D) -> (B, 1, D)
            xs = xs.narrow(1, t - 1, 1)?;
        }
        self.head(&xs)
    }

    /// [`Self::forward_embeds_with`] with the LM head run only at `rows`,
    /// flat `b·T + t` indices of the input positions. Training scores a
    /// few positions of each row (the answer), and the head, the widest
    /// matmul, would otherwise run over every position, the image rows
    /// included.
    ///
    /// # Shapes
    /// `embeds`: (B, T, D), `rows`: (n) u32 -> logits f32 (n, V)
    pub fn forward_embeds_at(
        &self,
        embeds: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut DecoderCache,
        rows: &Tensor,
        hook: Option<&dyn LayerHook>,
    ) -> Result<Tensor> {
        let xs = self.hidden_states(embeds, valid, cache, hook, None)?;
        let (b, t, d) = xs.dims3()?;
        // (B, T, D) -> (B·T, D) -> (n, D)
        let picked = xs.reshape((b * t, d))?.index_select(rows, 0)?;
        self.head(&picked)
    }

    /// One new token for each of B independent sequences, each holding its
    /// own one-row cache (continuous batching: sequences join and leave
    /// between steps, so their caches differ in length). The projections,
    /// MLPs and LM head run once over all B rows, which is what makes a
    /// batch cheaper than B single steps; attention runs per row against
    /// that row's keys.
    ///
    /// # Shapes
    /// `embeds`: (B, 1, D) -> logits f32 (B, V)
    pub fn step_many(&self, embeds: &Tensor, caches: &mut [&mut DecoderCache]) -> Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        if t != 1 || b != caches.len() || b == 0 {
            return Err(ModelError::Input(format!(
                "a batched step takes one new position per sequence: ({b}, {t}) positions for {} caches",
                caches.len()
            )));
        }
        if d != self.cfg.hidden_size {
            return Err(ModelError::Input(format!(
                "input embeddings are {d} wide, the decoder takes {}",
                self.cfg.hidden_size
            )));
        }
        let ctx = self.cfg.max_position_embeddings;
        let window = self.cfg.sliding_window;
        let mut positions = Vec::with_capacity(b);
        let mut masks = Vec::with_capacity(b);
        for cache in caches.iter_mut() {
            if cache.batch_size() != 1 || cache.layers.len() != self.layers.len() {
                return Err(ModelError::Input(format!(
                    "a batched step takes one-row caches; one holds {} rows",
                    cache.batch_size()
                )));
            }
            if cache.capture_attention {
                return Err(ModelError::Input(
                    "a batched step does not capture attention".into(),
                ));
            }
            let offset = cache.len();
            if offset + 1 > ctx {
                return Err(ModelError::Input(format!(
                    "{} tokens exceed the context window of {ctx} (max_position_embeddings)",
                    offset + 1
                )));
            }
            positions.push(vec![cache.key_valid[0].iter().filter(|&&v| v).count()]);
            cache.key_valid[0].push(true);
            masks.push(mask_if_needed(
                &cache.key_valid,
                offset,
                1,
                window,
                &self.device,
            )?);
        }
        // (B, 1, hd/2) each; (1, hd/2) when B = 1
        for (p, cache) in positions.iter_mut().zip(caches.iter()) {
            p[0] = shift(p[0], cache.rope_delta)?;
        }
        let (cos, sin) = self.rope.cos_sin(&positions, &self.device)?;
        let mut xs = embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut kvs: Vec<&mut KvCache> = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            xs = layer.forward_rows(&xs, &self.rope, &cos, &sin, &masks, &mut kvs)?;
        }
        // (B, 1, V) -> (B, V)
        Ok(self.head(&xs)?.squeeze(1)?)
    }

    /// Final norm and LM head.
    ///
    /// # Shapes
    /// `xs`: (..., D) -> logits f32 (..., V)
    fn head(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.norm.forward(xs)?;
        Ok(candle_core::Module::forward(&self.lm_head, &xs)?.to_dtype(DType::F32)?)
    }

    /// Qwen2-VL: the rope turned by M-RoPE sections over (temporal, height,
    /// width) positions ([`Rope::with_sections`]); see
    /// [`Self::forward_embeds_mrope`].
    pub fn with_mrope_section(mut self, section: &[usize]) -> Result<Self> {
        self.rope = self
            .rope
            .with_sections(section)
            .map_err(ModelError::Input)?;
        Ok(self)
    }

    /// [`Self::forward_embeds`] for one sequence whose rotary positions are
    /// given per M-RoPE axis (transformers' `get_rope_index`), and which
    /// sets `cache.rope_delta` so later tokens continue after the largest
    /// position (as transformers' `rope_deltas`).
    ///
    /// # Shapes
    /// `embeds`: (1, T, D), `axes`: one row of T positions per section ->
    /// logits as [`Self::forward_embeds`]
    pub fn forward_embeds_mrope(
        &self,
        embeds: &Tensor,
        axes: &[Vec<usize>],
        cache: &mut DecoderCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        let mut xs = self.hidden_states(embeds, None, cache, None, Some(axes))?;
        let next = axes.iter().flatten().max().map_or(0, |&m| m as i64 + 1);
        cache.rope_delta = next - cache.key_valid[0].iter().filter(|&&v| v).count() as i64;
        if logits == LogitsFor::Last {
            let t = xs.dim(1)?;
            // (1, T, D) -> (1, 1, D)
            xs = xs.narrow(1, t - 1, 1)?;
        }
        self.head(&xs)
    }

    /// The last layer's output (before the final norm) for T new
    /// positions after what `cache` holds, appended to it. `axes`: rotary
    /// positions per M-RoPE section for one sequence (else they count the
    /// real tokens, plus `cache.rope_delta`).
    ///
    /// # Shapes
    /// `embeds`: (B, T, D) -> (B, T, D)
    fn hidden_states(
        &self,
        embeds: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut DecoderCache,
        hook: Option<&dyn LayerHook>,
        axes: Option<&[Vec<usize>]>,
    ) -> Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        if d != self.cfg.hidden_size {
            return Err(ModelError::Input(format!(
                "input embeddings are {d} wide, the decoder takes {}",
                self.cfg.hidden_size
            )));
        }
        if t == 0 {
            return Err(ModelError::Input("no input positions".into()));
        }
        if cache.batch_size() != b || cache.layers.len() != self.layers.len() {
            return Err(ModelError::Input(format!(
                "cache holds {} rows, the input has {b}",
                cache.batch_size()
            )));
        }
        let offset = cache.len();
        let ctx = self.cfg.max_position_embeddings;
        if offset + t > ctx {
            return Err(ModelError::Input(format!(
                "{} tokens exceed the context window of {ctx} (max_position_embeddings)",
                offset + t
            )));
        }
        match valid {
            Some(v) if v.len() != b || v.iter().any(|row| row.len() != t) => {
                return Err(ModelError::Input(format!(
                    "padding mask is not ({b}, {t}) like the input"
                )))
            }
            _ => {}
        }
        // Positions count the real tokens before each column.
        let mut positions = Vec::with_capacity(b);
        for row in 0..b {
            let mut next = cache.key_valid[row].iter().filter(|&&v| v).count();
            let mut pos = Vec::with_capacity(t);
            for i in 0..t {
                let real = valid.is_none_or(|v| v[row][i]);
                pos.push(shift(next, cache.rope_delta)?);
                next += usize::from(real);
                cache.key_valid[row].push(real);
            }
            positions.push(pos);
        }
        // Rows with identical positions share one (T, hd/2) table.
        if positions.iter().all(|p| p == &positions[0]) {
            positions.truncate(1);
        }
        let (cos, sin) = match axes {
            Some(axes) if b == 1 && axes.iter().all(|a| a.len() == t) => {
                self.rope.cos_sin_axes(axes, &self.device)?
            }
            Some(axes) => {
                return Err(ModelError::Input(format!(
                    "M-RoPE positions are {} rows for a ({b}, {t}) input: one sequence, one row of {t} per axis",
                    axes.len()
                )))
            }
            None => self.rope.cos_sin(&positions, &self.device)?,
        };
        let window = self.cfg.sliding_window;
        let mask = mask_if_needed(&cache.key_valid, offset, t, window, &self.device)?;
        let inputs = AttentionInputs {
            cos,
            sin,
            mask,
            want_probs: cache.capture_attention,
        };
        cache.attention.clear();
        let mut xs = embeds.to_dtype(self.dtype)?;
        for (i, (layer, kv)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let (out, probs) = layer.forward(&xs, &self.rope, &inputs, kv)?;
            xs = out;
            if let Some(p) = probs {
                cache.attention.push(p);
            }
            if let Some(hook) = hook {
                xs = hook.after_layer(i, xs)?;
            }
        }
        Ok(xs)
    }
}

/// `position + delta` (the M-RoPE offset), refused below zero.
fn shift(position: usize, delta: i64) -> Result<usize> {
    usize::try_from(position as i64 + delta)
        .map_err(|_| ModelError::Input(format!("rotary position {position} + {delta} is negative")))
}
