//! PEFT's on-disk adapter: `adapter_config.json` and
//! `adapter_model.safetensors`, whose tensors are named
//! `base_model.model.<module path>.lora_A.weight` (r, in) and
//! `….lora_B.weight` (out, r), the module path being the wrapped
//! transformers model's (`model.layers.0.self_attn.q_proj` for
//! `LlamaForCausalLM`, `model.language_model.layers.0…` for transformers 5
//! `LlavaForConditionalGeneration`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::lora::config::LoraConfig;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What PEFT's `PeftModel` puts before the wrapped model's module paths.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Largest `adapter_model.safetensors` read: a rank-256 adapter on every
/// linear layer of a 70B model is about 3.3 GB in f32.
pub const MAX_ADAPTER_BYTES: u64 = 4 << 30;

const SUFFIX_A: &str = ".lora_A.weight";
const SUFFIX_B: &str = ".lora_B.weight";

/// An adapter as PEFT saved it.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: LoraConfig,
    /// By module path without [`PEFT_PREFIX`]
    /// (`model.layers.0.self_attn.q_proj.lora_A.weight`), as stored.
    pub tensors: BTreeMap<String, Tensor>,
}

/// Whether `path` is a PEFT adapter directory rather than a model: it holds
/// `adapter_config.json` and no `config.json`.
pub fn is_adapter_dir(path: &Path) -> bool {
    path.is_dir() && path.join(ADAPTER_CONFIG).exists() && !path.join("config.json").exists()
}

/// `name` is a LoRA factor (`….lora_A.weight` or `….lora_B.weight`).
pub fn is_lora_tensor(name: &str) -> bool {
    name.ends_with(SUFFIX_A) || name.ends_with(SUFFIX_B)
}

/// The module a LoRA factor belongs to, and whether it is A.
fn split_name(name: &str) -> Option<(&str, bool)> {
    if let Some(m) = name.strip_suffix(SUFFIX_A) {
        Some((m, true))
    } else {
        name.strip_suffix(SUFFIX_B).map(|m| (m, false))
    }
}

/// The base model an adapter names (`base_model_name_or_path`): an
/// absolute path, or one relative to the adapter's directory. glimpse does
/// not download hub ids, so a name that is not on disk is an error that
/// says how to give the base instead.
pub fn resolve_base(dir: &Path, config: &LoraConfig) -> Result<PathBuf> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let Some(base) = config.base_model_name_or_path.as_deref() else {
        return Err(ModelError::config(
            cfg_path,
            "base_model_name_or_path is null; give the base model with --model and this adapter with --lora",
        ));
    };
    let p = Path::new(base);
    let resolved = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    if std::fs::metadata(&resolved).is_err() {
        return Err(ModelError::config(
            cfg_path,
            format!(
                "base_model_name_or_path \"{base}\": no model at {} (a relative path is read from the adapter's directory; glimpse does not download hub models: give the base with --model and this adapter with --lora)",
                resolved.display()
            ),
        ));
    }
    Ok(resolved)
}

impl Adapter {
    /// Reads a PEFT adapter directory: the config strictly, then every
    /// tensor, each a LoRA factor of rank `r` with its partner present.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::file(dir, "adapter directory not found"));
        }
        let config = LoraConfig::from_file(&dir.join(ADAPTER_CONFIG))?;
        let path = dir.join(ADAPTER_WEIGHTS);
        if std::fs::metadata(&path).is_err() {
            let bin = dir.join("adapter_model.bin");
            if bin.is_file() {
                return Err(ModelError::file(
                    bin,
                    "PyTorch pickle adapters are not loaded (they can run code); save the adapter with safe_serialization=True",
                ));
            }
            return Err(ModelError::file(&path, "not found"));
        }
        let bytes = glimpse_data::files::read_bounded(&path, MAX_ADAPTER_BYTES, "adapter")
            .map_err(|e| ModelError::file(&path, e))?;
        let loaded: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| {
                ModelError::file(
                    &path,
                    format!(
                        "not a valid safetensors file: {}",
                        crate::error::candle_message(&e)
                    ),
                )
            })?;
        let mut tensors = BTreeMap::new();
        for (name, t) in loaded {
            let Some(short) = name.strip_prefix(PEFT_PREFIX) else {
                return Err(ModelError::Weights {
                    path,
                    msg: format!(
                        "tensor {name} is not under {PEFT_PREFIX} (PEFT's names for a LoRA adapter)"
                    ),
                });
            };
            if !matches!(
                t.dtype(),
                DType::F16 | DType::BF16 | DType::F32 | DType::F64
            ) {
                return Err(ModelError::Weights {
                    path,
                    msg: format!(
                        "tensor {name} is stored as {:?}, not a float type",
                        t.dtype()
                    ),
                });
            }
            tensors.insert(short.to_string(), t);
        }
        check_factors(&tensors, config.r, |n| format!("{PEFT_PREFIX}{n}")).map_err(|msg| {
            ModelError::Weights {
                path: path.clone(),
                msg,
            }
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tensors,
        })
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(ADAPTER_WEIGHTS)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(ADAPTER_CONFIG)
    }

    /// The base model the config names ([`resolve_base`]).
    pub fn base_path(&self) -> Result<PathBuf> {
        resolve_base(&self.dir, &self.config)
    }
}

