//! AdamW, Loshchilov & Hutter 2019 ("Decoupled Weight Decay Regularization", Alg. 2), in the
//! update order of `torch.optim.AdamW`: decay the weights, update the moments, then step.
//!
//! f32 parameters on the CPU take one fused pass per parameter that updates the weights in
//! place and keeps the moments as plain buffers: the same arithmetic as the tensor path (which
//! serves other dtypes and devices) without its dozen allocating ops per parameter.

use crate::error::{Result, TrainError};
use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var,
};
use rayon::prelude::*;
use std::cell::RefCell;
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
enum Moments {
    /// Any dtype or device: updated with tensor ops.
    Tensors { exp_avg: Tensor, exp_avg_sq: Tensor },
    /// f32 on the CPU: updated in place by [`FusedStep`].
    Cpu {
        exp_avg: Vec<f32>,
        exp_avg_sq: Vec<f32>,
    },
}

impl Moments {
    /// Zero moments in the representation `var` takes.
    fn zeros(var: &Var) -> Result<Self> {
        Ok(if fused_applies(var) {
            let n = var.elem_count();
            Moments::Cpu {
                exp_avg: vec![0.0; n],
                exp_avg_sq: vec![0.0; n],
            }
        } else {
            Moments::Tensors {
                exp_avg: var.zeros_like()?,
                exp_avg_sq: var.zeros_like()?,
            }
        })
    }

    /// Moments read from a checkpoint, in the representation `var` takes.
    fn from_tensors(var: &Var, exp_avg: &Tensor, exp_avg_sq: &Tensor) -> Result<Self> {
        let to_param = |t: &Tensor| t.to_device(var.device())?.to_dtype(var.dtype());
        let (a, s) = (to_param(exp_avg)?, to_param(exp_avg_sq)?);
        Ok(if fused_applies(var) {
            Moments::Cpu {
                exp_avg: a.flatten_all()?.to_vec1()?,
                exp_avg_sq: s.flatten_all()?.to_vec1()?,
            }
        } else {
            Moments::Tensors {
                exp_avg: a,
                exp_avg_sq: s,
            }
        })
    }

    /// `(exp_avg, exp_avg_sq)` as tensors of `shape` (copies for the CPU buffers, so later
    /// steps do not change an exported state).
    fn to_tensors(&self, shape: &[usize]) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Moments::Tensors {
                exp_avg,
                exp_avg_sq,
            } => (exp_avg.copy()?, exp_avg_sq.copy()?),
            Moments::Cpu {
                exp_avg,
                exp_avg_sq,
            } => (
                Tensor::from_slice(exp_avg, shape, &Device::Cpu)?,
                Tensor::from_slice(exp_avg_sq, shape, &Device::Cpu)?,
            ),
        })
    }
}

/// Whether `var` takes the fused CPU step.
fn fused_applies(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32 && var.is_contiguous()
}

