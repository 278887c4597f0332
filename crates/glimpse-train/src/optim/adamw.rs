//! AdamW, Loshchilov & Hutter 2019 ("Decoupled Weight Decay Regularization", Alg. 2), in the
//! update order of `torch.optim.AdamW`: decay the weights, update the moments, then step.

use crate::error::{Result, TrainError};
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use std::collections::{HashMap, HashSet};

/// Hyper-parameters shared by all groups (defaults as PyTorch, weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate; a schedule updates it with [`AdamW::set_lr`].
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Default decay for groups built by [`param_groups_by_dim`].
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Named parameters that share a learning rate and a weight decay.
///
/// The group's rate is `lr.unwrap_or(base_lr) · lr_scale`: `lr_scale` follows the schedule,
/// a fixed `lr` does not.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub params: Vec<(String, Var)>,
    pub lr: Option<f64>,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

impl ParamGroup {
    pub fn new(params: Vec<(String, Var)>, weight_decay: f64) -> Self {
        Self {
            params,
            lr: None,
            lr_scale: 1.0,
            weight_decay,
        }
    }
}

/// Two groups as GPT-2/nanoGPT: tensors with rank ≥ 2 (matmul and embedding weights) decay,
/// rank ≤ 1 tensors (norm scales, biases, gates) do not. Returns `[decay, no_decay]`.
pub fn param_groups_by_dim(params: Vec<(String, Var)>, weight_decay: f64) -> Vec<ParamGroup> {
    let (decay, no_decay): (Vec<_>, Vec<_>) = params.into_iter().partition(|(_, v)| v.rank() >= 2);
    vec![
        ParamGroup::new(decay, weight_decay),
        ParamGroup::new(no_decay, 0.0),
    ]
}

/// First and second moments of one parameter.
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over `candle_core::Var`s. Vars not given to it are never touched.
///
/// The step counter is shared by all parameters (bias correction uses it); a parameter
/// without a gradient at a step is left unchanged and keeps its moments.
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    moments: HashMap<String, Moments>,
    step: usize,
}

impl AdamW {
    /// Errors when two parameters share a name.
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self> {
        let mut seen = HashSet::new();
        for (name, _) in groups.iter().flat_map(|g| g.params.iter()) {
            if !seen.insert(name.clone()) {
                return Err(TrainError::Config(format!(
                    "parameter {name} appears twice"
                )));
            }
        }
        Ok(Self {
            cfg,
            groups,
            moments: HashMap::new(),
            step: 0,
        })
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the base learning rate (call with the schedule's value before each step).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Optimiser steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    pub fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    /// Every optimised var, in group order (e.g. for [`crate::clip_grad_norm`]).
    pub fn vars(&self) -> Vec<Var> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
            .collect()
    }

    /// One AdamW update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            ..
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        for group in &self.groups {
            let lr = group.lr.unwrap_or(lr) * group.lr_scale;
            for (name, var) in &group.params {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let g = g.detach();
                let theta = var.as_tensor().detach();
                let m = match self.moments.remove(name) {
                    Some(m) => m,
                    None => Moments {
                        exp_avg: theta.zeros_like()?,
                        exp_avg_sq: theta.zeros_like()?,
                    },
                };
                let exp_avg = ((m.exp_avg * beta1)? + (&g * (1.0 - beta1))?)?;
                let exp_avg_sq = ((m.exp_avg_sq * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                let m_hat = (&exp_avg / bc1)?;
                let v_hat = (&exp_avg_sq / bc2)?;
                let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                let decayed = (theta * (1.0 - lr * group.weight_decay))?;
                var.set(&(decayed - (update * lr)?)?)?;
                self.moments.insert(
                    name.clone(),
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        Ok(())
    }

    /// Optimiser state for a checkpoint: `"{name}.exp_avg"`, `"{name}.exp_avg_sq"` per
    /// parameter that has moments, and `"step"` (an i64 scalar).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, m) in &self.moments {
            out.insert(format!("{name}.exp_avg"), m.exp_avg.clone());
            out.insert(format!("{name}.exp_avg_sq"), m.exp_avg_sq.clone());
        }
        out.insert(
            "step".to_string(),
            Tensor::new(self.step as i64, &Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores [`AdamW::state_dict`] output. Strict: an unknown key, a parameter with only one
    /// moment, or a shape that differs from the parameter is an error.
    pub fn load_state_dict(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let step = state
            .get("step")
            .ok_or_else(|| TrainError::State("missing \"step\"".into()))?
            .to_dtype(candle_core::DType::I64)?
            .to_scalar::<i64>()?;
        let mut used = 1;
        let mut moments = HashMap::new();
        for group in &self.groups {
            for (name, var) in &group.params {
                let a = state.get(&format!("{name}.exp_avg"));
                let s = state.get(&format!("{name}.exp_avg_sq"));
                let (a, s) = match (a, s) {
                    (None, None) => continue,
                    (Some(a), Some(s)) => (a, s),
                    _ => return Err(TrainError::State(format!("{name} has only one moment"))),
                };
                for t in [a, s] {
                    if t.dims() != var.dims() {
                        return Err(TrainError::State(format!(
                            "{name}: moment shape {:?} vs parameter {:?}",
                            t.dims(),
                            var.dims()
                        )));
                    }
                }
                let to_param = |t: &Tensor| t.to_device(var.device())?.to_dtype(var.dtype());
                moments.insert(
                    name.clone(),
                    Moments {
                        exp_avg: to_param(a)?,
                        exp_avg_sq: to_param(s)?,
                    },
                );
                used += 2;
            }
        }
        if used != state.len() {
            let mut unknown: Vec<&String> = state
                .keys()
                .filter(|k| {
                    *k != "step"
                        && !moments.keys().any(|n| {
                            **k == format!("{n}.exp_avg") || **k == format!("{n}.exp_avg_sq")
                        })
                })
                .collect();
            unknown.sort();
            return Err(TrainError::State(format!("unknown keys {unknown:?}")));
        }
        self.step = usize::try_from(step).map_err(|_| TrainError::State(format!("step {step}")))?;
        self.moments = moments;
        Ok(())
    }
}
