//! The VQ stage's [`Task`]: images → encoder → quantiser → decoder, the
//! loss `MSE(x̂, x) + β·commitment (+ codebook loss when the codebook
//! learns by gradient)`, the EMA codebook update and dead-code restarts
//! after each optimiser step, and held-out PSNR, codebook usage and
//! perplexity.

use std::sync::Mutex;

use candle_core::{DType, Tensor, Var};
use glimpse_models::vq::{CodeStats, VqVae};

use super::ema::{ema_update, restart_dead_codes, Assignments, EmaSettings};
use crate::error::{Result, TrainError};
use crate::init::name_seed;
use crate::trainer::{EvalMetrics, Task};

/// Names of the stage's buffers (kept beside the model's tensors in
/// checkpoints, left out of the exported model).
pub const STATE_PREFIX: &str = "vq_state.";
pub const CODEBOOK: &str = "quantize.embedding.weight";
pub const CLUSTER_SIZE: &str = "vq_state.cluster_size";
pub const EMBED_SUM: &str = "vq_state.embed_sum";
pub const WINDOW: &str = "vq_state.window_counts";
pub const RESTARTS: &str = "vq_state.restarts";

/// The `Var`s updated outside the optimiser.
pub struct Buffers {
    pub codebook: Var,
    /// (K,) rows chosen per code since the last restart check.
    pub window: Var,
    /// (1,) codes moved by restarts so far.
    pub restarts: Var,
    /// EMA: (K,) cluster sizes and (K, D) sums.
    pub ema: Option<(Var, Var, EmaSettings)>,
}

/// What the micro-batches of the current step saw.
struct Seen {
    assignments: Assignments,
    /// (N, D) encoder outputs of the step's last micro-batch, for restarts.
    last_rows: Vec<f32>,
}

pub struct VqTask {
    model: VqVae,
    /// (N, 3, S, S) in [−1, 1].
    train: Tensor,
    eval: Tensor,
    /// Whether the codebook loss is part of the loss (`loss` update).
    codebook_loss: bool,
    buffers: Buffers,
    restart_every: usize,
    seed: u64,
    eval_batch: usize,
    seen: Mutex<Seen>,
}

impl VqTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: VqVae,
        train: Tensor,
        eval: Tensor,
        codebook_loss: bool,
        buffers: Buffers,
        restart_every: usize,
        seed: u64,
        eval_batch: usize,
    ) -> Result<Self> {
        let (k, d) = buffers.codebook.as_tensor().dims2()?;
        Ok(Self {
            model,
            train,
            eval,
            codebook_loss,
            buffers,
            restart_every,
            seed,
            eval_batch: eval_batch.max(1),
            seen: Mutex::new(Seen {
                assignments: Assignments::new(k, d),
                last_rows: Vec::new(),
            }),
        })
    }

    fn seen(&self) -> Result<std::sync::MutexGuard<'_, Seen>> {
        self.seen
            .lock()
            .map_err(|_| TrainError::State("vq statistics lock poisoned".into()))
    }

    /// The reconstruction's mean squared error, the quantiser's output
    /// (losses, codes) and the encoder's latents of `pixels`.
    ///
    /// # Shapes
    /// `pixels`: (B, 3, S, S) -> MSE (scalar), codes (B, h, w) in the
    /// [`Quantized`](glimpse_models::vq::Quantized), latents (B, D, h, w)
    fn forward(&self, pixels: &Tensor) -> Result<(Tensor, glimpse_models::vq::Quantized, Tensor)> {
        let z = self.model.latents(pixels)?;
        let q = self.model.quantizer().forward(&z)?;
        let recon = self.model.decode_latents(&q.quantized)?;
        let mse = (recon - pixels)?.sqr()?.mean_all()?;
        Ok((mse, q, z))
    }
}

