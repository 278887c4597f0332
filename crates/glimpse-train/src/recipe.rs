//! Recipe TOML: the model to build, the data, and one section per training
//! stage. Stages run in the fixed order contrastive → lm → align →
//! instruct → full; a recipe lists the ones it wants. Unknown sections and
//! fields are errors that name them.
//!
//! ```toml
//! seed = 0
//! [data]
//! easy_vqa = "~/.cache/glimpse/easy-vqa"
//! [model.vision]      # CLIP-style ViT
//! [model.text_encoder] # CLIP text tower for the contrastive stage
//! [model.decoder]     # Llama-family decoder
//! [model.projector]   # linear | mlp | perceiver | qformer
//! [model.fusion]      # early | cross
//! [tokenizer]
//! [contrastive] / [lm] / [align] / [instruct] / [full]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Result, TrainError};
use crate::stages::augment::AUGMENTATIONS;

/// The stages glimpse knows, in the order they run.
pub const STAGE_ORDER: [&str; 5] = ["contrastive", "lm", "align", "instruct", "full"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub seed: u64,
    /// Where checkpoints, logs and the final model go (relative to the
    /// current directory); `--out` overrides it.
    #[serde(default = "default_out")]
    pub out: PathBuf,
    pub data: DataSpec,
    pub model: ModelSpec,
    #[serde(default)]
    pub tokenizer: TokenizerSpec,
    pub contrastive: Option<StageSpec>,
    pub lm: Option<StageSpec>,
    pub align: Option<StageSpec>,
    pub instruct: Option<StageSpec>,
    pub full: Option<StageSpec>,
}

fn default_out() -> PathBuf {
    PathBuf::from("runs/recipe")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// An easy-VQA root holding `train/` and `test/` split directories
    /// (`scripts/fetch_easy_vqa.sh`). `~` and `$GLIMPSE_EASY_VQA` expand.
    pub easy_vqa: String,
    /// Train on the first N training images only (quick runs, tests).
    pub train_images: Option<usize>,
    /// Test questions scored at each evaluation of the VLM stages.
    #[serde(default = "default_eval_questions")]
    pub eval_questions: usize,
    /// Test images scored at each evaluation of the contrastive stage.
    #[serde(default = "default_eval_images")]
    pub eval_images: usize,
}

fn default_eval_questions() -> usize {
    1000
}
fn default_eval_images() -> usize {
    500
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
}

impl Default for TokenizerSpec {
    fn default() -> Self {
        Self {
            vocab_size: default_vocab(),
        }
    }
}

