//! Where a model's adapters come from while it is built: a PEFT adapter
//! read from disk (inference), or a `VarBuilder` (training: the trainer's
//! backend hands out `Var`s and draws new factors as PEFT initialises
//! them). The decoder passes each of its linear layers through
//! [`LoraWeights::adapt`]; the targeted ones come back adapted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};
use crate::lora::config::{LoraConfig, TargetMatcher};
use crate::lora::files::{Adapter, PEFT_PREFIX};
use crate::lora::linear::{LoraDropout, LoraLinear};
use crate::nn::qlinear::QLinear;

/// Where a decoder's layers live in the module trees PEFT wraps, most
/// specific first: transformers 5 LLaVA (`model.language_model`), 4.x
/// LLaVA (`language_model.model`), a bare causal LM (`model`).
pub const PEFT_DECODER_PREFIXES: [&str; 3] =
    ["model.language_model", "language_model.model", "model"];

enum Source<'a> {
    Builder(VarBuilder<'a>),
    Adapter(&'a Adapter),
}

#[derive(Default)]
struct State {
    /// Model names of the adapted modules, in build order.
    adapted: Vec<String>,
    /// Adapter tensors taken (PEFT module-path names).
    used: BTreeSet<String>,
    /// Target entries that matched some module.
    hit: BTreeSet<String>,
}

pub struct LoraWeights<'a> {
    config: LoraConfig,
    matcher: TargetMatcher,
    source: Source<'a>,
    /// The model's name for the decoder (`model`, `language_model.model`)
    /// and the module path PEFT has for it.
    model_prefix: String,
    peft_prefix: String,
    dropout: LoraDropout,
    /// What config errors name: the adapter's `adapter_config.json`, or
    /// what the caller says the config came from.
    origin: PathBuf,
    state: Mutex<State>,
}

impl<'a> LoraWeights<'a> {
    /// Factors for training, asked from `vb` under the model's own names,
    /// `{module}.lora_A.weight` (r, in) and `{module}.lora_B.weight`
    /// (out, r), with PEFT's initialisation as the hint for new ones:
    /// A kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in), B zeros.
    /// `peft_prefix` is the module path of the model's `model_prefix` in
    /// the transformers model the adapter is saved for: `model` for a
    /// causal LM, `model.language_model` for a transformers 5 LLaVA.
    pub fn trainable(
        config: LoraConfig,
        vb: VarBuilder<'a>,
        model_prefix: &str,
        peft_prefix: &str,
    ) -> Result<Self> {
        Self::build(
            config,
            Source::Builder(vb),
            model_prefix,
            peft_prefix,
            PathBuf::from("lora config"),
        )
    }

    /// A PEFT adapter for a model whose decoder is named `model_prefix`.
    /// The adapter may come from the causal LM alone or from a LLaVA
    /// wrapping it: its decoder prefix is found from its tensor names.
    pub fn from_adapter(adapter: &'a Adapter, model_prefix: &str) -> Result<Self> {
        let path = adapter.weights_path();
        let peft_prefix = PEFT_DECODER_PREFIXES
            .iter()
            .find(|p| {
                let head = format!("{p}.layers.");
                adapter.tensors.keys().any(|n| n.starts_with(&head))
            })
            .ok_or_else(|| {
                let first = adapter.tensors.keys().next().cloned().unwrap_or_default();
                ModelError::Weights {
                    path: path.clone(),
                    msg: format!(
                        "no tensor adapts a decoder layer ({PEFT_PREFIX}model.layers.N…, or model.language_model.layers.N… for LLaVA); the first is {PEFT_PREFIX}{first}"
                    ),
                }
            })?;
        Self::build(
            adapter.config.clone(),
            Source::Adapter(adapter),
            model_prefix,
            peft_prefix,
            adapter.config_path(),
        )
    }

    fn build(
        config: LoraConfig,
        source: Source<'a>,
        model_prefix: &str,
        peft_prefix: &str,
        origin: PathBuf,
    ) -> Result<Self> {
        config.validate().map_err(|e| e.at(&origin))?;
        let matcher = config.matcher().map_err(|e| e.at(&origin))?;
        Ok(Self {
            dropout: LoraDropout::new(config.lora_dropout),
            config,
            matcher,
            source,
            model_prefix: model_prefix.to_string(),
            peft_prefix: peft_prefix.to_string(),
            origin,
            state: Mutex::new(State::default()),
        })
    }

