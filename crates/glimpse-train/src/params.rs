//! The weights of one training stage: which tensors learn (candle `Var`s,
//! tracked by autograd) and which stay frozen (plain tensors: no gradient is
//! computed or stored for them, and frozen towers take the fused inference
//! paths).
//!
//! Model constructors ask a `VarBuilder` for every tensor by name; the
//! backend here answers from the values carried in from earlier stages or
//! a checkpoint, and draws what is new with the run's seed ([`crate::init`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{Result, TrainError};
use crate::init::seeded_tensor;

/// Which parameters learn in a stage, by name prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trainable {
    All,
    /// Names starting with any of these prefixes.
    Prefixes(Vec<String>),
    /// Those prefixes and every LoRA factor (`*.lora_A.weight`,
    /// `*.lora_B.weight`): a stage that adapts a frozen decoder.
    PrefixesAndLora(Vec<String>),
}

impl Trainable {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefixes(p) => p.iter().any(|p| name.starts_with(p.as_str())),
            Self::PrefixesAndLora(p) => {
                glimpse_models::lora::is_lora_tensor(name)
                    || p.iter().any(|p| name.starts_with(p.as_str()))
            }
        }
    }
}

#[derive(Default)]
struct Handed {
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
    /// Names drawn fresh (not carried in), for the stage's log.
    fresh: Vec<String>,
}

struct Inner {
    start: HashMap<String, Tensor>,
    /// Names whose values come from outside the run (a pretrained part's
    /// files): while frozen they are not written to checkpoints.
    external: std::collections::HashSet<String>,
    trainable: Trainable,
    seed: u64,
    handed: Mutex<Handed>,
}

/// The weights a stage's model was built from. Clone-cheap handle.
#[derive(Clone)]
pub struct StageWeights(Arc<Inner>);

impl StageWeights {
    /// `start`: values carried in by name (earlier stages, a checkpoint);
    /// anything else a constructor asks for is drawn fresh with `seed`.
    pub fn new(start: HashMap<String, Tensor>, trainable: Trainable, seed: u64) -> Self {
        Self::with_external(start, trainable, seed, Default::default())
    }

    /// [`StageWeights::new`] where the `external` names come from a
    /// pretrained part's files, which the run reads again on resume: while
    /// frozen they are left out of [`StageWeights::saved_tensors`].
    pub fn with_external(
        start: HashMap<String, Tensor>,
        trainable: Trainable,
        seed: u64,
        external: std::collections::HashSet<String>,
    ) -> Self {
        Self(Arc::new(Inner {
            start,
            external,
            trainable,
            seed,
            handed: Mutex::new(Handed::default()),
        }))
    }

    /// A `VarBuilder` answering from these weights (f32 on `device`).
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    fn handed(&self) -> Result<std::sync::MutexGuard<'_, Handed>> {
        self.0
            .handed
            .lock()
            .map_err(|_| TrainError::State("stage weights lock poisoned".into()))
    }

    /// The learning parameters, by name.
    pub fn trainable_vars(&self) -> Result<Vec<(String, Var)>> {
        Ok(self
            .handed()?
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect())
    }

    /// Every tensor the model was built from, current values (what a
    /// checkpoint or an exported model holds).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let h = self.handed()?;
        let mut all: BTreeMap<String, Tensor> = h
            .frozen
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        for (n, v) in &h.vars {
            all.insert(n.clone(), v.as_tensor().detach());
        }
        Ok(all)
    }

    /// What a checkpoint and a stage's `final.safetensors` hold:
    /// [`StageWeights::tensors`] without the frozen pretrained ones (a
    /// frozen 135M-parameter decoder would otherwise be written at every
    /// checkpoint).
    pub fn saved_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let h = self.handed()?;
        let mut all: BTreeMap<String, Tensor> = h
            .frozen
            .iter()
            .filter(|(n, _)| !self.0.external.contains(n.as_str()))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        for (n, v) in &h.vars {
            all.insert(n.clone(), v.as_tensor().detach());
        }
        Ok(all)
    }

    /// Only the frozen tensors (to check they did not move).
    pub fn frozen_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self.handed()?.frozen.clone())
    }

    /// Names that were not carried in and were drawn fresh.
    pub fn fresh_names(&self) -> Result<Vec<String>> {
        Ok(self.handed()?.fresh.clone())
    }

    /// Overwrites the learning parameters' values (resume from a checkpoint).
    /// Every var must be present with its shape.
    pub fn load_values(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        let h = self.handed()?;
        for (name, var) in &h.vars {
            let v = values
                .get(name)
                .ok_or_else(|| TrainError::State(format!("the checkpoint has no tensor {name}")))?;
            if v.dims() != var.dims() {
                return Err(TrainError::State(format!(
                    "tensor {name}: the checkpoint has shape {:?}, the model {:?}",
                    v.dims(),
                    var.dims()
                )));
            }
            var.set(&v.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

impl SimpleBackend for StageWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut handed = self
            .handed()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if let Some(v) = handed.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        if let Some(t) = handed.frozen.get(name) {
            return Ok(t.clone());
        }
        let value = match self.0.start.get(name) {
            Some(t) if t.shape() != &s => {
                return Err(candle_core::Error::Msg(format!(
                    "tensor {name}: the earlier stage or checkpoint has shape {:?}, the model expects {:?}",
                    t.dims(),
                    s.dims()
                )))
            }
            Some(t) => t.to_device(dev)?.to_dtype(dtype)?,
            None => {
                handed.fresh.push(name.to_string());
                seeded_tensor(h, &s, name, self.0.seed, dtype, dev)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            }
        };
        if self.0.trainable.contains(name) {
            // `Var::from_tensor` copies: the carried-in value is never mutated.
            let var = Var::from_tensor(&value)?;
            let t = var.as_tensor().clone();
            handed.vars.insert(name.to_string(), var);
            Ok(t)
        } else {
            let t = value.detach();
            handed.frozen.insert(name.to_string(), t.clone());
            Ok(t)
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.start.get(name) {
            Some(t) => {
                let s = t.shape().clone();
                self.get(s, name, Init::Const(0.0), dtype, dev)
            }
            None => Err(candle_core::Error::Msg(format!(
                "tensor {name} has no value and no shape to draw one"
            ))),
        }
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
