//! A config against the checkpoint's tensor shapes (the safetensors header),
//! before the model is built.
//!
//! Building allocates what the config sizes: a zero placeholder for every
//! tensor that is missing or misshaped (so that [`crate::weights`] can report
//! them all), per-layer state for `num_hidden_layers` layers. A config whose
//! `vocab_size` or layer count disagrees with the file would make those
//! allocations first and fail after; here the fields that size the largest
//! tensors are compared with the header, and the first disagreement is
//! reported naming both the field and the tensor. Missing tensors are left to
//! the strict loader's report.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::ConfigError;
use crate::text::{DecoderConfig, TextConfig};
use crate::vision::{VitConfig, VitFlavor};

/// The tensor shapes of one checkpoint, and what messages call the file.
pub(crate) struct Shapes<'a> {
    map: &'a BTreeMap<String, Vec<usize>>,
    file: String,
}

impl<'a> Shapes<'a> {
    pub fn new(map: &'a BTreeMap<String, Vec<usize>>, file: &std::path::Path) -> Self {
        let file = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        Self { map, file }
    }

    fn get(&self, name: &str) -> Option<&'a [usize]> {
        self.map.get(name).map(Vec::as_slice)
    }

    /// `field` is `value`, but tensor `name` says otherwise.
    fn disagree(&self, field: &str, value: impl std::fmt::Display, name: &str) -> ConfigError {
        let dims = self.get(name).unwrap_or(&[]);
        ConfigError::new(
            field,
            format!(
                "is {value} but tensor {name} in {} has shape {dims:?}",
                self.file
            ),
        )
    }

    /// Dimension `axis` of tensor `name` must be `want` (the value of
    /// `field`); a tensor of another rank is left to the strict loader.
    fn expect(
        &self,
        name: &str,
        rank: usize,
        axis: usize,
        field: &str,
        want: usize,
    ) -> Result<(), ConfigError> {
        match self.get(name) {
            Some(dims) if dims.len() == rank && dims[axis] != want => {
                Err(self.disagree(field, want, name))
            }
            _ => Ok(()),
        }
    }

    /// `field` (`want` layers) against the layer indices under `prefix`
    /// (`model.layers`): the file must hold layers 0..want.
    fn layers(&self, prefix: &str, field: &str, want: usize) -> Result<(), ConfigError> {
        let start = format!("{prefix}.");
        let found: BTreeSet<usize> = self
            .map
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .filter_map(|(k, _)| k[start.len()..].split('.').next()?.parse().ok())
            .collect();
        let Some(&last) = found.last() else {
            // No layer at all: every tensor is reported missing, and no
            // layer count can be read; a bounded config builds cheaply.
            return Ok(());
        };
        if last + 1 != want {
            return Err(ConfigError::new(
                field,
                format!(
                    "is {want} but {} holds {} layers ({prefix}.0 to {prefix}.{last})",
                    self.file,
                    last + 1
                ),
            ));
        }
        Ok(())
    }
}

/// A Llama-family decoder under `prefix` (`model`), its head at `head`.
pub(crate) fn decoder(
    cfg: &DecoderConfig,
    s: &Shapes,
    prefix: &str,
    head: &str,
) -> Result<(), ConfigError> {
    let embed = format!("{prefix}.embed_tokens.weight");
    s.expect(&embed, 2, 0, "vocab_size", cfg.vocab_size)?;
    s.expect(&embed, 2, 1, "hidden_size", cfg.hidden_size)?;
    s.layers(
        &format!("{prefix}.layers"),
        "num_hidden_layers",
        cfg.num_hidden_layers,
    )?;
    let layer = format!("{prefix}.layers.0");
    let q = format!("{layer}.self_attn.q_proj.weight");
    let q_rows = cfg.num_attention_heads * cfg.head_dim;
    if matches!(s.get(&q), Some([rows, _]) if *rows != q_rows) {
        return Err(s.disagree(
            "num_attention_heads",
            format!(
                "{} (× head_dim {} = {q_rows} query rows)",
                cfg.num_attention_heads, cfg.head_dim
            ),
            &q,
        ));
    }
    let k = format!("{layer}.self_attn.k_proj.weight");
    let kv_rows = cfg.num_key_value_heads * cfg.head_dim;
    if matches!(s.get(&k), Some([rows, _]) if *rows != kv_rows) {
        return Err(s.disagree(
            "num_key_value_heads",
            format!(
                "{} (× head_dim {} = {kv_rows} key rows)",
                cfg.num_key_value_heads, cfg.head_dim
            ),
            &k,
        ));
    }
    s.expect(&q, 2, 1, "hidden_size", cfg.hidden_size)?;
    let gate = format!("{layer}.mlp.gate_proj.weight");
    s.expect(&gate, 2, 0, "intermediate_size", cfg.intermediate_size)?;
    if !cfg.tie_word_embeddings {
        s.expect(
            &format!("{head}.weight"),
            2,
            0,
            "vocab_size",
            cfg.vocab_size,
        )?;
    }
    Ok(())
}

