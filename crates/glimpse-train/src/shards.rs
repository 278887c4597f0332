//! Data-parallel shards of a batch on CPU threads.
//!
//! On a few cores, one batch run with every op split across threads spends
//! much of its time keeping the threads in step: each op (hundreds per
//! step) is a fork and a join, and the ops too small to split leave the
//! other cores waiting. Here the batch is cut into shards, each shard's
//! forward and backward runs start to end on its own thread (its ops
//! serial, its gemms in cache), and the shards' gradients are added. On
//! bench-train (2 cores) this took 23.6 examples/s to 32.2 (BENCHMARKS.md).
//!
//! The result does not depend on the thread count: a shard is the same
//! rows whichever thread runs it, one shard's ops give the same numbers on
//! one thread or several (gemm splits rows and columns, never the
//! reduction), and the gradients are added in shard order.
//!
//! candle's own pool for elementwise ops (`CANDLE_NUM_THREADS`) serialises
//! its callers on a lock and spins a worker between calls: with two shard
//! threads calling it, bench-train fell to 16–18 examples/s. A process that
//! trains with shards sets `CANDLE_NUM_THREADS=1` before its first tensor
//! op ([`prefer_shard_threads`]).

use std::ops::Range;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{Result, TrainError};
use crate::optim::GradAccumulator;

/// Runs the shards of a batch on pools of threads and adds their gradients.
pub struct ShardRunner {
    shards: usize,
    /// One pool per concurrently running shard; shard `i` runs on pool
    /// `i % pools.len()`.
    pools: Vec<rayon::ThreadPool>,
}

impl ShardRunner {
    /// `shards` parts per batch on `threads` threads: min(shards, threads)
    /// shards run at once, each on `threads / that` threads (the first
    /// pools take the remainder).
    pub fn new(shards: usize, threads: usize) -> Result<Self> {
        if shards == 0 {
            return Err(TrainError::Config("shards must be at least 1".into()));
        }
        let running = shards.min(threads.max(1));
        let threads = threads.max(running);
        let pools = (0..running)
            .map(|i| {
                let n = threads / running + usize::from(i < threads % running);
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |t| format!("glimpse-shard-{i}.{t}"))
                    .build()
                    .map_err(|e| TrainError::Config(format!("shard thread pool: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shards, pools })
    }

    /// `shards` parts on candle's thread count (`RAYON_NUM_THREADS`, else
    /// the physical cores).
    pub fn with_default_threads(shards: usize) -> Result<Self> {
        Self::new(shards, candle_core::utils::get_num_threads())
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The rows of each shard of a batch of `rows`: contiguous, in order,
    /// sizes differing by at most one; empty shards are left out.
    pub fn split(&self, rows: usize) -> Vec<Range<usize>> {
        let (base, extra) = (rows / self.shards, rows % self.shards);
        let mut start = 0;
        (0..self.shards)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let r = start..start + len;
                start += len;
                r
            })
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Runs `loss(shard_rows)` and its backward for each shard of a batch
    /// of `rows`, on the shard's own thread, and returns the sum of the
    /// shard losses and of their gradients with respect to `vars` (vars no
    /// shard reached are absent). Each shard's loss must be its part of
    /// the batch's loss (its terms over the whole batch's count), so that
    /// the sums are the batch's.
    pub fn loss_and_grads<F>(&self, rows: usize, vars: &[Var], loss: F) -> Result<(f64, GradStore)>
    where
        F: Fn(Range<usize>) -> Result<Tensor> + Sync,
    {
        let parts = self.split(rows);
        let run = |range: Range<usize>| -> Result<(f64, GradStore)> {
            let l = loss(range)?;
            let value = f64::from(l.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
            Ok((value, l.backward()?))
        };
        type ShardOut = Result<(f64, GradStore)>;
        let mut results: Vec<Option<ShardOut>> = (0..parts.len()).map(|_| None).collect();
        if parts.len() == 1 {
            results[0] = Some(self.pools[0].install(|| run(parts[0].clone())));
        } else {
            let done: Vec<Vec<(usize, ShardOut)>> = std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .pools
                    .iter()
                    .enumerate()
                    .map(|(p, pool)| {
                        let (parts, run) = (&parts, &run);
                        s.spawn(move || {
                            // This pool's shards, one after another.
                            (p..parts.len())
                                .step_by(self.pools.len())
                                .map(|i| (i, pool.install(|| run(parts[i].clone()))))
                                .collect()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            for (i, out) in done.into_iter().flatten() {
                results[i] = Some(out);
            }
        }
        let mut total = 0.0;
        let mut sums = GradAccumulator::new(vars.to_vec());
        // In shard order, so the sums do not depend on which thread
        // finished first.
        for r in results {
            let (value, grads) =
                r.ok_or_else(|| TrainError::Config("a shard's thread panicked".into()))??;
            total += value;
            sums.add(&grads)?;
        }
        Ok((total, sums.take_sum()))
    }
}

/// Makes candle run its elementwise ops on the calling thread (see the
/// module note), unless the user set `CANDLE_NUM_THREADS`. Call it before
/// the first tensor op of a process that trains with shards: candle reads
/// the variable once.
pub fn prefer_shard_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_in_order_and_skips_empty_shards() -> Result<()> {
        let r = ShardRunner::new(3, 1)?;
        assert_eq!(r.split(7), vec![0..3, 3..5, 5..7]);
        assert_eq!(r.split(2), vec![0..1, 1..2]);
        assert_eq!(r.split(0), Vec::<Range<usize>>::new());
        assert!(ShardRunner::new(0, 2).is_err());
        Ok(())
    }
}
