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

/// The suffix of the `Var` holding a table's new rows (see
/// [`StageWeights::train_new_rows`]): `language_model.model.embed_tokens.weight.new_rows`.
pub const NEW_ROWS: &str = ".new_rows";

#[derive(Default)]
struct Handed {
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
    /// Tables whose leading rows are frozen and whose new rows learn: the
    /// frozen head, the name of the `Var` (in `vars`) of the tail, and the
    /// table the model holds (head and tail joined; its tail rows are
    /// rewritten from the `Var` by [`StageWeights::refresh_new_rows`]).
    joined: BTreeMap<String, (Tensor, String, Tensor)>,
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
    /// Frozen tables whose rows from this index on learn all the same.
    new_rows: HashMap<String, usize>,
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
            new_rows: HashMap::new(),
            handed: Mutex::new(Handed::default()),
        }))
    }

    /// Rows a frozen table gained (tokens added to a pretrained tokenizer:
    /// the tile tags) learn while its older rows stay as they are: `rows`
    /// maps a table's name to its first new row. The model sees the table
    /// whole (the frozen head and the `Var` of the tail, `NAME.new_rows`,
    /// joined, so gradients reach the tail alone); [`Self::tensors`] holds
    /// the table whole, checkpoints the tail. A table the stage trains
    /// anyway is one `Var` as before. Call before the first `var_builder`.
    pub fn train_new_rows(mut self, rows: HashMap<String, usize>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.new_rows = rows,
            // a clone is out: its model may already hold the tables
            None => debug_assert!(false, "train_new_rows on a shared StageWeights"),
        }
        self
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
        for (n, (head, tail, _)) in &h.joined {
            let whole = match all.remove(tail) {
                Some(t) => Tensor::cat(&[head, &t], 0)?,
                None => head.clone(),
            };
            all.insert(n.clone(), whole);
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

    /// Copies each learning tail ([`Self::train_new_rows`]) into the table
    /// the model holds, whose rows are a copy made when the model was
    /// built: after every optimiser step and after a checkpoint is loaded,
    /// so the forward reads the rows the optimiser left. In place, so the
    /// join's gradient path is untouched.
    pub fn refresh_new_rows(&self) -> Result<()> {
        let h = self.handed()?;
        for (head, tail, whole) in h.joined.values() {
            if let Some(var) = h.vars.get(tail) {
                whole.slice_set(var.as_tensor(), 0, head.dim(0)?)?;
            }
        }
        Ok(())
    }

    /// Only the frozen tensors (to check they did not move); a table whose
    /// new rows learn counts its frozen rows.
    pub fn frozen_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let h = self.handed()?;
        let mut all = h.frozen.clone();
        for (n, (head, _, _)) in &h.joined {
            all.insert(n.clone(), head.clone());
        }
        Ok(all)
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
        if let Some((_, _, whole)) = handed.joined.get(name) {
            return Ok(whole.clone());
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
        let split = self.0.new_rows.get(name).copied();
        if let (false, Some(from)) = (self.0.trainable.contains(name), split) {
            let total = value.dim(0)?;
            if from < total {
                let tail_name = format!("{name}{NEW_ROWS}");
                let head = value.narrow(0, 0, from)?.detach();
                // a checkpoint or an earlier stage's final weights hold the
                // trained tail apart; otherwise it is the table's own rows
                let tail = match self.0.start.get(&tail_name) {
                    Some(t) if t.dims() != [total - from, value.dim(1)?] => {
                        return Err(candle_core::Error::Msg(format!(
                            "tensor {tail_name}: the earlier stage or checkpoint has shape {:?}, the model expects [{}, {}]",
                            t.dims(),
                            total - from,
                            value.dim(1)?
                        )))
                    }
                    Some(t) => t.to_device(dev)?.to_dtype(dtype)?,
                    None => value.narrow(0, from, total - from)?,
                };
                let var = Var::from_tensor(&tail.contiguous()?)?;
                // the join is the graph the gradient takes to the tail; its
                // values are a copy, kept current by `refresh_new_rows`
                let whole = Tensor::cat(&[&head, var.as_tensor()], 0)?;
                handed.vars.insert(tail_name.clone(), var);
                handed
                    .joined
                    .insert(name.to_string(), (head, tail_name, whole.clone()));
                return Ok(whole);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frozen external (3 + 2, 2) table whose last two rows are new: the
    /// model sees it whole, the gradient reaches the new rows alone, the
    /// stage's tensors hold it whole and its checkpoints the new rows.
    #[test]
    fn new_rows_of_a_frozen_table_learn_alone() -> Result<()> {
        let dev = Device::Cpu;
        let name = "language_model.model.embed_tokens.weight";
        let table = Tensor::arange(0f32, 10., &dev)?.reshape((5, 2))?;
        let start = HashMap::from([(name.to_string(), table.clone())]);
        let external = std::collections::HashSet::from([name.to_string()]);
        let w = StageWeights::with_external(start, Trainable::Prefixes(vec![]), 0, external)
            .train_new_rows(HashMap::from([(name.to_string(), 3)]));
        let vb = w.var_builder(&dev);
        let t = vb.get((5, 2), name)?;
        assert_eq!(t.to_vec2::<f32>()?, table.to_vec2::<f32>()?);
        let vars = w.trainable_vars()?;
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].0, format!("{name}{NEW_ROWS}"));
        assert_eq!(vars[0].1.dims(), &[2, 2]);
        // d/dt sum(t²) = 2t, on the new rows only
        let grads = t.sqr()?.sum_all()?.backward()?;
        let g = grads.get(vars[0].1.as_tensor()).expect("a gradient");
        assert_eq!(g.to_vec2::<f32>()?, [[12., 14.], [16., 18.]]);
        vars[0].1.set(&Tensor::zeros((2, 2), DType::F32, &dev)?)?;
        // the table the model holds reads the optimiser's rows once refreshed
        assert_eq!(t.to_vec2::<f32>()?[3..], table.to_vec2::<f32>()?[3..]);
        w.refresh_new_rows()?;
        assert_eq!(t.to_vec2::<f32>()?[3..], [[0., 0.], [0., 0.]]);
        assert_eq!(t.to_vec2::<f32>()?[..3], table.to_vec2::<f32>()?[..3]);
        let grads = t.sqr()?.sum_all()?.backward()?;
        let g = grads.get(vars[0].1.as_tensor()).expect("a gradient");
        assert_eq!(g.to_vec2::<f32>()?, [[0., 0.], [0., 0.]]);
        let whole = w.tensors()?;
        assert_eq!(whole.len(), 1);
        let rows = whole[name].to_vec2::<f32>()?;
        assert_eq!(rows[..3], table.to_vec2::<f32>()?[..3]);
        assert_eq!(rows[3..], [[0., 0.], [0., 0.]]);
        let saved = w.saved_tensors()?;
        assert_eq!(
            saved.keys().collect::<Vec<_>>(),
            [&format!("{name}{NEW_ROWS}")]
        );
        assert_eq!(w.frozen_tensors()?[name].dims(), &[3, 2]);
        Ok(())
    }
}
