//! Nearest-codebook vector quantisation (VQ-VAE, van den Oord et al. 2017,
//! §3.1-3.2), as transformers' `ChameleonVQVAEVectorQuantizer` computes it:
//! squared distances as ‖z‖² + ‖e‖² − 2 z·e, the first minimum, the
//! straight-through estimator for the encoder's gradient.
//!
//! Differentiable through candle's autograd: the codebook rows are picked
//! with `index_select` (whose backward scatters into the codebook), the
//! straight-through output is `z + sg(zq − z)`, and `argmin` (no gradient)
//! runs on detached tensors. The EMA codebook update and dead-code restarts
//! of a later training stage can use [`CodeStats::counts`].

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// The codebook and the commitment weight β.
pub struct Quantizer {
    /// (K, D): one row per code.
    embedding: Tensor,
    beta: f64,
}

/// What one quantisation pass gives.
pub struct Quantized {
    /// (B, D, H, W) codebook rows in the forward pass; the gradient passes
    /// to the encoder output unchanged (straight-through).
    pub quantized: Tensor,
    /// (B, H, W) u32 code indices.
    pub codes: Tensor,
    /// ‖zq − sg(z)‖² averaged: moves the codebook toward the encoder outputs.
    pub codebook_loss: Tensor,
    /// ‖sg(zq) − z‖² averaged: keeps the encoder near its codes.
    pub commitment: Tensor,
    /// `codebook_loss + β·commitment` (the paper's weighting).
    pub loss: Tensor,
}

impl Quantized {
    /// `commitment + β·codebook_loss`: what transformers' quantisers return
    /// as `embedding_loss` (taming-transformers' legacy weighting, β on the
    /// codebook term); kept for parity with their checkpoints' training.
    pub fn legacy_loss(&self, beta: f64) -> Result<Tensor> {
        &self.commitment + (&self.codebook_loss * beta)?
    }
}