/// AdamW over `candle_core::Var`s. Vars not given to it are never touched.
///
/// The step counter is shared by all parameters (bias correction uses it); a parameter
/// without a gradient at a step is left unchanged and keeps its moments.
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    moments: HashMap<String, Moments>,
    /// Parameter shapes by name, to export CPU moments as tensors.
    shapes: HashMap<String, Vec<usize>>,
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
        let shapes = groups
            .iter()
            .flat_map(|g| g.params.iter())
            .map(|(name, var)| (name.clone(), var.dims().to_vec()))
            .collect();
        Ok(Self {
            cfg,
            groups,
            moments: HashMap::new(),
            shapes,
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
            let decay = 1.0 - lr * group.weight_decay;
            for (name, var) in &group.params {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let g = g.detach();
                let moments = match self.moments.entry(name.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(Moments::zeros(var)?),
                };
                match moments {
                    Moments::Cpu {
                        exp_avg,
                        exp_avg_sq,
                    } if g.device().is_cpu() && g.dtype() == DType::F32 => {
                        let op = FusedStep {
                            exp_avg: RefCell::new(exp_avg),
                            exp_avg_sq: RefCell::new(exp_avg_sq),
                            coefs: Coefs {
                                decay: decay as f32,
                                beta1: beta1 as f32,
                                one_minus_beta1: (1.0 - beta1) as f32,
                                beta2: beta2 as f32,
                                one_minus_beta2: (1.0 - beta2) as f32,
                                inv_bc1: (1.0 / bc1) as f32,
                                inv_bc2: (1.0 / bc2) as f32,
                                eps: eps as f32,
                                lr: lr as f32,
                            },
                        };
                        var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                    }
                    Moments::Cpu { .. } => {
                        return Err(TrainError::State(format!(
                            "{name}: gradient {:?} on {:?} for an f32 CPU parameter",
                            g.dtype(),
                            g.device()
                        )))
                    }
                    Moments::Tensors {
                        exp_avg,
                        exp_avg_sq,
                    } => {
                        let theta = var.as_tensor().detach();
                        *exp_avg = ((&*exp_avg * beta1)? + (&g * (1.0 - beta1))?)?;
                        *exp_avg_sq = ((&*exp_avg_sq * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                        let m_hat = (&*exp_avg / bc1)?;
                        let v_hat = (&*exp_avg_sq / bc2)?;
                        let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                        let decayed = (theta * decay)?;
                        var.set(&(decayed - (update * lr)?)?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Optimiser state for a checkpoint: `"{name}.exp_avg"`, `"{name}.exp_avg_sq"` per
    /// parameter that has moments, and `"step"` (an i64 scalar).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, m) in &self.moments {
            let shape = self.shapes.get(name).map_or(&[][..], |s| s.as_slice());
            let (exp_avg, exp_avg_sq) = m.to_tensors(shape)?;
            out.insert(format!("{name}.exp_avg"), exp_avg);
            out.insert(format!("{name}.exp_avg_sq"), exp_avg_sq);
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
                moments.insert(name.clone(), Moments::from_tensors(var, a, s)?);
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

/// Elements per parallel task of the fused step: small tensors stay on one thread.
const CHUNK: usize = 32 * 1024;

/// One AdamW update of an f32 CPU parameter in place (the destination) from its contiguous
/// gradient (the source), moments updated alongside: `torch.optim.AdamW`'s order (decay,
/// moments, bias-corrected step) with the tensor path's f32 constants.
struct FusedStep<'a> {
    exp_avg: RefCell<&'a mut Vec<f32>>,
    exp_avg_sq: RefCell<&'a mut Vec<f32>>,
    coefs: Coefs,
}

/// The update's constants, as f32.
#[derive(Clone, Copy)]
struct Coefs {
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
}

impl Coefs {
    fn run(&self, theta: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in theta.iter_mut().zip(grad).zip(m).zip(v) {
            *m = *m * self.beta1 + g * self.one_minus_beta1;
            *v = *v * self.beta2 + g * g * self.one_minus_beta2;
            let update = (*m * self.inv_bc1) / ((*v * self.inv_bc2).sqrt() + self.eps);
            *p = *p * self.decay - update * self.lr;
        }
    }
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else {
            candle_core::bail!("fused AdamW takes f32 weights and gradients");
        };
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused AdamW takes contiguous weights and gradients");
        };
        let (theta, grad) = (&mut theta[t0..t1], &grad[g0..g1]);
        let (mut m, mut v) = (self.exp_avg.borrow_mut(), self.exp_avg_sq.borrow_mut());
        if grad.len() != theta.len() || m.len() != theta.len() || v.len() != theta.len() {
            candle_core::bail!(
                "fused AdamW: {} weights, {} gradients, moments {} / {}",
                theta.len(),
                grad.len(),
                m.len(),
                v.len()
            );
        }
        let (m, v, c) = (m.as_mut_slice(), v.as_mut_slice(), self.coefs);
        if theta.len() <= CHUNK {
            c.run(theta, grad, m, v);
            return Ok(());
        }
        theta
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| c.run(p, g, m, v));
        Ok(())
    }
}
