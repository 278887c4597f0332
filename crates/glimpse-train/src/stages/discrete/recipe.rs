//! A discrete-token recipe: `[vq]` (optional, the `vq` stage as a VQ
//! recipe runs it) trains the image tokenizer, then `[discrete]` trains a
//! decoder from scratch on easy-VQA with the VQ's codes in its vocabulary,
//! in both directions (image → answer, caption → image).
//!
//! ```toml
//! seed = 0
//! out = "runs/easy-vqa-discrete"
//! [data]
//! easy_vqa = "~/.cache/glimpse/easy-vqa"
//! [tokenizer]
//! vocab_size = 512          # the text BPE; markers and codes come on top
//! [vq]                      # as in a VQ recipe (or discrete.vq = a trained one)
//! image_size = 32
//! num_embeddings = 256
//! ...
//! [discrete]
//! generation_share = 0.5    # share of the rows that draw (caption -> codes)
//! uncond_share = 0.1        # of those, share with the caption dropped (for CFG)
//! answer_weight = 16        # an answer token counts 16 times (images have 65 labels)
//! steps = 2000
//! batch_size = 32
//! lr = 1e-3
//! [discrete.decoder]
//! hidden_size = 256
//! num_hidden_layers = 4
//! ...
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::recipe::{
    bounded, check_decoder_spec, field_at, number, read_recipe_text, toml_message, DecoderSpec,
    TokenizerSpec, MAX_ACCUMULATE, MAX_BATCH, MAX_SHARDS, MAX_STEPS, MAX_VOCAB,
};
use crate::stages::vq::recipe::{VqData, VqRecipe, VqSpec};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscreteRecipe {
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_out")]
    pub out: PathBuf,
    pub data: VqData,
    #[serde(default)]
    pub tokenizer: TokenizerSpec,
    pub vq: Option<VqSpec>,
    pub discrete: DiscreteSpec,
}

fn default_out() -> PathBuf {
    "runs/discrete".into()
}

/// `[discrete]`: the unified decoder and its optimisation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscreteSpec {
    /// A trained glimpse VQ-VAE folder (`OUT/vq/model` of a VQ run),
    /// instead of this recipe's `[vq]`.
    pub vq: Option<String>,
    pub decoder: DecoderSpec,
    /// Share of the training rows that are caption → image (the rest
    /// image → answer), by repeating the images' rows in the index space.
    #[serde(default = "dhalf")]
    pub generation_share: f64,
    /// Share of the generation rows whose caption is dropped (BOS then
    /// `<boi>`): the unconditional model classifier-free guidance needs.
    #[serde(default = "dtenth")]
    pub uncond_share: f64,
    /// Each answer token counts this many times in the loss (an answer is
    /// a couple of tokens, an image's codes dozens).
    #[serde(default = "d1")]
    pub answer_weight: usize,
    /// Held-out questions (teacher-forced exact match) and images (code
    /// loss) scored at each evaluation.
    #[serde(default = "d500")]
    pub eval_questions: usize,
    #[serde(default = "d200")]
    pub eval_images: usize,
    pub steps: usize,
    pub batch_size: usize,
    #[serde(default = "d1")]
    pub accumulate: usize,
    /// Parts each micro-batch is cut into, trained at once on their own
    /// threads (as the VLM stages' `shards`).
    #[serde(default = "d1")]
    pub shards: usize,
    pub lr: f64,
    #[serde(default = "dmin")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "dwd")]
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

impl DiscreteSpec {
    /// The optimisation fields.
    pub fn loop_spec(&self) -> crate::stage_loop::LoopSpec {
        crate::stage_loop::loop_spec_of!(self, self.accumulate, self.shards)
    }
}

fn d1() -> usize {
    1
}
fn d10() -> usize {
    10
}
fn d100() -> usize {
    100
}
fn d200() -> usize {
    200
}
fn d500() -> usize {
    500
}
fn dhalf() -> f64 {
    0.5
}
fn dtenth() -> f64 {
    0.1
}
fn dmin() -> f64 {
    0.1
}
fn dwd() -> f64 {
    0.1
}
fn dclip() -> f64 {
    1.0
}

/// Whether a recipe's text has a `[discrete]` section.
pub fn is_discrete_recipe(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("discrete"))
}

/// [`is_discrete_recipe`] of a file; one that cannot be read is not.
pub fn file_is_discrete_recipe(path: &Path) -> bool {
    glimpse_data::files::read_bounded_text(path, glimpse_data::files::MAX_CONFIG_BYTES, "recipe")
        .is_ok_and(|t| is_discrete_recipe(&t))
}

