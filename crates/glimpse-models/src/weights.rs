//! Checkpoint files and strict loading.
//!
//! House rule 4: every tensor the model asks for must be in the file with the
//! right shape, and every tensor in the file must be used or explicitly
//! ignored. Instead of failing at the first problem we record all of them
//! while the model is built (handing back zeros so construction can go on) and
//! report them together in [`StrictWeights::finish`], so one run tells the
//! user everything that is wrong with a checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};

/// The safetensors file(s) of one model, memory-mapped.
pub struct Checkpoint {
    /// What error messages name: the single file, or the shard index.
    path: PathBuf,
    tensors: Arc<MmapedSafetensors>,
    /// Name -> shape of every tensor in the file(s).
    shapes: BTreeMap<String, Vec<usize>>,
}

impl Checkpoint {
    /// Opens `model.safetensors` or the shards listed in
    /// `model.safetensors.index.json` of an HF model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::open_files(&single, std::slice::from_ref(&single));
        }
        if index.is_file() {
            let shards = shard_files(&index)?;
            return Self::open_files(&index, &shards);
        }
        for legacy in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
            if dir.join(legacy).is_file() {
                return Err(ModelError::file(
                    dir.join(legacy),
                    "PyTorch pickle checkpoints are not loaded (they can run code); \
                     glimpse needs model.safetensors: convert it with transformers' \
                     `save_pretrained(..., safe_serialization=True)`",
                ));
            }
        }
        Err(ModelError::file(
            dir,
            "no model.safetensors or model.safetensors.index.json in this directory",
        ))
    }

    /// Opens explicit safetensors files; `path` is what errors name.
    pub fn open_files(path: &Path, files: &[PathBuf]) -> Result<Self> {
        for f in files {
            if !f.is_file() {
                return Err(ModelError::file(f, "safetensors file not found"));
            }
        }
        // SAFETY: the files are mapped read-only; glimpse never writes to a
        // checkpoint it has open. A file truncated by another process while
        // mapped is the accepted risk of every mmap-based loader.
        let tensors = unsafe { MmapedSafetensors::multi(files) }
            .map_err(|e| ModelError::file(path, format!("not a valid safetensors file: {e}")))?;
        let shapes = tensors
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tensors: Arc::new(tensors),
            shapes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name in the checkpoint with its shape.
    pub fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// A strict loader over this checkpoint, converting tensors to `dtype`.
    pub fn strict(&self, dtype: DType, device: &Device) -> StrictWeights {
        StrictWeights {
            path: self.path.clone(),
            backend: StrictBackend {
                tensors: self.tensors.clone(),
                shapes: self.shapes.clone(),
                report: Arc::new(Mutex::new(Report::default())),
            },
            dtype,
            device: device.clone(),
        }
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::file(index, e))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(index, format!("invalid shard index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let unique: BTreeSet<&String> = parsed.weight_map.values().collect();
    Ok(unique.into_iter().map(|f| dir.join(f)).collect())
}

#[derive(Default)]
struct Report {
    used: BTreeSet<String>,
    missing: Vec<String>,
    /// (name, shape in file, shape the model wants)
    misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

#[derive(Clone)]
struct StrictBackend {
    tensors: Arc<MmapedSafetensors>,
    shapes: BTreeMap<String, Vec<usize>>,
    report: Arc<Mutex<Report>>,
}

impl StrictBackend {
    fn with_report<T>(&self, f: impl FnOnce(&mut Report) -> T) -> T {
        // A poisoned lock only means another builder thread panicked; the
        // bookkeeping inside is still a plain set of names.
        let mut guard = match self.report.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl SimpleBackend for StrictBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shapes.get(name) {
            None => {
                self.with_report(|r| r.missing.push(name.to_string()));
                Tensor::zeros(s, dtype, dev)
            }
            Some(found) if found.as_slice() != s.dims() => {
                self.with_report(|r| {
                    r.used.insert(name.to_string());
                    r.misshaped
                        .push((name.to_string(), found.clone(), s.dims().to_vec()))
                });
                Tensor::zeros(s, dtype, dev)
            }
            Some(_) => {
                self.with_report(|r| r.used.insert(name.to_string()));
                self.tensors.load(name, dev)?.to_dtype(dtype)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.shapes.contains_key(name) {
            self.with_report(|r| r.missing.push(name.to_string()));
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            });
        }
        self.with_report(|r| r.used.insert(name.to_string()));
        self.tensors.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// Hands out a [`VarBuilder`] and afterwards checks that the model and the
/// checkpoint matched exactly.
pub struct StrictWeights {
    path: PathBuf,
    backend: StrictBackend,
    dtype: DType,
    device: Device,
}

impl StrictWeights {
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(self.backend.clone()),
            self.dtype,
            self.device.clone(),
        )
    }

    /// Fails with one line naming every missing, misshaped and unexpected
    /// tensor. Names for which `ignore(name)` is true may stay unused (e.g.
    /// `position_ids` buffers older transformers saved).
    pub fn finish(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let (missing, misshaped, unexpected) = self.backend.with_report(|r| {
            let unexpected: Vec<String> = self
                .backend
                .shapes
                .keys()
                .filter(|n| !r.used.contains(*n) && !ignore(n))
                .cloned()
                .collect();
            (r.missing.clone(), r.misshaped.clone(), unexpected)
        });
        if missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing {}: {}", missing.len(), list(&missing)));
        }
        if !misshaped.is_empty() {
            let items: Vec<String> = misshaped
                .iter()
                .map(|(n, file, model)| format!("{n} (file {file:?}, model wants {model:?})"))
                .collect();
            parts.push(format!("misshaped {}: {}", items.len(), list(&items)));
        }
        if !unexpected.is_empty() {
            parts.push(format!(
                "unexpected {}: {}",
                unexpected.len(),
                list(&unexpected)
            ));
        }
        Err(ModelError::Weights {
            path: self.path.clone(),
            msg: format!(
                "checkpoint does not match the model config; {}",
                parts.join("; ")
            ),
        })
    }
}

/// At most eight names, then a count: the message must stay one readable line.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(", … {} more", names.len() - SHOWN));
    }
    out
}
