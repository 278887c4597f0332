//! GGUF files (llama.cpp's format): metadata into a [`DecoderConfig`],
//! tensors by their HF names, and the one place where GGUF tensor names map
//! to HF ones (house rule 2).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};
use crate::gguf_scan;
use crate::nn::rope::{RopeConfig, RopeScaling, RopeStyle};
use crate::text::decoder_config::{DecoderConfig, DecoderKind};

/// An open GGUF file: metadata and tensor index read, tensor data read on
/// demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
    used: Mutex<BTreeSet<String>>,
}

impl GgufFile {
    /// Opens a GGUF file: its header is scanned under fixed bounds and its
    /// tensors' extents checked against their types and the file length
    /// (see `gguf_scan`) before candle's reader sees it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::file(path, e))?;
        let meta = file.metadata().map_err(|e| ModelError::file(path, e))?;
        if !meta.is_file() {
            return Err(ModelError::file(path, "not a regular file"));
        }
        let mut reader = BufReader::new(file);
        let header = gguf_scan::scan(&mut reader, meta.len(), path)?;
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| ModelError::file(path, e))?;
        let content = Content::read(&mut reader).map_err(|e| read_error(path, e))?;
        if content.tensor_data_offset != header.data_start {
            return Err(ModelError::file(
                path,
                format!(
                    "not a readable GGUF file: tensor data starts at byte {} by the header scan, {} by the reader",
                    header.data_start, content.tensor_data_offset
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.metadata().get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.meta_error(key, "is not a string")),
            None => Err(self.meta_error(key, "is missing")),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        Ok(match self.metadata().get(key) {
            None => None,
            Some(v) => Some(as_f64(v).ok_or_else(|| self.meta_error(key, "is not a number"))?),
        })
    }

    fn meta_error(&self, key: &str, what: &str) -> ModelError {
        ModelError::file(&self.path, format!("GGUF metadata {key} {what}"))
    }

    /// The decoder config from `{arch}.*` metadata, and the rope layout the
    /// file's q/k rows are stored in.
    pub fn decoder_config(&self) -> Result<(DecoderConfig, RopeStyle)> {
        let arch = self.architecture()?;
        let (kind, style) = match arch.as_str() {
            // llama.cpp's converter permutes llama q/k rows for its
            // interleaved rope; qwen2 files keep HF's layout (NeoX rope).
            "llama" => (DecoderKind::Llama, RopeStyle::Interleaved),
            "qwen2" => (DecoderKind::Qwen2, RopeStyle::HalfSplit),
            other => {
                return Err(ModelError::file(
                    &self.path,
                    format!("unsupported GGUF architecture '{other}' (glimpse reads llama, qwen2)"),
                ))
            }
        };
        let count = |key: &str| -> Result<Option<usize>> {
            let key = format!("{arch}.{key}");
            match self.number(&key)? {
                None => Ok(None),
                Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 => {
                    Ok(Some(v as usize))
                }
                Some(v) => Err(self.meta_error(&key, &format!("is {v}, not a count"))),
            }
        };
        let need = |key: &str| -> Result<usize> {
            count(key)?.ok_or_else(|| self.meta_error(&format!("{arch}.{key}"), "is missing"))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let kv_heads = count("attention.head_count_kv")?.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(self.meta_error(
                &format!("{arch}.attention.head_count_kv"),
                &format!("{kv_heads} does not divide head_count {heads}"),
            ));
        }
        let head_dim = count("attention.key_length")?.unwrap_or(hidden / heads);
        let vocab = match count("vocab_size")? {
            Some(v) => v,
            None => self
                .content
                .tensor_infos
                .get("token_embd.weight")
                .map(|i| i.shape.dims()[0])
                .ok_or_else(|| self.meta_error("token_embd.weight", "tensor is missing"))?,
        };
        let theta = self
            .number(&format!("{arch}.rope.freq_base"))?
            .unwrap_or(10000.0);
        let scaling = match self.metadata().get(&format!("{arch}.rope.scaling.type")) {
            Some(Value::String(t)) if t == "linear" => RopeScaling::Linear {
                factor: self
                    .number(&format!("{arch}.rope.scaling.factor"))?
                    .unwrap_or(1.0),
            },
            Some(Value::String(t)) if t != "none" => {
                return Err(self.meta_error(
                    &format!("{arch}.rope.scaling.type"),
                    &format!("'{t}' is not supported (none, linear)"),
                ))
            }
            _ => RopeScaling::Default,
        };
        let cfg = DecoderConfig {
            kind,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .number(&format!("{arch}.attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope: RopeConfig { theta, scaling },
            max_position_embeddings: need("context_length")?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            qkv_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            o_bias: self
                .content
                .tensor_infos
                .contains_key("blk.0.attn_output.bias"),
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: self
                .number("tokenizer.ggml.bos_token_id")?
                .map(|v| v as u32),
            eos_token_ids: self
                .number("tokenizer.ggml.eos_token_id")?
                .map(|v| vec![v as u32])
                .unwrap_or_default(),
        };
        // The same bounds as config.json's, named by the metadata key.
        cfg.validate()
            .map_err(|e| self.meta_error(&gguf_key(&arch, &e.field), &e.msg))?;
        Ok((cfg, style))
    }

    pub fn has_raw(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn has(&self, hf_name: &str) -> bool {
        gguf_name(hf_name).is_some_and(|n| self.content.tensor_infos.contains_key(&n))
    }

    /// The tensor stored for HF name `hf_name`, checked against `shape`.
    pub fn tensor(&self, hf_name: &str, shape: &[usize], device: &Device) -> Result<Arc<QTensor>> {
        let name = gguf_name(hf_name)
            .ok_or_else(|| ModelError::Input(format!("no GGUF name for tensor {hf_name}")))?;
        self.raw_tensor(&name, shape, device)
    }

    /// A tensor by its GGUF name.
    pub fn raw_tensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<Arc<QTensor>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::Weights {
                path: self.path.clone(),
                msg: format!("tensor {name} is missing"),
            })?;
        if info.shape.dims() != shape {
            return Err(ModelError::Weights {
                path: self.path.clone(),
                msg: format!(
                    "tensor {name} is misshaped (file {:?}, model wants {shape:?})",
                    info.shape.dims()
                ),
            });
        }
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let t = info
            .read(&mut *reader, self.content.tensor_data_offset, device)
            .map_err(|e| {
                ModelError::file(
                    &self.path,
                    format!("tensor {name}: {}", crate::error::candle_message(&e)),
                )
            })?;
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        Ok(Arc::new(t))
    }

    /// Every decoder weight dequantized to f32 under its HF name, in HF's
    /// layout: llama q/k rows un-permuted back from llama.cpp's interleaved
    /// order, so the tensors train and export as a `LlamaForCausalLM`
    /// checkpoint does (the VLM runs the half-split rope). With a tied LM
    /// head there is no `lm_head.weight`. Every tensor of the file must be
    /// taken ([`Self::finish`]).
    pub fn dense_hf_tensors(
        &self,
        device: &Device,
    ) -> Result<(DecoderConfig, std::collections::BTreeMap<String, Tensor>)> {
        let (cfg, style) = self.decoder_config()?;
        let (d, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (h, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let mut want: Vec<(String, Vec<usize>, Option<usize>)> = vec![
            (
                "model.embed_tokens.weight".into(),
                vec![cfg.vocab_size, d],
                None,
            ),
            ("model.norm.weight".into(), vec![d], None),
        ];
        if !cfg.tie_word_embeddings || self.has("lm_head.weight") {
            want.push(("lm_head.weight".into(), vec![cfg.vocab_size, d], None));
        }
        let interleaved = style == RopeStyle::Interleaved;
        for l in 0..cfg.num_hidden_layers {
            let p = |m: &str| format!("model.layers.{l}.{m}");
            let heads = |n: usize| interleaved.then_some(n);
            want.push((p("self_attn.q_proj.weight"), vec![h * hd, d], heads(h)));
            want.push((p("self_attn.k_proj.weight"), vec![hkv * hd, d], heads(hkv)));
            want.push((p("self_attn.v_proj.weight"), vec![hkv * hd, d], None));
            want.push((p("self_attn.o_proj.weight"), vec![d, h * hd], None));
            if cfg.qkv_bias {
                want.push((p("self_attn.q_proj.bias"), vec![h * hd], heads(h)));
                want.push((p("self_attn.k_proj.bias"), vec![hkv * hd], heads(hkv)));
                want.push((p("self_attn.v_proj.bias"), vec![hkv * hd], None));
            }
            want.push((p("mlp.gate_proj.weight"), vec![i, d], None));
            want.push((p("mlp.up_proj.weight"), vec![i, d], None));
            want.push((p("mlp.down_proj.weight"), vec![d, i], None));
            want.push((p("input_layernorm.weight"), vec![d], None));
            want.push((p("post_attention_layernorm.weight"), vec![d], None));
        }
        let mut out = std::collections::BTreeMap::new();
        for (name, shape, permuted_heads) in want {
            let q = self.tensor(&name, &shape, device)?;
            let mut t = q.dequantize(device).map_err(|e| {
                ModelError::file(
                    &self.path,
                    format!("tensor {name}: {}", crate::error::candle_message(&e)),
                )
            })?;
            if let Some(n) = permuted_heads {
                t = unpermute_rows(&t, n)?;
            }
            out.insert(name, t);
        }
        self.finish()?;
        Ok((cfg, out))
    }

    /// Fails naming every tensor of the file the model did not take.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut unexpected: Vec<&String> = self
            .content
            .tensor_infos
            .keys()
            .filter(|n| !used.contains(*n))
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        let shown: Vec<&str> = unexpected.iter().take(8).map(|s| s.as_str()).collect();
        Err(ModelError::Weights {
            path: self.path.clone(),
            msg: format!(
                "unexpected {} tensors the model does not use: {}",
                unexpected.len(),
                shown.join(", ")
            ),
        })
    }
}

/// Undoes llama.cpp's q/k row order: within each of `heads` heads it stores
/// row pairs (j, j + hd/2) next to each other for its interleaved rope; HF
/// keeps the two halves apart.
///
/// # Shapes
/// `t`: (heads·hd, in) or (heads·hd) -> the same
fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    // (heads, hd/2, 2, rest) -> (heads, 2, hd/2, rest)
    Ok(t.reshape((heads, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The GGUF metadata key of a [`DecoderConfig`] field, for messages.
fn gguf_key(arch: &str, field: &str) -> String {
    let key = match field {
        "vocab_size" => "vocab_size",
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "max_position_embeddings" => "context_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "rope_scaling.factor" => "rope.scaling.factor",
        other => return other.to_string(),
    };
    format!("{arch}.{key}")
}

/// HF parameter name -> GGUF tensor name, for the Llama family.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

fn as_f64(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// candle reports an unknown ggml type as a bare number; name it.
fn read_error(path: &Path, e: candle_core::Error) -> ModelError {
    let msg = crate::error::candle_message(&e);
    if let Some(id) = msg
        .strip_prefix("unknown dtype for tensor ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<u32>().ok())
    {
        return ModelError::file(
            path,
            format!(
                "unsupported GGUF tensor type {} (ggml type {id}); glimpse reads F32, F16, BF16, \
                 Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K",
                ggml_type_name(id)
            ),
        );
    }
    ModelError::file(path, format!("not a readable GGUF file: {msg}"))
}

pub(crate) fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// The dtypes whose tensors stay dense (not block-quantized) at load.
pub fn is_dense(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}
