//! Llama 3.2 Vision's image tower (HF `MllamaVisionModel`): every tile of
//! an image through a strided patch conv, a tile embedding chosen by the
//! image's aspect ratio (gated) before the class token, the gated mix of
//! position and per-arrangement tile-position embeddings, a local encoder
//! over all tiles of the image at once whose chosen layers' outputs are kept,
//! a second tile embedding and a gated global encoder, and the final state
//! concatenated with the kept ones (`vision_output_dim` wide).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};
use crate::mllama::config::MllamaVisionConfig;
use crate::mllama::vision_layer::MllamaVisionLayer;
use crate::nn::layer_norm::layer_norm;
use crate::nn::LayerNorm;

/// `MllamaPrecomputedAspectRatioEmbedding`: one (tiles·D) row per
/// aspect-ratio id, added to every patch of each tile, scaled by tanh(gate).
struct TileEmbedding {
    /// (ids, T·D)
    embedding: Tensor,
    /// tanh(gate), (1,)
    gate: Tensor,
}

impl TileEmbedding {
    fn new(cfg: &MllamaVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (t, d) = (cfg.max_num_tiles, cfg.hidden_size);
        Ok(Self {
            embedding: vb
                .pp("embedding")
                .get((cfg.aspect_ratio_rows(), t * d), "weight")?,
            gate: vb.get_with_hints(1, "gate", Init::Const(0.0))?.tanh()?,
        })
    }

    /// # Shapes
    /// `xs`: (N, T, L, D), `ids`: (N,) u32 -> (N, T, L, D)
    fn forward(&self, xs: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (n, t, _, d) = xs.dims4()?;
        // (N, T·D) -> (N, T, 1, D)
        let rows = self.embedding.index_select(ids, 0)?.reshape((n, t, 1, d))?;
        Ok(xs.broadcast_add(&rows.broadcast_mul(&self.gate)?)?)
    }
}

pub struct MllamaVisionModel {
    /// The conv kernel as a matrix, (D, C·p·p).
    patch_embedding: Tensor,
    /// (D)
    class_embedding: Tensor,
    /// `gated_positional_embedding.embedding` (P, D) scaled by 1 - tanh(gate)
    positions: Tensor,
    /// `gated_positional_embedding.tile_embedding` (ids, T·P·D)
    tile_positions: Tensor,
    /// tanh(`gated_positional_embedding.gate`), (1,)
    position_gate: Tensor,
    pre_tile_positional_embedding: TileEmbedding,
    post_tile_positional_embedding: TileEmbedding,
    layernorm_pre: LayerNorm,
    layernorm_post: LayerNorm,
    transformer: Vec<MllamaVisionLayer>,
    global_transformer: Vec<MllamaVisionLayer>,
    cfg: MllamaVisionConfig,
}