    /// Names config errors with `origin` (the recipe) instead of "lora config".
    pub fn with_origin(mut self, origin: impl Into<PathBuf>) -> Self {
        self.origin = origin.into();
        self
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The dropout every adapted layer shares (off until the trainer
    /// switches it on).
    pub fn dropout(&self) -> &LoraDropout {
        &self.dropout
    }

    /// A model module name as PEFT's files name it (without
    /// `base_model.model.`): the decoder prefix swapped.
    pub fn peft_name(&self, model_name: &str) -> String {
        swap_prefix(model_name, &self.model_prefix, &self.peft_prefix)
    }

    /// The factors' values renamed for [`crate::lora::save_adapter`]:
    /// model names (what [`Self::tensor_names`] lists) to PEFT module paths.
    pub fn to_peft(&self, tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
        tensors
            .iter()
            .map(|(n, t)| (self.peft_name(n), t.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // the state is plain bookkeeping; a panicked builder leaves it usable
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Model names of the modules adapted so far, in build order.
    pub fn adapted(&self) -> Vec<String> {
        self.lock().adapted.clone()
    }

    /// The factor tensors the model asked for, by model name:
    /// `{module}.lora_A.weight` and `{module}.lora_B.weight` per adapted module.
    pub fn tensor_names(&self) -> Vec<String> {
        self.lock()
            .adapted
            .iter()
            .flat_map(|m| [format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight")])
            .collect()
    }

    /// `base` with its adapter when `module` (a model name) is a target,
    /// else `base` as it is. `dtype`/`device`: the model's compute dtype
    /// and device (an adapter read from disk is converted). `interleaved`:
    /// `Some(heads)` for q/k of a GGUF llama, whose rows llama.cpp stored
    /// interleaved per head; B's rows are reordered the same way.
    #[allow(clippy::too_many_arguments)]
    pub fn adapt(
        &self,
        module: &str,
        base: QLinear,
        in_dim: usize,
        out_dim: usize,
        dtype: DType,
        device: &Device,
        interleaved: Option<usize>,
    ) -> Result<QLinear> {
        let peft = self.peft_name(module);
        let entries: Vec<String> = self
            .matcher
            .entries_matching(&peft)
            .into_iter()
            .map(str::to_string)
            .collect();
        if entries.is_empty() {
            return Ok(base);
        }
        let r = self.config.r;
        let name_a = format!("{module}.lora_A.weight");
        let name_b = format!("{module}.lora_B.weight");
        let (a, b) = match &self.source {
            Source::Builder(vb) => {
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a = vb.get_with_hints(
                    (r, in_dim),
                    &name_a,
                    Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b = vb.get_with_hints((out_dim, r), &name_b, Init::Const(0.0))?;
                (a, b)
            }
            Source::Adapter(adapter) => {
                let get = |suffix: &str, want: [usize; 2]| -> Result<Tensor> {
                    let key = format!("{peft}.{suffix}");
                    let path = adapter.weights_path();
                    let t = adapter.tensors.get(&key).ok_or_else(|| ModelError::Weights {
                        path: path.clone(),
                        msg: format!(
                            "no tensor {PEFT_PREFIX}{key} for the target module {peft} (target_modules {})",
                            entries.join(", ")
                        ),
                    })?;
                    if t.dims() != want {
                        return Err(ModelError::Weights {
                            path,
                            msg: format!(
                                "tensor {PEFT_PREFIX}{key} has shape {:?}; {peft} takes {want:?}",
                                t.dims()
                            ),
                        });
                    }
                    self.lock().used.insert(key);
                    Ok(t.to_device(device)?.to_dtype(dtype)?)
                };
                (
                    get("lora_A.weight", [r, in_dim])?,
                    get("lora_B.weight", [out_dim, r])?,
                )
            }
        };
        let b = match interleaved {
            Some(heads) => interleave_rows(&b, heads)?,
            None => b,
        };
        {
            let mut state = self.lock();
            state.adapted.push(module.to_string());
            state.hit.extend(entries);
        }
        Ok(QLinear::Lora(Box::new(LoraLinear::new(
            base,
            a,
            b,
            self.config.scale(),
            self.dropout.clone(),
            module,
        ))))
    }

    /// After the model is built: every target entry matched a layer, and
    /// (for an adapter from disk) every tensor was used.
    pub fn finish(&self) -> Result<()> {
        let state = self.lock();
        let missed: Vec<&str> = self
            .matcher
            .entries()
            .into_iter()
            .filter(|e| !state.hit.contains(*e))
            .collect();
        if !missed.is_empty() {
            return Err(ModelError::config(
                &self.origin,
                format!(
                    "target_modules {} match no linear layer glimpse adapts (the language model's q/k/v/o_proj and gate/up/down_proj, named as {}.layers.N.…)",
                    missed
                        .iter()
                        .map(|m| format!("\"{m}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.peft_prefix
                ),
            ));
        }
        if let Source::Adapter(adapter) = &self.source {
            let unused: Vec<String> = adapter
                .tensors
                .keys()
                .filter(|k| !state.used.contains(*k))
                .map(|k| format!("{PEFT_PREFIX}{k}"))
                .collect();
            if let Some(first) = unused.first() {
                return Err(ModelError::Weights {
                    path: adapter.weights_path(),
                    msg: format!(
                        "{} tensors the model does not use, e.g. {first}; glimpse adapts the language model's linear layers only",
                        unused.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

fn swap_prefix(name: &str, from: &str, to: &str) -> String {
    if name == from {
        return to.to_string();
    }
    match name.strip_prefix(from) {
        Some(rest) if rest.starts_with('.') => format!("{to}{rest}"),
        _ => name.to_string(),
    }
}

/// llama.cpp's q/k row order for its interleaved rope: per head, HF's
/// half-split rows (i, i + hd/2) become neighbours (2i, 2i + 1).
///
/// # Shapes
/// `t`: (heads·hd, c) -> the same
fn interleave_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(ModelError::Input(format!(
            "{rows} rows cannot be split into {heads} rotary heads"
        )));
    }
    let hd = rows / heads;
    // (heads, 2, hd/2, c) -> (heads, hd/2, 2, c)
    Ok(t.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_swap_on_whole_components() {
        assert_eq!(
            swap_prefix(
                "language_model.model.layers.0.mlp.up_proj",
                "language_model.model",
                "model.language_model"
            ),
            "model.language_model.layers.0.mlp.up_proj"
        );
        assert_eq!(
            swap_prefix("modelx.layers.0", "model", "m"),
            "modelx.layers.0"
        );
        assert_eq!(
            swap_prefix("model.layers.0", "model", "model"),
            "model.layers.0"
        );
    }

    #[test]
    fn rows_interleave_per_head() {
        // 2 heads of 4 rows: [0 1 2 3 | 4 5 6 7] -> [0 2 1 3 | 4 6 5 7]
        let t = Tensor::arange(0f32, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let got: Vec<f32> = interleave_rows(&t, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}