fn default_vocab() -> usize {
    512
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub vision: VisionSpec,
    pub text_encoder: Option<TextEncoderSpec>,
    pub decoder: DecoderSpec,
    pub projector: ProjectorSpec,
    #[serde(default)]
    pub fusion: FusionSpec,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisionSpec {
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Tower layer the projector reads (Python indexing; LLaVA uses -2).
    #[serde(default = "default_feature_layer")]
    pub feature_layer: i64,
    /// `default` drops the class token (LLaVA), `full` keeps it: a tower
    /// trained contrastively from scratch puts what it learned there;
    /// `cls` hands over the class token alone (one image row).
    #[serde(default = "default_feature_select")]
    pub feature_select: String,
}

fn default_feature_select() -> String {
    "default".into()
}

fn default_feature_layer() -> i64 {
    -1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderSpec {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_text_positions")]
    pub max_position_embeddings: usize,
    pub projection_dim: usize,
}

fn default_text_positions() -> usize {
    32
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
}

fn default_positions() -> usize {
    512
}
fn default_theta() -> f64 {
    10000.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorKind {
    Linear,
    Mlp,
    Perceiver,
    Qformer,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorSpec {
    #[serde(rename = "type")]
    pub kind: ProjectorKind,
    /// `none`, `avg_pool2x2` or `pixel_shuffle2x2` (linear and MLP).
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Perceiver latents / Q-Former queries: the image tokens per image.
    #[serde(default = "default_latents")]
    pub num_latents: usize,
    /// Perceiver blocks / Q-Former layers.
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_heads")]
    pub num_heads: usize,
}

fn default_compression() -> String {
    "none".into()
}
fn default_latents() -> usize {
    16
}
fn default_depth() -> usize {
    2
}
fn default_heads() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FusionSpec {
    /// `early` (LLaVA) or `cross` (gated cross-attention).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Cross fusion: a block after every `every`-th decoder layer.
    #[serde(default = "default_every")]
    pub every: usize,
}

impl Default for FusionSpec {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            every: default_every(),
        }
    }
}

fn default_mode() -> String {
    "early".into()
}
fn default_every() -> usize {
    1
}

/// One stage's optimisation settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Optimiser steps.
    pub steps: usize,
    pub batch_size: usize,
    #[serde(default = "default_one")]
    pub accumulate: usize,
    /// Parts each micro-batch is cut into, trained at once on their own
    /// threads and their gradients added (lm and VLM stages; the
    /// contrastive loss couples the whole batch). The result does not
    /// depend on the machine's thread count, but a different `shards`
    /// rounds differently.
    #[serde(default = "default_one")]
    pub shards: usize,
    pub lr: f64,
    /// Cosine floor, as a fraction of `lr`.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_log")]
    pub log_every: usize,
    /// 0: evaluate only at the end.
    #[serde(default)]
    pub eval_every: usize,
    /// 0: checkpoint only at the end.
    #[serde(default = "default_save")]
    pub save_every: usize,
    /// Per-component learning rates (VLM stages): a multiple of `lr` for
    /// the projector (and cross-attention blocks), decoder and tower.
    #[serde(default = "default_one_f")]
    pub projector_lr_scale: f64,
    #[serde(default = "default_one_f")]
    pub decoder_lr_scale: f64,
    #[serde(default = "default_one_f")]
    pub tower_lr_scale: f64,
    /// Contrastive stage: `clip` (InfoNCE) or `siglip` (sigmoid).
    #[serde(default = "default_loss")]
    pub loss: String,
    /// Contrastive stage: negatives per row kept by hard-negative mining
    /// (0 = every in-batch negative, no mining).
    #[serde(default)]
    pub hard_negatives: usize,
    /// Share of the kept negatives drawn at random instead of hardest.
    #[serde(default = "default_random_share")]
    pub hard_negative_random_share: f64,
    /// Contrastive stage: `none`, `hflip` (each training image mirrored
    /// left-right half of the time) or `dihedral` (in one of the eight
    /// orientations of the square), drawn per step.
    #[serde(default = "default_augment")]
    pub augment: String,
    /// Contrastive stage: each training image moved by up to this many
    /// pixels each way, drawn per step (0: not moved).
    #[serde(default)]
    pub shift: usize,
}

fn default_augment() -> String {
    "none".into()
}

fn default_one() -> usize {
    1
}
fn default_one_f() -> f64 {
    1.0
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_wd() -> f64 {
    0.01
}
fn default_clip() -> f64 {
    1.0
}
fn default_log() -> usize {
    10
}
fn default_save() -> usize {
    100
}
fn default_loss() -> String {
    "clip".into()
}
fn default_random_share() -> f64 {
    0.5
}

impl Recipe {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Recipe(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| TrainError::Recipe(format!("{}: {e}", path.display())))
    }

    /// Parses and checks a recipe; the error is one line.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let value: toml::Table = toml::from_str(text).map_err(toml_message)?;
        for key in value.keys() {
            let known = ["seed", "out", "data", "model", "tokenizer"];
            if !known.contains(&key.as_str()) && !STAGE_ORDER.contains(&key.as_str()) {
                return Err(format!(
                    "unknown stage or section [{key}] (stages: {}; sections: {})",
                    STAGE_ORDER.join(", "),
                    known.join(", ")
                ));
            }
        }
        let recipe: Recipe = toml::from_str(text).map_err(toml_message)?;
        recipe.check()?;
        Ok(recipe)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.stages().is_empty() {
            return Err(format!("no stage section ({})", STAGE_ORDER.join(", ")));
        }
        for (name, s) in self.stages() {
            if s.steps == 0 || s.batch_size == 0 || s.accumulate == 0 || s.shards == 0 {
                return Err(format!(
                    "[{name}] steps, batch_size, accumulate and shards must be at least 1"
                ));
            }
            if name == "contrastive" && s.shards > 1 {
                return Err(format!(
                    "[contrastive] shards = {}: the contrastive loss compares every pair in \
                     the batch, so the batch cannot be split (use 1)",
                    s.shards
                ));
            }
            if !(s.lr > 0.0 && s.lr.is_finite()) {
                return Err(format!("[{name}] lr must be a positive number"));
            }
            if !["clip", "siglip"].contains(&s.loss.as_str()) {
                return Err(format!("[{name}] loss '{}' is not clip or siglip", s.loss));
            }
            if !AUGMENTATIONS.contains(&s.augment.as_str()) {
                return Err(format!(
                    "[{name}] augment '{}' is not one of {}",
                    s.augment,
                    AUGMENTATIONS.join(", ")
                ));
            }
            if s.augment != "none" && name != "contrastive" {
                return Err(format!("[{name}] augment applies to [contrastive] only"));
            }
            if s.shift >= self.model.vision.image_size / 2 {
                return Err(format!(
                    "[{name}] shift {} moves the image out of its {}-pixel frame",
                    s.shift, self.model.vision.image_size
                ));
            }
            if s.shift > 0 && name != "contrastive" {
                return Err(format!("[{name}] shift applies to [contrastive] only"));
            }
        }
        if self.contrastive.is_some() && self.model.text_encoder.is_none() {
            return Err("[contrastive] needs [model.text_encoder]".into());
        }
        if !["early", "cross"].contains(&self.model.fusion.mode.as_str()) {
            return Err(format!(
                "[model.fusion] mode '{}' is not early or cross",
                self.model.fusion.mode
            ));
        }
        Ok(())
    }

    /// The stages present, in run order.
    pub fn stages(&self) -> Vec<(&'static str, &StageSpec)> {
        let all = [
            &self.contrastive,
            &self.lm,
            &self.align,
            &self.instruct,
            &self.full,
        ];
        STAGE_ORDER
            .iter()
            .zip(all)
            .filter_map(|(n, s)| s.as_ref().map(|s| (*n, s)))
            .collect()
    }

    /// The easy-VQA root with `~` and `$VARS` expanded.
    pub fn easy_vqa_root(&self) -> PathBuf {
        expand(&self.data.easy_vqa)
    }

    /// The VLM's glimpse-format `config.json` for a tokenizer's ids.
    pub fn vlm_config_json(&self, ids: &SpecialIds) -> Value {
        let m = &self.model;
        let v = &m.vision;
        let d = &m.decoder;
        let width = v.hidden_size;
        let projector = match m.projector.kind {
            ProjectorKind::Linear => json!({
                "type": "linear", "vision_hidden_size": width, "text_hidden_size": d.hidden_size,
                "compression": m.projector.compression,
            }),
            ProjectorKind::Mlp => json!({
                "type": "mlp", "vision_hidden_size": width, "text_hidden_size": d.hidden_size,
                "depth": 2, "projector_hidden_act": "gelu", "compression": m.projector.compression,
            }),
            ProjectorKind::Perceiver => json!({
                "type": "perceiver", "vision_hidden_size": width, "hidden_size": d.hidden_size,
                "text_hidden_size": d.hidden_size, "num_latents": m.projector.num_latents,
                "depth": m.projector.depth, "num_heads": m.projector.num_heads,
                "head_dim": d.hidden_size / m.projector.num_heads,
                "compression": m.projector.compression,
            }),
            ProjectorKind::Qformer => json!({
                "type": "qformer", "vision_hidden_size": width, "hidden_size": d.hidden_size,
                "text_hidden_size": d.hidden_size, "instruction_hidden_size": d.hidden_size,
                "num_query_tokens": m.projector.num_latents,
                "num_hidden_layers": m.projector.depth,
                "num_attention_heads": m.projector.num_heads,
                "intermediate_size": d.hidden_size * 4,
                "compression": m.projector.compression,
            }),
        };
        let fusion = match m.fusion.mode.as_str() {
            "cross" => json!({"mode": "cross", "every": m.fusion.every}),
            _ => json!({"mode": "early"}),
        };
        json!({
            "model_type": "glimpse",
            "vision_config": self.vision_json(),
            "text_config": {
                "model_type": "llama",
                "vocab_size": ids.vocab_size,
                "hidden_size": d.hidden_size,
                "intermediate_size": d.intermediate_size,
                "num_hidden_layers": d.num_hidden_layers,
                "num_attention_heads": d.num_attention_heads,
                "num_key_value_heads": d.num_key_value_heads,
                "max_position_embeddings": d.max_position_embeddings,
                "rope_theta": d.rope_theta,
                "rms_norm_eps": 1e-5,
                "tie_word_embeddings": true,
                "bos_token_id": ids.bos,
                "eos_token_id": ids.eos,
                "pad_token_id": ids.pad,
            },
            "projector": projector,
            "fusion": fusion,
            "vision_feature_layer": v.feature_layer,
            "vision_feature_select_strategy": v.feature_select,
            "image_token_id": ids.image,
        })
    }

    fn vision_json(&self) -> Value {
        let v = &self.model.vision;
        json!({
            "model_type": "clip_vision_model",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "num_channels": 3,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
        })
    }

    /// The contrastive encoders' HF `CLIPModel` `config.json`.
    pub fn clip_config_json(&self, ids: &SpecialIds) -> Option<Value> {
        let t = self.model.text_encoder.as_ref()?;
        Some(json!({
            "model_type": "clip",
            "projection_dim": t.projection_dim,
            "logit_scale_init_value": crate::losses::CLIP_INIT_LOGIT_SCALE,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": ids.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
                "bos_token_id": ids.bos,
                "eos_token_id": ids.eos,
                "pad_token_id": ids.pad,
                "projection_dim": t.projection_dim,
            },
            "vision_config": self.vision_json(),
        }))
    }
}

/// Token ids a trained tokenizer gives the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub vocab_size: usize,
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
    pub image: u32,
}

/// toml's messages span several lines (a source excerpt); keep one.
fn toml_message(e: toml::de::Error) -> String {
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

/// `~/x` → `$HOME/x`; `$NAME` / `${NAME}` → the variable's value.
pub fn expand(path: &str) -> PathBuf {
    let mut s = path.to_string();
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            s = format!("{}/{rest}", home.to_string_lossy());
        }
    }
    for (k, v) in std::env::vars() {
        s = s.replace(&format!("${{{k}}}"), &v);
        if s.contains(&format!("${k}")) {
            s = s.replace(&format!("${k}"), &v);
        }
    }
    PathBuf::from(s)
}