impl DiscreteRecipe {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(&read_recipe_text(path)?, path)
    }

    /// Parses and checks; errors are one line naming the field. `[vq]`
    /// gets the VQ recipe's own checks.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let err = |field: Option<String>, msg: String| TrainError::RecipeField {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let toml_err = |e: toml::de::Error| {
            let field = e.span().and_then(|s| field_at(text, s.start));
            err(field, toml_message(&e, text))
        };
        let table: toml::Table = toml::from_str(text).map_err(toml_err)?;
        let known = ["seed", "out", "data", "tokenizer", "vq", "discrete"];
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(err(
                Some(key.clone()),
                format!(
                    "[discrete] trains a discrete-token model in a recipe of its own: [{key}] does not belong here (sections: {})",
                    known.join(", ")
                ),
            ));
        }
        let recipe: DiscreteRecipe = toml::from_str(text).map_err(toml_err)?;
        if let Some(vq) = recipe.vq_recipe() {
            // the VQ recipe's own checks, its errors naming [vq]'s fields
            let vq_text =
                toml::to_string(&vq).map_err(|e| err(Some("vq".into()), e.to_string()))?;
            VqRecipe::from_toml(&vq_text, path)?;
        }
        recipe.check().map_err(|(f, m)| err(Some(f), m))?;
        Ok(recipe)
    }

    /// `[vq]` as the VQ recipe the `vq` stage runs.
    pub fn vq_recipe(&self) -> Option<VqRecipe> {
        self.vq.as_ref().map(|vq| VqRecipe {
            seed: self.seed,
            out: self.out.clone(),
            data: self.data.clone(),
            vq: vq.clone(),
        })
    }

    fn check(&self) -> std::result::Result<(), (String, String)> {
        let d = &self.discrete;
        match (&self.vq, &d.vq) {
            (Some(_), Some(_)) => {
                return Err((
                    "discrete.vq".into(),
                    "names a trained VQ, and [vq] trains one: keep one of them".into(),
                ))
            }
            (None, None) => {
                return Err((
                    "discrete.vq".into(),
                    "is missing: name a trained glimpse VQ folder, or add [vq] to train one".into(),
                ))
            }
            _ => {}
        }
        if self.data.easy_vqa.is_none() {
            return Err((
                "data.easy_vqa".into(),
                "is missing: [discrete] trains on easy-VQA's questions and images".into(),
            ));
        }
        if self.data.train_images == Some(0) {
            return Err((
                "data.train_images".into(),
                "0 leaves no training images".into(),
            ));
        }
        bounded(
            "tokenizer.vocab_size",
            self.tokenizer.vocab_size,
            8,
            MAX_VOCAB,
        )?;
        if d.decoder.from.is_some() {
            return Err((
                "discrete.decoder.from".into(),
                "[discrete] trains its decoder from scratch (the codes are new tokens); set its sizes".into(),
            ));
        }
        check_decoder_spec("discrete.decoder", &d.decoder)?;
        bounded("discrete.steps", d.steps, 1, MAX_STEPS)?;
        bounded("discrete.batch_size", d.batch_size, 1, MAX_BATCH)?;
        bounded("discrete.accumulate", d.accumulate, 1, MAX_ACCUMULATE)?;
        bounded("discrete.shards", d.shards, 1, MAX_SHARDS)?;
        bounded("discrete.warmup_steps", d.warmup_steps, 0, MAX_STEPS)?;
        bounded("discrete.answer_weight", d.answer_weight, 1, 1 << 16)?;
        bounded("discrete.eval_questions", d.eval_questions, 1, 1 << 20)?;
        bounded("discrete.eval_images", d.eval_images, 1, 1 << 20)?;
        number("discrete.lr", d.lr, 0.0, true, 1.0)?;
        number("discrete.min_lr_ratio", d.min_lr_ratio, 0.0, false, 1.0)?;
        number("discrete.weight_decay", d.weight_decay, 0.0, false, 1.0)?;
        number("discrete.grad_clip", d.grad_clip, 0.0, false, f64::MAX)?;
        number(
            "discrete.generation_share",
            d.generation_share,
            0.0,
            false,
            1.0,
        )?;
        number("discrete.uncond_share", d.uncond_share, 0.0, false, 1.0)?;
        Ok(())
    }
}