impl MllamaVisionModel {
    /// Tensors under `vb` as `model.vision_model` names them.
    pub fn new(cfg: &MllamaVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let (t, np) = (cfg.max_num_tiles, cfg.num_patches());
        let conv = vb.pp("patch_embedding").get((d, c, p, p), "weight")?;
        let gpe = vb.pp("gated_positional_embedding");
        let position_gate = gpe.get_with_hints(1, "gate", Init::Const(0.0))?.tanh()?;
        // (1 - tanh(gate)) · embedding, as the forward adds it
        let positions = gpe
            .get((np, d), "embedding")?
            .broadcast_mul(&position_gate.affine(-1.0, 1.0)?)?;
        let encoder = |name: &str, layers: usize, gated: bool| -> Result<Vec<MllamaVisionLayer>> {
            let vb = vb.pp(name).pp("layers");
            (0..layers)
                .map(|i| MllamaVisionLayer::new(cfg, gated, vb.pp(i)))
                .collect()
        };
        Ok(Self {
            patch_embedding: conv.reshape((d, c * p * p))?,
            class_embedding: vb.get(d, "class_embedding")?,
            positions,
            tile_positions: gpe
                .pp("tile_embedding")
                .get((cfg.aspect_ratio_rows(), t * np * d), "weight")?,
            position_gate,
            pre_tile_positional_embedding: TileEmbedding::new(
                cfg,
                vb.pp("pre_tile_positional_embedding"),
            )?,
            post_tile_positional_embedding: TileEmbedding::new(
                cfg,
                vb.pp("post_tile_positional_embedding"),
            )?,
            // nn.LayerNorm(hidden_size): torch's default eps, not norm_eps
            layernorm_pre: layer_norm(d, 1e-5, vb.pp("layernorm_pre"))?,
            layernorm_post: layer_norm(d, 1e-5, vb.pp("layernorm_post"))?,
            transformer: encoder("transformer", cfg.num_hidden_layers, false)?,
            global_transformer: encoder("global_transformer", cfg.num_global_layers, true)?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &MllamaVisionConfig {
        &self.cfg
    }

    /// N images, each as its `max_num_tiles` tiles.
    ///
    /// `aspect_ratio_ids[n]`: the image's arrangement id (1-based; 0 is no
    /// image); `aspect_ratio_mask[n][j]`: 1 for a real tile.
    ///
    /// # Shapes
    /// `pixels`: (N, T, C, S, S) -> (N, T, P, vision_output_dim), P = patches + 1
    pub fn forward(
        &self,
        pixels: &Tensor,
        aspect_ratio_ids: &[u32],
        aspect_ratio_mask: &[Vec<u32>],
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n, t, c, h, w) = pixels.dims5()?;
        let (d, p, s) = (cfg.hidden_size, cfg.patch_size, cfg.image_size);
        if t != cfg.max_num_tiles || c != cfg.num_channels || h != s || w != s {
            return Err(ModelError::Input(format!(
                "pixel values are {:?}; the Mllama tower takes (N, {}, {}, {s}, {s}) (max_num_tiles tiles of image_size)",
                pixels.dims(),
                cfg.max_num_tiles,
                cfg.num_channels
            )));
        }
        if aspect_ratio_ids.len() != n
            || aspect_ratio_mask.len() != n
            || aspect_ratio_mask.iter().any(|m| m.len() != t)
        {
            return Err(ModelError::Input(format!(
                "aspect ratio ids/mask for {} images, pixel values for {n}",
                aspect_ratio_ids.len()
            )));
        }
        if let Some(bad) = aspect_ratio_ids
            .iter()
            .find(|&&id| id as usize >= cfg.aspect_ratio_rows())
        {
            return Err(ModelError::Input(format!(
                "aspect ratio id {bad} is beyond the model's {} supported aspect ratios",
                cfg.supported_aspect_ratios.len()
            )));
        }
        let dev = pixels.device();
        let dtype = self.patch_embedding.dtype();
        let ids = Tensor::from_slice(aspect_ratio_ids, n, dev)?;
        let g = s / p;
        let patches = g * g;
        // (N, T, C, g, p, g, p) -> (N·T·g·g, C·p·p): each patch's pixels in
        // the conv kernel's (C, p, p) order
        let rows = pixels
            .to_dtype(dtype)?
            .reshape((n * t, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * t * patches, c * p * p))?;
        let xs =
            crate::nn::Linear::new(self.patch_embedding.clone(), None).forward_no_bias(&rows)?;
        // (N·T·g², D) -> (N, T, g², D)
        let xs = xs.reshape((n, t, patches, d))?;
        let xs = self.pre_tile_positional_embedding.forward(&xs, &ids)?;
        // class token first in every tile: (N, T, 1 + g², D)
        let cls = self
            .class_embedding
            .to_dtype(dtype)?
            .reshape((1, 1, 1, d))?
            .broadcast_as((n, t, 1, d))?;
        let xs = Tensor::cat(&[&cls, &xs], 2)?;
        let np = patches + 1;
        // gated positions: (1 - tanh g)·pos (P, D) + tanh g · tile_pos[id] (T, P, D)
        let tile_pos = self
            .tile_positions
            .index_select(&ids, 0)?
            .reshape((n, t, np, d))?
            .broadcast_mul(&self.position_gate)?;
        let xs = xs.broadcast_add(&self.positions)?;
        let xs = (xs + tile_pos)?;
        let xs = self.layernorm_pre.forward(&xs)?;
        // each tile padded with zero rows to a multiple of 8
        let pad = (8 - np % 8) % 8;
        let lp = np + pad;
        let xs = if pad > 0 {
            Tensor::cat(&[&xs, &Tensor::zeros((n, t, pad, d), xs.dtype(), dev)?], 2)?
        } else {
            xs
        };
        let mask = tile_attention_mask(aspect_ratio_mask, np, lp, dev)?;
        // all tiles of an image attend jointly: (N, T, L', D) -> (N, T·L', D)
        let mut xs = xs.reshape((n, t * lp, d))?;
        // the chosen layers' outputs, only those kept (0-based layer index)
        let mut chosen = std::collections::BTreeMap::new();
        for (i, layer) in self.transformer.iter().enumerate() {
            xs = layer.forward(&xs, &mask)?;
            if cfg.intermediate_layers_indices.contains(&i) {
                chosen.insert(i, xs.clone());
            }
        }
        let kept = cfg
            .intermediate_layers_indices
            .iter()
            .filter_map(|i| chosen.get(i).cloned())
            .collect::<Vec<_>>();
        let xs = self.layernorm_post.forward(&xs)?;
        // (N, T·L', D) -> (N, T, L', D)
        let xs = self
            .post_tile_positional_embedding
            .forward(&xs.reshape((n, t, lp, d))?, &ids)?;
        let mut xs = xs.reshape((n, t * lp, d))?;
        for layer in &self.global_transformer {
            xs = layer.forward(&xs, &mask)?;
        }
        // (N, T·L', D) -> (N, T, L', D) -> the pad rows dropped (N, T, P, D)
        let last = xs.reshape((n, t, lp, d))?.narrow(2, 0, np)?;
        // k x (N, T·L', D) stacked last: (N, T·L', D, k) -> (N, T, L', D·k),
        // each feature's k values side by side, as torch.stack(dim=-1) lays them
        let k = kept.len();
        let out = if k == 0 {
            last
        } else {
            let inter = Tensor::stack(&kept, 3)?
                .reshape((n, t, lp, d * k))?
                .narrow(2, 0, np)?;
            Tensor::cat(&[&last, &inter], D::Minus1)?
        };
        Ok(out.contiguous()?)
    }
}

/// `_prepare_aspect_ratio_attention_mask`: position j (tile j / L', row
/// j % L') is "masked" when its tile is padding or it is a pad row; the
/// additive bias of (i, j) is f32::MIN when both i and j are masked, else
/// 0. So real positions see everything, pad rows and padding tiles
/// included, as transformers computes it. (Its `[-pad:]` slice with no pad
/// rows would mark every row; `np` + pad is never a multiple of 8 without
/// pad rows for a square patch grid, since g² + 1 is never 0 mod 8.)
///
/// # Shapes
/// returns (N, 1, T·L', T·L') f32
fn tile_attention_mask(
    aspect_ratio_mask: &[Vec<u32>],
    np: usize,
    lp: usize,
    dev: &Device,
) -> Result<Tensor> {
    let n = aspect_ratio_mask.len();
    let t = aspect_ratio_mask.first().map_or(0, Vec::len);
    let l = t * lp;
    let mut data = vec![0f32; n * l * l];
    for (img, tiles) in aspect_ratio_mask.iter().enumerate() {
        let masked: Vec<bool> = (0..l)
            .map(|j| {
                let (tile, row) = (j / lp, j % lp);
                let pad_row = if lp > np { row >= np } else { true };
                tiles[tile] == 0 || pad_row
            })
            .collect();
        let block = &mut data[img * l * l..(img + 1) * l * l];
        for (i, &mi) in masked.iter().enumerate() {
            if !mi {
                continue;
            }
            for (j, &mj) in masked.iter().enumerate() {
                if mj {
                    block[i * l + j] = f32::MIN;
                }
            }
        }
    }
    Ok(Tensor::from_vec(data, (n, 1, l, l), dev)?.to_dtype(DType::F32)?)
}
