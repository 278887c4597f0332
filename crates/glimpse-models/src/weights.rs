//! Checkpoint files and strict loading.
//!
//! House rule 4: every tensor the model asks for must be in the file with the
//! right shape, and every tensor in the file must be used or explicitly
//! ignored. Instead of failing at the first problem we record all of them
//! while the model is built (handing back zeros so construction can go on) and
//! report them together in [`StrictWeights::finish`], so one run tells the
//! user everything that is wrong with a checkpoint.
//!
//! Those zeros are sized by the config, not the file, so their total is
//! capped ([`PLACEHOLDER_BUDGET`]): past it construction stops and the
//! report names what was found so far. Loaders compare the config's main
//! sizes with the header first (`shape_check`), so a config that disagrees
//! with its checkpoint is named before anything is allocated at all.
//!
//! Every model weight is a float: a tensor stored as an integer type
//! (I32, U8...) would be converted value by value into garbage weights, so
//! it is refused, named with its dtype.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use std::collections::HashMap;

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
    /// Name -> stored dtype of every tensor that is not a float.
    not_float: BTreeMap<String, String>,
    /// Tensors that come from elsewhere than the files (a pretrained
    /// decoder a model directory names), served like the files' own.
    extra: Arc<HashMap<String, Tensor>>,
}