/// [`Adapter::load`].
pub fn load_adapter(dir: &Path, device: &Device) -> Result<Adapter> {
    Adapter::load(dir, device)
}

/// Every name is a LoRA factor of rank `r` whose partner is there:
/// A (r, in), B (out, r). `shown` turns a name into what the message says.
fn check_factors(
    tensors: &BTreeMap<String, Tensor>,
    r: usize,
    shown: impl Fn(&str) -> String,
) -> std::result::Result<(), String> {
    if tensors.is_empty() {
        return Err("holds no tensors".into());
    }
    for (name, t) in tensors {
        let Some((module, is_a)) = split_name(name) else {
            return Err(format!(
                "tensor {} is not a LoRA factor (lora_A / lora_B); glimpse does not load modules_to_save, DoRA magnitudes or adapter biases",
                shown(name)
            ));
        };
        let dims = t.dims();
        let fits = match (is_a, dims) {
            (true, [rows, cols]) => *rows == r && *cols > 0,
            (false, [rows, cols]) => *cols == r && *rows > 0,
            _ => false,
        };
        if !fits {
            let want = if is_a { "(r, in)" } else { "(out, r)" };
            return Err(format!(
                "tensor {} has shape {dims:?}; a LoRA {} factor is {want} with r = {r}",
                shown(name),
                if is_a { "A" } else { "B" }
            ));
        }
        let partner = format!("{module}{}", if is_a { SUFFIX_B } else { SUFFIX_A });
        if !tensors.contains_key(&partner) {
            return Err(format!(
                "tensor {} is missing (its partner {} is there)",
                shown(&partner),
                shown(name)
            ));
        }
    }
    Ok(())
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` as PEFT
/// does: `tensors` by module path (`model.layers.0.self_attn.q_proj.lora_A.weight`,
/// see [`crate::lora::LoraWeights::to_peft`]) are stored under
/// `base_model.model.` in their dtype. Each file is written to a temporary
/// name and renamed, so a reader never sees half an adapter file.
pub fn save_adapter(
    dir: &Path,
    config: &LoraConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    config.validate().map_err(|e| e.at(&cfg_path))?;
    let weights = dir.join(ADAPTER_WEIGHTS);
    check_factors(tensors, config.r, str::to_string).map_err(|msg| ModelError::Weights {
        path: weights.clone(),
        msg,
    })?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
    let named: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((format!("{PEFT_PREFIX}{n}"), t.detach().contiguous()?)))
        .collect::<Result<_>>()?;
    let tmp = dir.join(format!(".{ADAPTER_WEIGHTS}.tmp"));
    candle_core::safetensors::save(&named, &tmp)
        .map_err(|e| ModelError::file(&tmp, crate::error::candle_message(&e)))?;
    std::fs::rename(&tmp, &weights).map_err(|e| ModelError::file(&weights, e))?;
    let text = serde_json::to_string_pretty(&config.to_json())
        .map_err(|e| ModelError::file(&cfg_path, e))?;
    let tmp = dir.join(format!(".{ADAPTER_CONFIG}.tmp"));
    std::fs::write(&tmp, text + "\n").map_err(|e| ModelError::file(&tmp, e))?;
    std::fs::rename(&tmp, &cfg_path).map_err(|e| ModelError::file(&cfg_path, e))?;
    Ok(())
}

/// Folds every adapter in `tensors` into its base weight, for export:
/// `{module}.weight` += scale · B A (computed in f32, stored in the weight's
/// dtype), and the factors are removed. Names are one model's, base and
/// factors alike.
pub fn merge_into(tensors: &mut BTreeMap<String, Tensor>, config: &LoraConfig) -> Result<()> {
    let factors: BTreeMap<String, Tensor> = tensors
        .iter()
        .filter(|(n, _)| is_lora_tensor(n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    check_factors(&factors, config.r, str::to_string).map_err(ModelError::Input)?;
    let scale = config.scale();
    for (name, a) in &factors {
        let Some((module, true)) = split_name(name) else {
            continue;
        };
        let b = &factors[&format!("{module}{SUFFIX_B}")];
        let wname = format!("{module}.weight");
        let w = tensors.get(&wname).ok_or_else(|| {
            ModelError::Input(format!(
                "{name} adapts {wname}, which is not among the tensors"
            ))
        })?;
        let (out, inp) = w.dims2()?;
        if b.dim(0)? != out || a.dim(1)? != inp {
            return Err(ModelError::Input(format!(
                "{name} / lora_B ({:?} x {:?}) do not fit {wname} {:?}",
                b.dims(),
                a.dims(),
                w.dims()
            )));
        }
        // (out, r) x (r, in) -> (out, in)
        let delta = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
        let merged = (w.to_dtype(DType::F32)? + delta.affine(scale, 0.0)?)?.to_dtype(w.dtype())?;
        tensors.insert(wname, merged);
    }
    tensors.retain(|n, _| !is_lora_tensor(n));
    Ok(())
}
