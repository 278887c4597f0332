//! Checkpoints: `model.safetensors` (every tensor of the stage's model),
//! `optimizer.safetensors` (AdamW moments) and `train_state.json` (step,
//! data position, RNG seed, what model it belongs to).
//!
//! Each checkpoint is a directory `step-NNNNNNN` written under a temporary
//! name, every file fsynced, then renamed into place; `latest` names the
//! newest and is itself replaced by rename. A crash or a stop at any moment
//! leaves the previous checkpoint whole and `latest` pointing at a complete
//! directory. The two newest are kept.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_data::datasets::BatchPosition;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

const KEEP: usize = 2;

/// What `train_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub stage: String,
    /// Optimiser steps done.
    pub step: usize,
    /// Where the batch sampler stands (epoch, batch within it).
    pub data: BatchPosition,
    /// Every random draw of the run derives from this seed and the step, so
    /// the step is the whole RNG state.
    pub seed: u64,
    /// Names the model's configuration; a checkpoint of another
    /// architecture is refused on resume.
    pub architecture: String,
    pub examples_seen: u64,
    /// Steps already done when the stage's wall clock started (resumes
    /// report the total time).
    pub seconds: f64,
    /// The train loss of the step the checkpoint ends on, so a run resumed
    /// from its last checkpoint (nothing left to train) still reports it;
    /// absent in checkpoints written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<f64>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{}: {e}", path.display()))
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

fn fsync_dir(path: &Path) -> Result<()> {
    // Directories can be opened read-only and fsynced on Unix; elsewhere
    // this is best effort.
    match File::open(path) {
        Ok(f) => {
            let _ = f.sync_all();
            Ok(())
        }
        Err(e) => Err(io(path, e)),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    fsync_dir(dir)
}

/// Saves tensors as safetensors at `path` (not atomic on its own: callers
/// write into a temporary directory).
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).map_err(|e| io(path, crate::error::one_line(e)))?;
    fsync_file(path)
}

pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| io(path, crate::error::one_line(e)))
}

/// The checkpoints of one stage, under `dir`.
pub struct Checkpoints {
    dir: PathBuf,
}

/// A checkpoint read back.
pub struct Loaded {
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub path: PathBuf,
}

impl Checkpoints {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest complete checkpoint's directory, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let pointer = self.dir.join("latest");
        if !pointer.is_file() {
            return Ok(None);
        }
        let name = fs::read_to_string(&pointer).map_err(|e| io(&pointer, e))?;
        let path = self.dir.join(name.trim());
        if !path.join("train_state.json").is_file() {
            return Err(io(&path, "named by `latest` but incomplete"));
        }
        Ok(Some(path))
    }

    /// Writes a checkpoint and points `latest` at it.
    pub fn save(
        &self,
        state: &TrainState,
        model: &BTreeMap<String, Tensor>,
        optimizer: &HashMap<String, Tensor>,
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let name = format!("step-{:07}", state.step);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        save_tensors(model, &tmp.join("model.safetensors"))?;
        let opt: BTreeMap<String, Tensor> = optimizer
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        save_tensors(&opt, &tmp.join("optimizer.safetensors"))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| io(&tmp, e))?;
        let state_path = tmp.join("train_state.json");
        fs::write(&state_path, json).map_err(|e| io(&state_path, e))?;
        fsync_file(&state_path)?;
        fsync_dir(&tmp)?;
        let path = self.dir.join(&name);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        fsync_dir(&self.dir)?;
        write_atomic(&self.dir.join("latest"), name.as_bytes())?;
        self.prune(&name)?;
        Ok(path)
    }

    /// Keeps the newest [`KEEP`] step directories (and never `current`).
    fn prune(&self, current: &str) -> Result<()> {
        let mut steps: Vec<String> = fs::read_dir(&self.dir)
            .map_err(|e| io(&self.dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("step-"))
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(KEEP);
        for old in steps.into_iter().take(excess) {
            if old != current {
                let p = self.dir.join(&old);
                fs::remove_dir_all(&p).map_err(|e| io(&p, e))?;
            }
        }
        Ok(())
    }

    /// The step a checkpoint directory ends on, from its
    /// `train_state.json` alone (no tensors read).
    pub fn step_of(path: &Path) -> Result<usize> {
        let state_path = path.join("train_state.json");
        let text = fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| io(&state_path, format!("invalid: {e}")))?;
        Ok(state.step)
    }

    pub fn load(path: &Path) -> Result<Loaded> {
        let state_path = path.join("train_state.json");
        let text = fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| io(&state_path, format!("invalid: {e}")))?;
        Ok(Loaded {
            state,
            model: load_tensors(&path.join("model.safetensors"))?,
            optimizer: load_tensors(&path.join("optimizer.safetensors"))?,
            path: path.to_path_buf(),
        })
    }
}
