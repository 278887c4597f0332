//! `config.json` of HF Llama-family causal LMs (`llama`, `mistral`, `qwen2`),
//! with transformers' defaults for each family in one place.
//!
//! Checkpoints in the wild carry rope settings two ways: transformers 4.x
//! writes top-level `rope_theta` + `rope_scaling`, 5.x writes one
//! `rope_parameters` object. Both resolve to the same [`RopeConfig`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConfigError, ModelError, Result};
use crate::limits;
use crate::nn::rope::{RopeConfig, RopeScaling};

/// The architecture variants of the family that change the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    Llama,
    Mistral,
    /// Qwen2: bias on q, k and v (not on o).
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub kind: DecoderKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` sets both).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Mistral's local attention span, when set.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    /// A small Llama for tests: 2 layers, width 64, grouped-query heads.
    pub fn tiny() -> Self {
        Self {
            kind: DecoderKind::Llama,
            vocab_size: 96,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-6,
            rope: RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }

    /// Reads `config.json`; `path` is what errors name.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = ModelError::read_config(path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&value).map_err(|e| e.at(path))
    }

    /// Resolves an HF config object (a whole `config.json`, or the
    /// `text_config` of a multimodal one), every size checked against
    /// [`crate::limits`] before anything uses it.
    pub fn from_json(value: &Value) -> std::result::Result<Self, ConfigError> {
        let raw: RawDecoder = limits::fields(value)?;
        let model_type = raw.model_type.as_deref().unwrap_or("llama");
        let (kind, d) = match model_type {
            "llama" => (DecoderKind::Llama, LLAMA),
            "mistral" => (DecoderKind::Mistral, MISTRAL),
            "qwen2" => (DecoderKind::Qwen2, QWEN2),
            other => {
                return Err(ConfigError::new(
                    "model_type",
                    format!("'{other}' is unknown (glimpse's decoder reads llama, mistral, qwen2)"),
                ))
            }
        };
        let hidden_size = limits::size(
            "hidden_size",
            raw.hidden_size.unwrap_or(d.hidden),
            limits::MAX_HIDDEN,
        )?;
        let heads = limits::size(
            "num_attention_heads",
            raw.num_attention_heads.unwrap_or(d.heads),
            limits::MAX_HEADS,
        )?;
        let kv_heads = limits::size(
            "num_key_value_heads",
            raw.num_key_value_heads
                .unwrap_or(d.kv_heads.unwrap_or(heads)),
            limits::MAX_HEADS,
        )?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(ConfigError::new(
                "num_attention_heads",
                format!("{heads} is not a multiple of num_key_value_heads {kv_heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(h) => h,
            None if hidden_size.is_multiple_of(heads) => hidden_size / heads,
            None => {
                return Err(ConfigError::new(
                    "hidden_size",
                    format!("{hidden_size} is not divisible by num_attention_heads {heads}"),
                ))
            }
        };
        let act = raw.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(ConfigError::new(
                "hidden_act",
                format!("'{act}' is not supported (SwiGLU needs silu)"),
            ));
        }
        let rope = rope_config(value)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match kind {
            DecoderKind::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let sliding_window = match kind {
            DecoderKind::Mistral => raw.sliding_window,
            // Qwen2 only slides with `use_sliding_window`, which no released
            // dense checkpoint sets; refuse rather than silently ignore it.
            DecoderKind::Qwen2 if raw.use_sliding_window.unwrap_or(false) => {
                return Err(ConfigError::new(
                    "use_sliding_window",
                    "true is not supported for qwen2",
                ))
            }
            _ => None,
        };
        let cfg = Self {
            kind,
            vocab_size: raw.vocab_size.unwrap_or(d.vocab),
            hidden_size,
            intermediate_size: raw.intermediate_size.unwrap_or(d.intermediate),
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(32),
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(d.positions),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: ids(&raw.eos_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every size in range and every weight's element count representable
    /// (see [`crate::limits`]); fields are named as `config.json` names them.
    /// GGUF metadata goes through the same check ([`crate::gguf`] renames
    /// the fields to its keys).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        use limits::{size, MAX_HEADS, MAX_HEAD_DIM, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS};
        let d = size("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        let v = size("vocab_size", self.vocab_size, limits::MAX_VOCAB)?;
        let i = size(
            "intermediate_size",
            self.intermediate_size,
            MAX_INTERMEDIATE,
        )?;
        size("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        let h = size("num_attention_heads", self.num_attention_heads, MAX_HEADS)?;
        let hkv = size("num_key_value_heads", self.num_key_value_heads, MAX_HEADS)?;
        if !h.is_multiple_of(hkv) {
            return Err(ConfigError::new(
                "num_attention_heads",
                format!("{h} is not a multiple of num_key_value_heads {hkv}"),
            ));
        }
        let hd = size("head_dim", self.head_dim, MAX_HEAD_DIM)?;
        if !hd.is_multiple_of(2) {
            return Err(ConfigError::new(
                "head_dim",
                format!("{hd} must be even for rotary embeddings"),
            ));
        }
        size(
            "max_position_embeddings",
            self.max_position_embeddings,
            limits::MAX_POSITIONS,
        )?;
        if let Some(w) = self.sliding_window {
            size("sliding_window", w, limits::MAX_POSITIONS)?;
        }
        limits::positive("rms_norm_eps", self.rms_norm_eps)?;
        limits::positive("rope_theta", self.rope.theta)?;
        match self.rope.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                limits::positive("rope_scaling.factor", factor)?;
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                limits::positive("rope_scaling.factor", factor)?;
                limits::positive("rope_scaling.low_freq_factor", low_freq_factor)?;
                limits::positive("rope_scaling.high_freq_factor", high_freq_factor)?;
                limits::positive(
                    "rope_scaling.original_max_position_embeddings",
                    original_max_position_embeddings,
                )?;
                // The blend divides by their difference.
                if high_freq_factor <= low_freq_factor {
                    return Err(ConfigError::new(
                        "rope_scaling.high_freq_factor",
                        format!(
                            "{high_freq_factor} must be above low_freq_factor {low_freq_factor}"
                        ),
                    ));
                }
            }
        }
        limits::elems("vocab_size", "the token embeddings", &[v, d])?;
        limits::elems("intermediate_size", "each MLP projection", &[i, d])?;
        limits::elems("num_attention_heads", "each query projection", &[h, hd, d])?;
        limits::params(
            "hidden_size",
            &format!(
                "{d} with vocab_size {v}, intermediate_size {i} and num_hidden_layers {}",
                self.num_hidden_layers
            ),
            self.num_params(),
        )?;
        Ok(())
    }

    /// Parameters of the model this config describes.
    /// Only on sizes [`Self::validate`] has bounded (no overflow then).
    pub(crate) fn num_params(&self) -> u128 {
        let [d, i, v] =
            [self.hidden_size, self.intermediate_size, self.vocab_size].map(|x| x as u128);
        let q = (self.num_attention_heads * self.head_dim) as u128;
        let kv = (self.num_key_value_heads * self.head_dim) as u128;
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        // q and o, k and v, the three MLP matrices, two norms
        let layer = 2 * d * q + 2 * d * kv + 3 * d * i + 2 * d;
        heads * v * d + self.num_hidden_layers as u128 * layer + d
    }

    /// The config as transformers 5 writes it (`rope_parameters`), for
    /// models glimpse saves; [`Self::from_json`] reads it back unchanged.
    pub fn to_hf_json(&self) -> Value {
        let model_type = match self.kind {
            DecoderKind::Llama => "llama",
            DecoderKind::Mistral => "mistral",
            DecoderKind::Qwen2 => "qwen2",
        };
        let mut rope = serde_json::json!({"rope_theta": self.rope.theta});
        match self.rope.scaling {
            RopeScaling::Default => rope["rope_type"] = "default".into(),
            RopeScaling::Linear { factor } => {
                rope["rope_type"] = "linear".into();
                rope["factor"] = factor.into();
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                rope["rope_type"] = "llama3".into();
                rope["factor"] = factor.into();
                rope["low_freq_factor"] = low_freq_factor.into();
                rope["high_freq_factor"] = high_freq_factor.into();
                rope["original_max_position_embeddings"] = original_max_position_embeddings.into();
            }
        }
        serde_json::json!({
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.o_bias,
            "mlp_bias": self.mlp_bias,
            "sliding_window": self.sliding_window,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
        })
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// `eos_token_id` is an int or a list of ints in HF files.
pub fn ids(value: &Option<Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Deserialize)]
struct RawDecoder {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
}

/// transformers' defaults for one model type.
struct Defaults {
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: Option<usize>,
    positions: usize,
}

const LLAMA: Defaults = Defaults {
    vocab: 32000,
    hidden: 4096,
    intermediate: 11008,
    heads: 32,
    kv_heads: None,
    positions: 2048,
};
const MISTRAL: Defaults = Defaults {
    vocab: 32000,
    hidden: 4096,
    intermediate: 14336,
    heads: 32,
    kv_heads: Some(8),
    positions: 4096 * 32,
};
const QWEN2: Defaults = Defaults {
    vocab: 151936,
    hidden: 4096,
    intermediate: 22016,
    heads: 32,
    kv_heads: Some(32),
    positions: 32768,
};

/// Rope settings from either config style. 5.x: `rope_parameters`
/// {rope_type, rope_theta, factor, ...}; 4.x: `rope_theta` + `rope_scaling`
/// {type | rope_type, factor, ...} (null when unscaled).
fn rope_config(value: &Value) -> std::result::Result<RopeConfig, ConfigError> {
    let params = value.get("rope_parameters").filter(|v| v.is_object());
    let scaling = params.or_else(|| value.get("rope_scaling").filter(|v| v.is_object()));
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| value.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10000.0);
    let Some(s) = scaling else {
        return Ok(RopeConfig {
            theta,
            scaling: RopeScaling::Default,
        });
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let section = if params.is_some() {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let num = |key: &str| -> std::result::Result<f64, ConfigError> {
        s.get(key).and_then(Value::as_f64).ok_or_else(|| {
            ConfigError::new(
                format!("{section}.{key}"),
                format!("is missing or not a number (rope type '{kind}' needs it)"),
            )
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(ConfigError::new(
                format!("{section}.rope_type"),
                format!("'{other}' is not supported (default, linear, llama3)"),
            ))
        }
    };
    Ok(RopeConfig { theta, scaling })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_rope_styles_resolve_alike() {
        let v4 = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}});
        let v5 = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}});
        let a = DecoderConfig::from_json(&v4).unwrap();
        let b = DecoderConfig::from_json(&v5).unwrap();
        assert_eq!(a.rope, b.rope);
        assert_eq!(a.rope.theta, 500000.0);
        assert!(matches!(a.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn qwen2_has_qkv_bias_and_defaults() {
        let c = DecoderConfig::from_json(&json!({"model_type": "qwen2", "eos_token_id": [1, 2]}))
            .unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.vocab_size, 151936);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = DecoderConfig::from_json(&json!({"model_type": "gpt2"})).unwrap_err();
        assert_eq!(e.field, "model_type");
        assert!(e.to_string().contains("'gpt2' is unknown"), "{e}");
        let e =
            DecoderConfig::from_json(&json!({"num_attention_heads": 6, "num_key_value_heads": 4}))
                .unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        let e = DecoderConfig::from_json(&json!({"rope_scaling": {"type": "yarn", "factor": 2.0}}))
            .unwrap_err();
        assert_eq!(e.field, "rope_scaling.rope_type");
        assert!(e.to_string().contains("'yarn'"), "{e}");
        let e = DecoderConfig::from_json(&json!({"hidden_size": -64})).unwrap_err();
        assert_eq!(e.field, "hidden_size", "{e}");
    }
}
