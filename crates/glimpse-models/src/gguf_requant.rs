//! Rewrites a GGUF decoder with other block types: every 2-D weight is
//! dequantized to f32 and quantized again by candle's quantizers (ports of
//! ggml's reference `quantize_row_*`), metadata (config, tokenizer) and 1-D
//! tensors are copied as they are. This is how glimpse makes the Q8_0 and
//! K-quant variants of its test model from the one Q4_1 file it fetches
//! (`scripts/make_kquant_smollm2.sh`, the K-quant decoder test): the
//! weights are the Q4_1 file's, rounded again.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{ModelError, Result};

/// Which block type each weight gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequantPlan {
    /// Every 2-D weight Q8_0.
    Q8_0,
    /// llama.cpp's Q4_K_M rule (`llama_tensor_get_type`): Q6_K for the
    /// output head and for `attn_v` / `ffn_down` in the first and last
    /// eighth of the layers and every third between, Q4_K for the rest.
    /// Rows whose length is not a multiple of 256 cannot hold K blocks;
    /// those weights get Q8_0 (llama.cpp picks Q5_0 / Q8_0 there), so a
    /// model with a 576-wide hidden state like SmolLM2-135M is K-quant in
    /// its `ffn_down` weights only.
    Q4KM,
}

impl RequantPlan {
    /// `q8_0` or `q4_k_m`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Self::Q8_0),
            "q4_k_m" => Ok(Self::Q4KM),
            _ => Err(ModelError::Input(format!(
                "unknown requantization plan {name:?}: expected q8_0 or q4_k_m"
            ))),
        }
    }

    /// File name tag, as llama.cpp names its outputs.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4KM => "Q4_K_M",
        }
    }

    /// The block type of weight `name` (GGUF name) with rows of `k` values
    /// in a model of `layers` blocks.
    fn dtype(self, name: &str, k: usize, layers: usize) -> GgmlDType {
        let want = match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4KM => {
                let layer = name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok());
                let more_bits =
                    |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
                let is = |s: &str| name.contains(s);
                match layer {
                    _ if name == "output.weight" => GgmlDType::Q6K,
                    Some(i) if (is("attn_v") || is("ffn_down")) && more_bits(i) => GgmlDType::Q6K,
                    _ => GgmlDType::Q4K,
                }
            }
        };
        if k.is_multiple_of(want.block_size()) {
            want
        } else {
            GgmlDType::Q8_0
        }
    }
}

/// Writes `src` with its weights requantized by `plan` to `dst`; returns
/// each tensor's name and new block type, in file order.
pub fn requantize(src: &Path, dst: &Path, plan: RequantPlan) -> Result<Vec<(String, GgmlDType)>> {
    let what = |e: candle_core::Error| ModelError::file(src, e);
    let mut reader = std::fs::File::open(src).map_err(|e| ModelError::file(src, e))?;
    let content = gguf_file::Content::read(&mut reader).map_err(what)?;
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(ModelError::file(src, "no general.architecture")),
    };
    let layers = match content.metadata.get(&format!("{arch}.block_count")) {
        Some(v) => v.to_u32().map_err(what)? as usize,
        None => return Err(ModelError::file(src, format!("no {arch}.block_count"))),
    };
    // File order, so the output lists its tensors as the input does.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors = Vec::with_capacity(names.len());
    let mut types = Vec::with_capacity(names.len());
    for name in names {
        let t = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(what)?;
        let t = match t.shape().dims() {
            &[_, k] => {
                let dtype = plan.dtype(name, k, layers);
                if dtype == t.dtype() {
                    t
                } else {
                    let dense = t.dequantize(&Device::Cpu).map_err(what)?;
                    QTensor::quantize(&dense, dtype).map_err(what)?
                }
            }
            _ => t,
        };
        types.push((name.clone(), t.dtype()));
        tensors.push((name.as_str(), t));
    }
    let meta: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    // Written beside `dst` and renamed, so a killed run leaves no half file.
    let tmp = dst.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&tmp).map_err(|e| ModelError::file(&tmp, e))?;
    gguf_file::write(&mut out, &meta, &refs).map_err(|e| ModelError::file(&tmp, e))?;
    std::fs::rename(&tmp, dst).map_err(|e| ModelError::file(dst, e))?;
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_rule_and_fallback() {
        let p = RequantPlan::Q4KM;
        // 30 layers: more bits below 3, from 26, and at 5, 8, ...
        assert_eq!(p.dtype("blk.0.ffn_down.weight", 1536, 30), GgmlDType::Q6K);
        assert_eq!(p.dtype("blk.3.ffn_down.weight", 1536, 30), GgmlDType::Q4K);
        assert_eq!(p.dtype("blk.5.attn_v.weight", 1536, 30), GgmlDType::Q6K);
        assert_eq!(p.dtype("blk.26.ffn_down.weight", 1536, 30), GgmlDType::Q6K);
        assert_eq!(p.dtype("blk.4.ffn_up.weight", 512, 30), GgmlDType::Q4K);
        assert_eq!(p.dtype("output.weight", 512, 30), GgmlDType::Q6K);
        // 576-wide rows hold no 256-value K blocks
        assert_eq!(p.dtype("blk.4.ffn_up.weight", 576, 30), GgmlDType::Q8_0);
        assert_eq!(
            RequantPlan::Q8_0.dtype("blk.4.ffn_up.weight", 576, 30),
            GgmlDType::Q8_0
        );
        assert!(RequantPlan::parse("Q4_K_M").is_ok());
        let err = RequantPlan::parse("q3").unwrap_err().to_string();
        assert!(err.contains("q3"), "{err}");
    }
}