impl Quantizer {
    pub fn new(num_embeddings: usize, embed_dim: usize, beta: f64, vb: VarBuilder) -> Result<Self> {
        // `embedding.weight` as transformers' nn.Embedding names it
        let embedding = vb.pp("embedding").get_with_hints(
            (num_embeddings, embed_dim),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(Self { embedding, beta })
    }

    /// A quantiser over an existing codebook tensor (a `Var` in training).
    pub fn from_codebook(embedding: Tensor, beta: f64) -> Self {
        Self { embedding, beta }
    }

    /// (K, D)
    pub fn codebook(&self) -> &Tensor {
        &self.embedding
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    pub fn num_embeddings(&self) -> usize {
        self.embedding.dim(0).unwrap_or(0)
    }

    /// The nearest codebook row of every row of `rows`.
    ///
    /// # Shapes
    /// `rows`: (N, D) -> (N,) u32
    pub fn nearest(&self, rows: &Tensor) -> Result<Tensor> {
        let rows = rows.detach();
        let e = self.embedding.detach();
        // (N, 1) + (K,) − 2 (N, K), in transformers' order of operations so
        // that the f32 rounding (and hence a near tie) goes the same way
        let z2 = rows.sqr()?.sum_keepdim(1)?;
        let e2 = e.sqr()?.sum(1)?;
        let cross = (rows.matmul(&e.t()?)? * 2.0)?;
        let dist = z2.broadcast_add(&e2)?.broadcast_sub(&cross)?;
        dist.argmin(1)
    }

    /// # Shapes
    /// `z`: (B, D, H, W) -> [`Quantized`] with (B, D, H, W) and (B, H, W)
    pub fn forward(&self, z: &Tensor) -> Result<Quantized> {
        let (b, d, h, w) = z.dims4()?;
        // (B, D, H, W) -> (B, H, W, D) -> (BHW, D)
        let rows = z.permute((0, 2, 3, 1))?.contiguous()?;
        let flat = rows.reshape((b * h * w, d))?;
        let codes = self.nearest(&flat)?;
        // (BHW, D) -> (B, H, W, D)
        let zq = self
            .embedding
            .index_select(&codes, 0)?
            .reshape((b, h, w, d))?;
        let codebook_loss = (&zq - rows.detach())?.sqr()?.mean_all()?;
        let commitment = (zq.detach() - &rows)?.sqr()?.mean_all()?;
        let loss = (&codebook_loss + (&commitment * self.beta)?)?;
        // straight-through: the value of zq, the gradient of z
        let st = (&rows + (&zq - &rows)?.detach())?;
        Ok(Quantized {
            // (B, H, W, D) -> (B, D, H, W)
            quantized: st.permute((0, 3, 1, 2))?.contiguous()?,
            codes: codes.reshape((b, h, w))?,
            codebook_loss,
            commitment,
            loss,
        })
    }

    /// Codebook rows of `codes`, L2-normalised when `l2` (Janus's decode).
    ///
    /// # Shapes
    /// `codes`: (B, H, W) u32 -> (B, D, H, W)
    pub fn lookup(&self, codes: &Tensor, l2: bool) -> Result<Tensor> {
        let (b, h, w) = codes.dims3()?;
        let d = self.embedding.dim(1)?;
        let rows = self.embedding.index_select(&codes.flatten_all()?, 0)?;
        let rows = if l2 {
            // F.normalize: x / max(‖x‖, 1e-12)
            let norm = rows.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
            rows.broadcast_div(&norm)?
        } else {
            rows
        };
        // (BHW, D) -> (B, H, W, D) -> (B, D, H, W)
        rows.reshape((b, h, w, d))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}

/// How a batch of codes uses the codebook: what a VQ trainer logs, and the
/// counts dead-code restarts look at.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeStats {
    /// Occurrences of each code, length K.
    pub counts: Vec<u64>,
    /// Codes used at least once.
    pub distinct: usize,
    /// `distinct / K`.
    pub usage: f64,
    /// exp of the entropy of the codes' empirical distribution: K when
    /// all are used equally, 1 when one code takes everything.
    pub perplexity: f64,
}

impl CodeStats {
    /// Statistics of `codes` (any shape, u32) over a codebook of
    /// `num_embeddings`; codes outside it are an error.
    pub fn of(codes: &Tensor, num_embeddings: usize) -> Result<Self> {
        let codes = codes
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        Self::of_slice(&codes, num_embeddings)
    }

    pub fn of_slice(codes: &[u32], num_embeddings: usize) -> Result<Self> {
        let mut counts = vec![0u64; num_embeddings];
        for &c in codes {
            match counts.get_mut(c as usize) {
                Some(n) => *n += 1,
                None => candle_core::bail!("code {c} is outside the codebook of {num_embeddings}"),
            }
        }
        let total = codes.len() as f64;
        let distinct = counts.iter().filter(|&&n| n > 0).count();
        let entropy: f64 = counts
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| {
                let p = n as f64 / total;
                -p * p.ln()
            })
            .sum();
        Ok(Self {
            counts,
            distinct,
            usage: if num_embeddings == 0 {
                0.0
            } else {
                distinct as f64 / num_embeddings as f64
            },
            perplexity: if codes.is_empty() { 0.0 } else { entropy.exp() },
        })
    }
}

/// PSNR in dB of a reconstruction of pixels that span [−1, 1] (what the
/// VQ models read): a peak-to-peak of 2, so `10·log10(4 / MSE)`; the same
/// figure as over 8-bit pixels, the ratio being scale-free.
pub fn psnr_db(mse: f64) -> f64 {
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

/// `distinct codes / K` of a batch of codes.
pub fn codebook_usage(codes: &Tensor, num_embeddings: usize) -> Result<f64> {
    Ok(CodeStats::of(codes, num_embeddings)?.usage)
}

/// exp(entropy) of a batch of codes' distribution over the codebook.
pub fn perplexity(codes: &Tensor, num_embeddings: usize) -> Result<f64> {
    Ok(CodeStats::of(codes, num_embeddings)?.perplexity)
}