/// The sizes an encoder stack under `prefix` (`vision_model`) shares.
fn encoder(
    s: &Shapes,
    prefix: &str,
    layers: usize,
    hidden: usize,
    intermediate: usize,
) -> Result<(), ConfigError> {
    s.layers(
        &format!("{prefix}.encoder.layers"),
        "num_hidden_layers",
        layers,
    )?;
    let fc1 = format!("{prefix}.encoder.layers.0.mlp.fc1.weight");
    s.expect(&fc1, 2, 0, "intermediate_size", intermediate)?;
    s.expect(&fc1, 2, 1, "hidden_size", hidden)
}

/// A CLIP or SigLIP vision tower under `prefix`.
pub(crate) fn vision(cfg: &VitConfig, s: &Shapes, prefix: &str) -> Result<(), ConfigError> {
    let d = cfg.encoder.hidden_size;
    // (D, C, p, p)
    let patch = format!("{prefix}.embeddings.patch_embedding.weight");
    s.expect(&patch, 4, 0, "hidden_size", d)?;
    s.expect(&patch, 4, 1, "num_channels", cfg.num_channels)?;
    s.expect(&patch, 4, 2, "patch_size", cfg.patch_size)?;
    s.expect(&patch, 4, 3, "patch_size", cfg.patch_size)?;
    // (grid² [+ 1 class token], D)
    let positions = format!("{prefix}.embeddings.position_embedding.weight");
    let rows = cfg.grid() * cfg.grid() + usize::from(cfg.flavor == VitFlavor::Clip);
    if matches!(s.get(&positions), Some([n, _]) if *n != rows) {
        return Err(s.disagree(
            "image_size",
            format!(
                "{} (with patch_size {}: {rows} positions)",
                cfg.image_size, cfg.patch_size
            ),
            &positions,
        ));
    }
    s.expect(&positions, 2, 1, "hidden_size", d)?;
    encoder(
        s,
        prefix,
        cfg.encoder.num_hidden_layers,
        d,
        cfg.encoder.intermediate_size,
    )
}

/// A CLIP or SigLIP text tower under `prefix`.
pub(crate) fn text(cfg: &TextConfig, s: &Shapes, prefix: &str) -> Result<(), ConfigError> {
    let d = cfg.encoder.hidden_size;
    let tokens = format!("{prefix}.embeddings.token_embedding.weight");
    s.expect(&tokens, 2, 0, "vocab_size", cfg.vocab_size)?;
    s.expect(&tokens, 2, 1, "hidden_size", d)?;
    let positions = format!("{prefix}.embeddings.position_embedding.weight");
    s.expect(
        &positions,
        2,
        0,
        "max_position_embeddings",
        cfg.max_position_embeddings,
    )?;
    encoder(
        s,
        prefix,
        cfg.encoder.num_hidden_layers,
        d,
        cfg.encoder.intermediate_size,
    )
}

/// A CLIP projection `name` ((projection_dim, width)).
pub(crate) fn projection(s: &Shapes, name: &str, dim: usize) -> Result<(), ConfigError> {
    s.expect(name, 2, 0, "projection_dim", dim)
}
