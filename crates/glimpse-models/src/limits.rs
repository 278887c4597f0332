//! Bounds on what a config may ask for, checked before anything the config
//! sizes is allocated.
//!
//! A config file is input like any other: `hidden_size` = 2⁶³ or
//! `num_hidden_layers` = 10¹² would otherwise reach an allocation (or a
//! loop) before any checkpoint is compared with it. The bounds sit far above
//! every released model, so they refuse only nonsense; products of sizes
//! (a weight's element count) are computed with checked arithmetic, so no
//! combination of in-range fields overflows either.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ConfigError;

/// Model width. Largest released: 16384 (Llama 3.1 405B).
pub const MAX_HIDDEN: usize = 1 << 16;
/// MLP width. Largest released: 53248 (Llama 3.1 405B).
pub const MAX_INTERMEDIATE: usize = 1 << 18;
/// Transformer layers. Largest released: 126 (Llama 3.1 405B).
pub const MAX_LAYERS: usize = 1024;
/// Attention heads. Largest released: 128.
pub const MAX_HEADS: usize = 1024;
/// Width of one head. Largest released: 256.
pub const MAX_HEAD_DIM: usize = 1024;
/// Vocabulary. Largest released: 262144 (Gemma 3).
pub const MAX_VOCAB: usize = 1 << 24;
/// Context positions. Longest released: 10485760 (Llama 4 Scout). The
/// decoder computes rotary tables only for the positions a forward uses,
/// so this bounds the number, not an allocation.
pub const MAX_POSITIONS: usize = 1 << 24;
/// Tower input side in pixels. Largest released towers take 896-1536.
pub const MAX_IMAGE_SIZE: usize = 8192;
/// Patches per image at the trained resolution (a 256 × 256 grid; the
/// position table has this many rows). Largest released: 64² = 4096.
pub const MAX_PATCHES: usize = 1 << 16;
/// Image channels (3 in every released tower).
pub const MAX_CHANNELS: usize = 64;
/// Tokens a projector emits per image (latents, queries).
pub const MAX_IMAGE_TOKENS: usize = 1 << 16;
/// Frames a video model reads at once (its temporal position table's
/// rows). Released video models sample 8-768.
pub const MAX_FRAMES: usize = 1 << 12;
/// Elements of one weight tensor. Largest released: 128256 × 16384 ≈ 2.1·10⁹
/// (Llama 3.1 405B's embeddings).
pub const MAX_TENSOR_ELEMS: usize = 1 << 32;

/// Parameters of a whole model. Largest released dense model: 4.05·10¹¹
/// (Llama 3.1 405B); 2⁴⁰ ≈ 1.1·10¹² parameters would be 4 TiB in f32.
pub const MAX_PARAMS: u128 = 1 << 40;

/// A model's parameter count, refused past [`MAX_PARAMS`]; `field` and
/// `sizes` say what made it (the per-field bounds alone allow 1024 layers
/// of the widest layer).
pub(crate) fn params(field: &str, sizes: &str, count: u128) -> Result<u128, ConfigError> {
    if count > MAX_PARAMS {
        return Err(ConfigError::new(
            field,
            format!(
                "{sizes} makes {count} parameters, above glimpse's limit of {MAX_PARAMS} (far beyond any released model)"
            ),
        ));
    }
    Ok(count)
}

/// `value` in 1..=`max`.
pub(crate) fn size(field: &str, value: usize, max: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(field, "is 0; it must be at least 1"));
    }
    if value > max {
        return Err(ConfigError::new(
            field,
            format!("is {value}, above glimpse's limit of {max} (far beyond any released model)"),
        ));
    }
    Ok(value)
}

/// A finite number above 0 (epsilons, rope bases and factors): a negative
/// or NaN epsilon turns every normalised value into NaN.
pub(crate) fn positive(field: &str, value: f64) -> Result<f64, ConfigError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(ConfigError::new(
            field,
            format!("is {value}; it must be a finite number above 0"),
        ));
    }
    Ok(value)
}

/// The element count of a weight of shape `dims`, refused when it
/// overflows or passes [`MAX_TENSOR_ELEMS`]. `field` names what sized it.
pub(crate) fn elems(field: &str, what: &str, dims: &[usize]) -> Result<usize, ConfigError> {
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMS);
    n.ok_or_else(|| {
        ConfigError::new(
            field,
            format!(
                "makes {what} {dims:?}, more than glimpse's limit of {MAX_TENSOR_ELEMS} elements per weight"
            ),
        )
    })
}

/// Deserializes a config object; a field of the wrong type or range is
/// named (serde's message alone says "expected usize" without the key).
pub(crate) fn fields<T: DeserializeOwned>(value: &Value) -> Result<T, ConfigError> {
    serde_json::from_value(value.clone()).map_err(|e| {
        let culprit = value.as_object().and_then(|obj| {
            obj.iter().find_map(|(key, v)| {
                let alone = Value::Object([(key.clone(), v.clone())].into_iter().collect());
                serde_json::from_value::<T>(alone)
                    .err()
                    .map(|e| ConfigError::new(key.clone(), format!("is not valid: {e}")))
            })
        });
        culprit.unwrap_or_else(|| ConfigError::new("(object)", format!("is not valid: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field() {
        assert_eq!(size("x", 3, 4), Ok(3));
        assert!(size("hidden_size", 0, 4)
            .unwrap_err()
            .to_string()
            .starts_with("hidden_size is 0"));
        assert!(size("n", 5, 4)
            .unwrap_err()
            .to_string()
            .contains("limit of 4"));
        for bad in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
            assert!(positive("eps", bad).is_err(), "{bad}");
        }
        assert!(elems("vocab_size", "the embedding", &[usize::MAX, 2]).is_err());
        assert_eq!(elems("v", "w", &[3, 4]), Ok(12));
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Raw {
            a: Option<usize>,
            b: Option<usize>,
        }
        let e = fields::<Raw>(&serde_json::json!({"a": 1, "b": -3})).unwrap_err();
        assert_eq!(e.field, "b", "{e}");
    }
}
