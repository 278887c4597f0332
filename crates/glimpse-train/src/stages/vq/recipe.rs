//! A VQ-VAE recipe: `[vq]` trains a glimpse VQ-VAE (`model_type`
//! `glimpse_vq`) from scratch on images, alone in its recipe (it shares no
//! weights with the VLM stages).
//!
//! ```toml
//! seed = 0
//! out = "runs/easy-vqa-vq"
//! [data]
//! easy_vqa = "~/.cache/glimpse/easy-vqa"   # train/ and test/ images
//! [vq]
//! image_size = 64
//! num_embeddings = 256
//! embed_dim = 8
//! steps = 2000
//! batch_size = 16
//! lr = 2e-4
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Result, TrainError};
use crate::recipe::{
    bounded, field_at, number, toml_message, MAX_BATCH, MAX_IMAGE_SIZE, MAX_STEPS,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VqRecipe {
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_out")]
    pub out: std::path::PathBuf,
    #[serde(default)]
    pub data: VqData,
    pub vq: VqSpec,
}

fn default_out() -> std::path::PathBuf {
    "runs/vq".into()
}

/// Where the images come from when `[vq] data` is not set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VqData {
    /// An easy-VQA root: `train/images/*.png` are trained on,
    /// `test/images/*.png` held out. `~` and `$VARS` expand.
    pub easy_vqa: Option<String>,
    /// Relative image paths of a `data` JSONL resolve against this folder
    /// (by default the file's own).
    pub image_folder: Option<String>,
    /// Train on the first N training images only.
    pub train_images: Option<usize>,
}

/// `[vq]`: the model's sizes and the optimisation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VqSpec {
    /// Image-caption JSONL (or LLaVA JSON) whose images are trained on
    /// (captions unused); with `eval_data` the held-out images.
    pub data: Option<String>,
    pub eval_data: Option<String>,
    /// Side of the square the images are resized to.
    pub image_size: usize,
    /// Conv width of the first level (a multiple of 32: GroupNorm's groups).
    #[serde(default = "d32")]
    pub base_channels: usize,
    /// Per level, a multiple of `base_channels`; every level but the last
    /// halves the image, so `image_size` must divide by 2^(levels − 1).
    #[serde(default = "dmult")]
    pub channel_multiplier: Vec<usize>,
    #[serde(default = "d1")]
    pub num_res_blocks: usize,
    /// Encoder output / decoder input channels.
    #[serde(default = "d32")]
    pub latent_channels: usize,
    /// Width of a code (the codebook's rows).
    #[serde(default = "d8")]
    pub embed_dim: usize,
    /// Codebook size K.
    pub num_embeddings: usize,
    /// Weight of the commitment loss.
    #[serde(default = "dbeta")]
    pub beta: f64,
    /// `ema`: the codebook follows the moving average of the encoder
    /// outputs chosen for each code; `loss`: it learns by gradient from the
    /// codebook loss ‖sg(z) − e‖².
    #[serde(default = "dema")]
    pub codebook_update: String,
    #[serde(default = "ddecay")]
    pub ema_decay: f64,
    #[serde(default = "deps")]
    pub ema_epsilon: f64,
    /// Every this many steps, codes no batch chose since the last restart
    /// move onto random encoder outputs of the batch (0: never).
    #[serde(default = "drestart")]
    pub restart_every: usize,
    /// Held-out images scored at each evaluation.
    #[serde(default = "deval")]
    pub eval_images: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default = "dmin")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "dclip")]
    pub grad_clip: f64,
    #[serde(default = "d10")]
    pub log_every: usize,
    /// 0: evaluate only at the end.
    #[serde(default)]
    pub eval_every: usize,
    /// 0: checkpoint only at the end.
    #[serde(default = "d100")]
    pub save_every: usize,
}

impl VqSpec {
    /// The optimisation fields (whole batches, one shard: the EMA update
    /// and dead-code restarts read the whole batch).
    pub fn loop_spec(&self) -> crate::stage_loop::LoopSpec {
        crate::stage_loop::loop_spec_of!(self, 1, 1)
    }
}

fn d1() -> usize {
    1
}
fn d8() -> usize {
    8
}
fn d10() -> usize {
    10
}
fn d32() -> usize {
    32
}
fn d100() -> usize {
    100
}
fn dmult() -> Vec<usize> {
    vec![1, 1, 2]
}
fn dbeta() -> f64 {
    0.25
}
fn dema() -> String {
    "ema".into()
}
fn ddecay() -> f64 {
    0.99
}
fn deps() -> f64 {
    1e-5
}
fn drestart() -> usize {
    50
}
fn deval() -> usize {
    64
}
fn dmin() -> f64 {
    0.1
}
fn dclip() -> f64 {
    1.0
}

/// Whether a recipe's text is a VQ recipe (has a `[vq]` section).
pub fn is_vq_recipe(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("vq"))
}

/// [`is_vq_recipe`] of a file; one that cannot be read is not (the VLM
/// recipe reader then names the problem).
pub fn file_is_vq_recipe(path: &Path) -> bool {
    glimpse_data::files::read_bounded_text(path, glimpse_data::files::MAX_CONFIG_BYTES, "recipe")
        .is_ok_and(|t| is_vq_recipe(&t))
}