/// (B, D, h, w) latents as (B·h·w, D) rows, the quantiser's order.
fn latent_rows(z: &Tensor) -> Result<Vec<f32>> {
    let d = z.dim(1)?;
    // (B, D, h, w) -> (B, h, w, D) -> (BHW, D)
    Ok(z.detach()
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape(((), d))?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn values(var: &Var) -> Result<Vec<f32>> {
    Ok(var.as_tensor().detach().flatten_all()?.to_vec1::<f32>()?)
}

fn set(var: &Var, data: Vec<f32>) -> Result<()> {
    let t = Tensor::from_vec(data, var.as_tensor().shape(), var.as_tensor().device())?;
    var.set(&t)?;
    Ok(())
}

impl Task for VqTask {
    fn len(&self) -> usize {
        self.train.dim(0).unwrap_or(0)
    }

    fn loss(&self, batch: &[usize], _seed: u64, _denominator: Option<usize>) -> Result<Tensor> {
        let idx: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
        let idx = Tensor::new(idx.as_slice(), self.train.device())?;
        let pixels = self.train.index_select(&idx, 0)?;
        let (mse, q, z) = self.forward(&pixels)?;
        let beta = self.model.quantizer().beta();
        let mut loss = (&mse + (&q.commitment * beta)?)?;
        if self.codebook_loss {
            loss = (loss + &q.codebook_loss)?;
        }
        let rows = latent_rows(&z)?;
        let codes = q.codes.flatten_all()?.to_vec1::<u32>()?;
        let mut seen = self.seen()?;
        seen.assignments.add(&rows, &codes);
        seen.last_rows = rows;
        Ok(loss)
    }

    fn after_step(&mut self, step: usize) -> Result<()> {
        let (k, d) = self.buffers.codebook.as_tensor().dims2()?;
        let seen = std::mem::replace(
            &mut *self.seen()?,
            Seen {
                assignments: Assignments::new(k, d),
                last_rows: Vec::new(),
            },
        );
        let mut codebook = values(&self.buffers.codebook)?;
        let mut ema = match &self.buffers.ema {
            Some((cs, es, settings)) => {
                let (mut c, mut e) = (values(cs)?, values(es)?);
                ema_update(&mut codebook, &mut c, &mut e, &seen.assignments, *settings);
                Some((c, e))
            }
            None => None,
        };
        let mut window = values(&self.buffers.window)?;
        for (w, n) in window.iter_mut().zip(&seen.assignments.counts) {
            *w += *n as f32;
        }
        let mut moved = false;
        if self.restart_every > 0 && step.is_multiple_of(self.restart_every) {
            let seed = name_seed(self.seed, &format!("vq/restart/{step}"));
            let dead = restart_dead_codes(
                &mut codebook,
                &mut window,
                &seen.last_rows,
                d,
                seed,
                ema.as_mut()
                    .map(|(c, e)| (c.as_mut_slice(), e.as_mut_slice())),
            );
            moved = !dead.is_empty();
            if moved {
                let before = values(&self.buffers.restarts)?[0];
                set(&self.buffers.restarts, vec![before + dead.len() as f32])?;
            }
        }
        if self.buffers.ema.is_some() || moved {
            set(&self.buffers.codebook, codebook)?;
        }
        if let (Some((cs, es, _)), Some((c, e))) = (&self.buffers.ema, ema) {
            set(cs, c)?;
            set(es, e)?;
        }
        set(&self.buffers.window, window)?;
        Ok(())
    }

    fn evaluate(&mut self) -> Result<EvalMetrics> {
        let n = self.eval.dim(0)?;
        let k = self.model.config().num_embeddings;
        let (mut mse_sum, mut psnr_sum, mut commit_sum) = (0.0f64, 0.0f64, 0.0f64);
        let mut codes: Vec<u32> = Vec::new();
        for start in (0..n).step_by(self.eval_batch) {
            let len = self.eval_batch.min(n - start);
            let pixels = self.eval.narrow(0, start, len)?;
            let z = self.model.latents(&pixels)?.detach();
            let q = self.model.quantizer().forward(&z)?;
            let recon = self.model.decode_latents(&q.quantized.detach())?.detach();
            // per image: mean squared error over (3, S, S)
            let per_image = (recon - &pixels)?
                .sqr()?
                .flatten_from(1)?
                .mean(1)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            for mse in per_image {
                mse_sum += mse;
                psnr_sum += glimpse_models::vq::psnr_db(mse);
            }
            commit_sum += f64::from(q.commitment.to_scalar::<f32>()?) * len as f64;
            codes.extend(q.codes.flatten_all()?.to_vec1::<u32>()?);
        }
        let stats = CodeStats::of_slice(&codes, k)?;
        let restarted = f64::from(values(&self.buffers.restarts)?[0]);
        let n = n.max(1) as f64;
        Ok(EvalMetrics {
            loss: Some(mse_sum / n),
            accuracy: None,
            extra: vec![
                ("psnr".into(), psnr_sum / n),
                ("codebook_usage".into(), stats.usage),
                ("perplexity".into(), stats.perplexity),
                ("commitment".into(), commit_sum / n),
                ("codes_restarted".into(), restarted),
            ],
        })
    }
}