impl Checkpoint {
    /// Adds tensors from outside the files; a name the files already hold
    /// is an error (one source per tensor).
    pub fn add_tensors(&mut self, tensors: HashMap<String, Tensor>) -> Result<()> {
        let mut extra: HashMap<String, Tensor> = (*self.extra).clone();
        for (name, t) in tensors {
            if self.shapes.contains_key(&name) {
                return Err(ModelError::file(
                    &self.path,
                    format!("tensor {name} is both in the file and in the model's decoder_from"),
                ));
            }
            self.shapes.insert(name.clone(), t.dims().to_vec());
            extra.insert(name, t);
        }
        self.extra = Arc::new(extra);
        Ok(())
    }

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
        let mut shapes = BTreeMap::new();
        let mut not_float = BTreeMap::new();
        for (name, view) in tensors.tensors() {
            let float = matches!(
                DType::try_from(view.dtype()),
                Ok(DType::F16 | DType::BF16 | DType::F32 | DType::F64)
            );
            if !float {
                not_float.insert(name.clone(), format!("{:?}", view.dtype()));
            }
            shapes.insert(name, view.shape().to_vec());
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors: Arc::new(tensors),
            shapes,
            not_float,
            extra: Arc::default(),
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
                extra: self.extra.clone(),
                shapes: self.shapes.clone(),
                not_float: self.not_float.clone(),
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
    let text = ModelError::read_config(index)?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(index, format!("invalid shard index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let unique: BTreeSet<&String> = parsed.weight_map.values().collect();
    Ok(unique.into_iter().map(|f| dir.join(f)).collect())
}

/// New embedding rows (a token a trainer added, `<image>`) start at the
/// mean of the existing ones, as transformers' `resize_token_embeddings`
/// centres them; a model directory whose decoder comes from elsewhere
/// grows it the same way at load.
///
/// # Shapes
/// `t`: (V, D) -> (vocab, D), vocab ≥ V
pub fn grow_rows(t: &Tensor, vocab: usize) -> candle_core::Result<Tensor> {
    let (v, _) = t.dims2()?;
    if vocab <= v {
        return Ok(t.clone());
    }
    let extra = t.mean_keepdim(0)?.repeat((vocab - v, 1))?;
    Tensor::cat(&[t, &extra], 0)
}

/// Bytes of zero placeholders handed out for missing, misshaped or
/// non-float tensors before construction stops: enough to report every
/// problem of a model of a few hundred million parameters, and a bound on
/// what a config that disagrees with its checkpoint makes us allocate.
pub const PLACEHOLDER_BUDGET: usize = 256 << 20;

#[derive(Default)]
struct Report {
    used: BTreeSet<String>,
    missing: Vec<String>,
    /// (name, shape in file, shape the model wants)
    misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// (name, dtype in file)
    not_float: Vec<(String, String)>,
    /// Bytes of placeholders handed out so far.
    placeholder_bytes: usize,
    /// The tensor whose placeholder would have passed the budget.
    stopped_at: Option<String>,
}

impl Report {
    fn has_problems(&self) -> bool {
        !self.missing.is_empty() || !self.misshaped.is_empty() || !self.not_float.is_empty()
    }
}

#[derive(Clone)]
struct StrictBackend {
    tensors: Arc<MmapedSafetensors>,
    extra: Arc<HashMap<String, Tensor>>,
    shapes: BTreeMap<String, Vec<usize>>,
    not_float: BTreeMap<String, String>,
    report: Arc<Mutex<Report>>,
}

impl StrictBackend {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.extra.get(name) {
            Some(t) => t.to_device(dev)?.to_dtype(dtype),
            None => self.tensors.load(name, dev)?.to_dtype(dtype),
        }
    }

    fn with_report<T>(&self, f: impl FnOnce(&mut Report) -> T) -> T {
        // A poisoned lock only means another builder thread panicked; the
        // bookkeeping inside is still a plain set of names.
        let mut guard = match self.report.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Zeros standing in for a tensor the checkpoint cannot supply, so
    /// construction goes on and every problem is reported; an error once
    /// the placeholders would pass [`PLACEHOLDER_BUDGET`].
    fn placeholder(
        &self,
        s: Shape,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let bytes = s.elem_count().checked_mul(dtype.size_in_bytes());
        let fits =
            self.with_report(
                |r| match bytes.and_then(|b| b.checked_add(r.placeholder_bytes)) {
                    Some(total) if total <= PLACEHOLDER_BUDGET => {
                        r.placeholder_bytes = total;
                        true
                    }
                    _ => {
                        r.stopped_at.get_or_insert_with(|| name.to_string());
                        false
                    }
                },
            );
        if !fits {
            candle_core::bail!(
                "checkpoint does not match the model config (stopped at {name}, shape {:?})",
                s.dims()
            );
        }
        Tensor::zeros(s, dtype, dev)
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
                self.placeholder(s, name, dtype, dev)
            }
            Some(found) if found.as_slice() != s.dims() => {
                self.with_report(|r| {
                    r.used.insert(name.to_string());
                    r.misshaped
                        .push((name.to_string(), found.clone(), s.dims().to_vec()))
                });
                self.placeholder(s, name, dtype, dev)
            }
            Some(_) if self.not_float.contains_key(name) => {
                self.with_report(|r| {
                    r.used.insert(name.to_string());
                    r.not_float
                        .push((name.to_string(), self.not_float[name].clone()))
                });
                self.placeholder(s, name, dtype, dev)
            }
            Some(_) => {
                self.with_report(|r| r.used.insert(name.to_string()));
                self.load(name, dtype, dev)
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
        if let Some(stored) = self.not_float.get(name) {
            self.with_report(|r| r.not_float.push((name.to_string(), stored.clone())));
            candle_core::bail!("tensor {name} is stored as {stored}, not a float type");
        }
        self.load(name, dtype, dev)
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

    /// The result of building a model from [`Self::var_builder`], checked:
    /// the checkpoint's problems when there are any (they explain a build
    /// that failed better than the error it stopped at), else the build's
    /// own error, else [`Self::finish`].
    pub fn conclude<T>(&self, built: Result<T>, ignore: impl Fn(&str) -> bool) -> Result<T> {
        let problems = self.backend.with_report(|r| r.has_problems());
        match built {
            Err(_) if problems => Err(self.report(&ignore, false)),
            Err(e) => Err(e),
            Ok(model) => {
                self.finish(ignore)?;
                Ok(model)
            }
        }
    }

    /// Fails with one line naming every missing, misshaped, non-float and
    /// unexpected tensor. Names for which `ignore(name)` is true may stay
    /// unused (e.g. `position_ids` buffers older transformers saved).
    pub fn finish(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let clean = self.backend.with_report(|r| {
            !r.has_problems()
                && self
                    .backend
                    .shapes
                    .keys()
                    .all(|n| r.used.contains(n) || ignore(n))
        });
        if clean {
            return Ok(());
        }
        Err(self.report(&ignore, true))
    }

    /// The one-line report; `complete`: construction ran to the end, so
    /// unused tensors are unexpected rather than not reached yet.
    fn report(&self, ignore: &dyn Fn(&str) -> bool, complete: bool) -> ModelError {
        let (missing, misshaped, not_float, unexpected, stopped) = self.backend.with_report(|r| {
            let unexpected: Vec<String> = if complete && r.stopped_at.is_none() {
                self.backend
                    .shapes
                    .keys()
                    .filter(|n| !r.used.contains(*n) && !ignore(n))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            (
                r.missing.clone(),
                r.misshaped.clone(),
                r.not_float.clone(),
                unexpected,
                r.stopped_at.clone(),
            )
        });
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
        if !not_float.is_empty() {
            let items: Vec<String> = not_float
                .iter()
                .map(|(n, dtype)| format!("{n} ({dtype})"))
                .collect();
            parts.push(format!(
                "not a float type (weights must be F32, F16, BF16 or F64) {}: {}",
                items.len(),
                list(&items)
            ));
        }
        if !unexpected.is_empty() {
            parts.push(format!(
                "unexpected {}: {}",
                unexpected.len(),
                list(&unexpected)
            ));
        }
        if let Some(name) = stopped {
            parts.push(format!(
                "stopped at {name}: the placeholders for these would pass {} MiB",
                PLACEHOLDER_BUDGET >> 20
            ));
        }
        ModelError::Weights {
            path: self.path.clone(),
            msg: format!(
                "checkpoint does not match the model config; {}",
                parts.join("; ")
            ),
        }
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