impl VqRecipe {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(&crate::recipe::read_recipe_text(path)?, path)
    }

    /// Parses and checks; errors are one line naming the field.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let err = |field: Option<String>, msg: String| TrainError::RecipeField {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let field = e.span().and_then(|s| field_at(text, s.start));
            err(field, toml_message(&e, text))
        })?;
        let known = ["seed", "out", "data", "vq"];
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(err(
                Some(key.clone()),
                format!(
                    "[vq] trains a VQ-VAE in a recipe of its own: [{key}] does not belong here (sections: {})",
                    known.join(", ")
                ),
            ));
        }
        let recipe: VqRecipe = toml::from_str(text).map_err(|e| {
            let field = e.span().and_then(|s| field_at(text, s.start));
            err(field, toml_message(&e, text))
        })?;
        recipe.check().map_err(|(f, m)| err(Some(f), m))?;
        Ok(recipe)
    }

    fn check(&self) -> std::result::Result<(), (String, String)> {
        let v = &self.vq;
        bounded("vq.steps", v.steps, 1, MAX_STEPS)?;
        bounded("vq.batch_size", v.batch_size, 1, MAX_BATCH)?;
        bounded("vq.warmup_steps", v.warmup_steps, 0, MAX_STEPS)?;
        bounded("vq.eval_images", v.eval_images, 1, 1 << 20)?;
        number("vq.lr", v.lr, 0.0, true, 1.0)?;
        number("vq.min_lr_ratio", v.min_lr_ratio, 0.0, false, 1.0)?;
        number("vq.weight_decay", v.weight_decay, 0.0, false, 1.0)?;
        number("vq.grad_clip", v.grad_clip, 0.0, false, f64::MAX)?;
        number("vq.beta", v.beta, 0.0, false, 1e6)?;
        number("vq.ema_decay", v.ema_decay, 0.0, false, 0.999_999)?;
        number("vq.ema_epsilon", v.ema_epsilon, 0.0, true, 1.0)?;
        if !["ema", "loss"].contains(&v.codebook_update.as_str()) {
            return Err((
                "vq.codebook_update".into(),
                format!("'{}' is not ema or loss", v.codebook_update),
            ));
        }
        if v.num_embeddings == 0 {
            return Err((
                "vq.num_embeddings".into(),
                "0: the codebook needs at least one code".into(),
            ));
        }
        bounded("vq.num_embeddings", v.num_embeddings, 1, 1 << 20)?;
        bounded("vq.image_size", v.image_size, 1, MAX_IMAGE_SIZE)?;
        let levels = v.channel_multiplier.len();
        bounded("vq.channel_multiplier (levels)", levels, 1, 8)?;
        let f = 1usize << (levels - 1);
        if !v.image_size.is_multiple_of(f) {
            return Err((
                "vq.image_size".into(),
                format!(
                    "{} does not divide by {f}, the downsampling factor of {levels} levels (each but the last halves the image)",
                    v.image_size
                ),
            ));
        }
        if self.data.train_images == Some(0) {
            return Err((
                "data.train_images".into(),
                "0 leaves no training images".into(),
            ));
        }
        match (&v.data, &v.eval_data, &self.data.easy_vqa) {
            (Some(_), Some(_), _) | (None, None, Some(_)) => {}
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err((
                    "vq.eval_data".into(),
                    "data and eval_data go together: the stage is scored on held-out images".into(),
                ))
            }
            (None, None, None) => {
                return Err((
                    "data.easy_vqa".into(),
                    "is missing: set it, or [vq] data and eval_data".into(),
                ))
            }
        }
        // the model's own checks (channels, GroupNorm groups, ranges)
        glimpse_models::vq::VqConfig::from_value(&self.config_json())
            .map_err(|m| ("vq".to_string(), m))?;
        Ok(())
    }

    /// The exported model's `config.json` (glimpse's VQ format).
    pub fn config_json(&self) -> Value {
        let v = &self.vq;
        json!({
            "model_type": "glimpse_vq",
            "in_channels": 3,
            "out_channels": 3,
            "base_channels": v.base_channels,
            "channel_multiplier": v.channel_multiplier,
            "num_res_blocks": v.num_res_blocks,
            "latent_channels": v.latent_channels,
            "embed_dim": v.embed_dim,
            "num_embeddings": v.num_embeddings,
            "beta": v.beta,
            // level indices with attention: none (plain convs train fast on
            // a CPU); the middle keeps its attention block
            "attn_resolutions": [],
            "image_size": v.image_size,
        })
    }

    /// `preprocessor_config.json` of the exported model: a square resize
    /// (bicubic) and pixels scaled to [−1, 1], what training feeds it.
    pub fn processor_json(&self) -> Value {
        let s = self.vq.image_size;
        json!({
            "image_processor_type": "GlimpseVqImageProcessor",
            "do_resize": true,
            "size": {"height": s, "width": s},
            "resample": 3,
            "do_center_crop": false,
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "do_convert_rgb": true,
        })
    }
}
