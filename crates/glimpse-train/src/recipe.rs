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
    /// Needed by the stages that read easy-VQA itself (contrastive, lm, and
    /// VLM stages without `data`), and by a run whose tokenizer is trained
    /// (no `[model.decoder] from`).
    pub easy_vqa: Option<String>,
    /// What a VLM stage does with a row of its `data` it cannot use (a
    /// missing or unreadable image, `<image>` placeholders that do not
    /// match the images, an empty answer, more tokens than the context):
    /// `skip` it (counted by kind in the stage's summary.json, each one in
    /// `<stage>/bad_rows.jsonl`) or `fail` (the run stops naming it).
    #[serde(default = "default_on_bad_row")]
    pub on_bad_row: String,
    /// Relative image paths in data files resolve against this folder
    /// (LLaVA's `--image_folder`); by default against the data file's own.
    pub image_folder: Option<String>,
    /// The question an image-caption JSONL row's caption answers.
    #[serde(default = "default_caption_prompt")]
    pub caption_prompt: String,
    /// Train on the first N training images only (quick runs, tests).
    pub train_images: Option<usize>,
    /// Test questions scored at each evaluation of the VLM stages.
    #[serde(default = "default_eval_questions")]
    pub eval_questions: usize,
    /// Test images scored at each evaluation of the contrastive stage.
    #[serde(default = "default_eval_images")]
    pub eval_images: usize,
}

fn default_on_bad_row() -> String {
    "skip".into()
}
fn default_caption_prompt() -> String {
    crate::stages::corpus::DESCRIBE.into()
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
    /// Video rows (`"video"`): how each video's frames are aggregated over
    /// time; a model without it reads images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal: Option<TemporalSpec>,
    /// `[model.tiling]`: each training image cut into a grid of
    /// tower-sized tiles (+ a thumbnail) by `glimpse_data::dynamic_tiles`,
    /// each tile's rows after its tag, as `glimpse ask` reads a tiling
    /// model; the written `config.json` carries the same section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiling: Option<glimpse_data::TilingConfig>,
}

/// `[model.temporal]`: the glimpse model's aggregation of a video's
/// per-frame tower features (`glimpse_models::temporal`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalSpec {
    /// `mean` (blind to frame order) or `attention` (learned attention
    /// across frames at each position, with temporal position embeddings).
    pub mode: String,
    /// Frames sampled uniformly from each video.
    #[serde(default = "default_frames")]
    pub frames: usize,
    /// `attention`: encoder layers across frames.
    #[serde(default = "default_one")]
    pub num_hidden_layers: usize,
    /// `attention`: heads (0: the tower's).
    #[serde(default)]
    pub num_attention_heads: usize,
    /// `attention`: MLP width (0: the tower's).
    #[serde(default)]
    pub intermediate_size: usize,
}

fn default_frames() -> usize {
    8
}

impl TemporalSpec {
    /// The model config's `temporal` section; heads and MLP width default
    /// to the tower's (`vision_config`, as the VLM config holds it).
    pub fn config_json(&self, vision_config: &Value) -> Value {
        if self.mode == "mean" {
            return json!({"mode": "mean", "num_frames": self.frames});
        }
        let tower = |k: &str| vision_config.get(k).and_then(Value::as_u64).unwrap_or(0);
        let or_tower = |v: usize, k: &str| if v == 0 { tower(k) } else { v as u64 };
        json!({
            "mode": "attention",
            "num_frames": self.frames,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": or_tower(self.num_attention_heads, "num_attention_heads"),
            "intermediate_size": or_tower(self.intermediate_size, "intermediate_size"),
        })
    }
}

/// Frames a recipe may sample per video.
pub const MAX_FRAMES: usize = 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisionSpec {
    /// A pretrained tower: an HF CLIP or SigLIP folder (`config.json`,
    /// `model.safetensors`, `preprocessor_config.json`); its sizes and image
    /// processor come from there, so the size fields stay unset.
    pub from: Option<String>,
    #[serde(default)]
    pub image_size: usize,
    #[serde(default)]
    pub patch_size: usize,
    #[serde(default)]
    pub hidden_size: usize,
    #[serde(default)]
    pub num_hidden_layers: usize,
    #[serde(default)]
    pub num_attention_heads: usize,
    #[serde(default)]
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
    /// A pretrained decoder: an HF llama / mistral / qwen2 folder or a GGUF
    /// file (dequantized to f32 for training). Its sizes, tokenizer and
    /// chat template come from there, so the size fields and `[tokenizer]`
    /// stay unset.
    pub from: Option<String>,
    #[serde(default)]
    pub hidden_size: usize,
    #[serde(default)]
    pub num_hidden_layers: usize,
    #[serde(default)]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub intermediate_size: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
}

impl DecoderSpec {
    /// The from-scratch decoder's Llama `config.json` (tied embeddings).
    pub fn text_config_json(&self, ids: &SpecialIds) -> Value {
        json!({
            "model_type": "llama",
            "vocab_size": ids.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true,
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos,
            "pad_token_id": ids.pad,
        })
    }
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
    /// VLM stages: the training rows, a LLaVA conversation `.json` or an
    /// image-caption `.jsonl` (`~` and `$VARS` expand); without it the
    /// stage reads easy-VQA (`[data] easy_vqa`).
    pub data: Option<String>,
    /// The held-out rows the stage is scored on (same formats); needed
    /// with `data`.
    pub eval_data: Option<String>,
    /// VLM stages: LoRA adapters on the decoder's linear layers instead of
    /// training the decoder itself (the projector still learns).
    pub lora: Option<LoraSpec>,
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
    /// Contrastive stage: each training image turned by an angle drawn
    /// from [-rotate, rotate] degrees, per step (0: not turned).
    #[serde(default)]
    pub rotate: f64,
}

/// `[<stage>.lora]`: PEFT's LoRA on the decoder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Decoder module names (PEFT's `target_modules` list: a name matches
    /// itself or a path ending in `.name`).
    #[serde(default = "default_lora_targets")]
    pub targets: Vec<String>,
    /// rsLoRA's scale, alpha / sqrt(r), instead of alpha / r.
    #[serde(default)]
    pub rslora: bool,
}

fn default_lora_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .map(String::from)
        .to_vec()
}

impl LoraSpec {
    /// The adapter's PEFT config.
    pub fn config(&self) -> glimpse_models::LoraConfig {
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        let mut cfg = glimpse_models::LoraConfig::new(self.r, self.alpha, &targets);
        cfg.lora_dropout = self.dropout as f32;
        cfg.use_rslora = self.rslora;
        cfg
    }
}

fn default_augment() -> String {
    "none".into()
}

impl StageSpec {
    /// The optimisation fields, as every stage's loop takes them
    /// ([`crate::stage_loop::LoopSpec`]).
    pub fn loop_spec(&self) -> crate::stage_loop::LoopSpec {
        crate::stage_loop::loop_spec_of!(self, self.accumulate, self.shards)
    }
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

/// Bounds on a recipe's sizes, checked before anything they size is
/// allocated: a recipe is a file a user may have been handed, and a typo
/// (`image_size = 65536`) must be a one-line error, not a process that
/// grows until the machine kills it. Far above anything glimpse trains on
/// a CPU, far below what would exhaust one.
pub const MAX_IMAGE_SIZE: usize = 1024;
/// Hidden sizes, projection widths.
pub const MAX_WIDTH: usize = 16_384;
/// MLP inner sizes.
pub const MAX_INTERMEDIATE: usize = 65_536;
pub const MAX_LAYERS: usize = 256;
pub const MAX_HEADS: usize = 1024;
pub const MAX_POSITIONS: usize = 65_536;
/// The vocabulary the run's BPE tokenizer is trained to.
pub const MAX_VOCAB: usize = 262_144;
pub const MAX_STEPS: usize = 100_000_000;
pub const MAX_BATCH: usize = 4096;
pub const MAX_ACCUMULATE: usize = 1024;
pub const MAX_SHARDS: usize = 256;
/// Perceiver latents / Q-Former queries.
pub const MAX_LATENTS: usize = 4096;
/// The largest model (in parameters, estimated from the recipe) a run
/// builds: its weights, gradients and two AdamW moments are 16 bytes a
/// parameter, 16 GiB here.
pub const MAX_PARAMETERS: u128 = 1 << 30;

/// A field at fault and what is wrong with it.
type Check = std::result::Result<(), (String, String)>;

pub(crate) fn bounded(field: &str, v: usize, lo: usize, hi: usize) -> Check {
    if v < lo || v > hi {
        return Err((
            field.into(),
            format!("{v} is out of range (at least {lo}, at most {hi})"),
        ));
    }
    Ok(())
}

/// A finite number in `lo..=hi` (`lo_open`: strictly above `lo`).
pub(crate) fn number(field: &str, v: f64, lo: f64, lo_open: bool, hi: f64) -> Check {
    let above = if lo_open { v > lo } else { v >= lo };
    if !(v.is_finite() && above && v <= hi) {
        let low = if lo_open { "above" } else { "at least" };
        return Err((
            field.into(),
            format!("{v} must be a finite number {low} {lo} and at most {hi}"),
        ));
    }
    Ok(())
}

fn divides(field: &str, heads: usize, what: &str, width: usize) -> Check {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err((
            field.into(),
            format!("{heads} does not divide {what} {width}"),
        ));
    }
    Ok(())
}

/// A from-scratch decoder's sizes (`section`: where the recipe holds
/// them, `model.decoder` or `discrete.decoder`).
pub(crate) fn check_decoder_spec(section: &str, d: &DecoderSpec) -> Check {
    let f = |x: &str| format!("{section}.{x}");
    bounded(&f("hidden_size"), d.hidden_size, 1, MAX_WIDTH)?;
    bounded(&f("num_hidden_layers"), d.num_hidden_layers, 1, MAX_LAYERS)?;
    bounded(
        &f("num_attention_heads"),
        d.num_attention_heads,
        1,
        MAX_HEADS,
    )?;
    divides(
        &f("num_attention_heads"),
        d.num_attention_heads,
        "hidden_size",
        d.hidden_size,
    )?;
    bounded(
        &f("num_key_value_heads"),
        d.num_key_value_heads,
        1,
        d.num_attention_heads,
    )?;
    divides(
        &f("num_key_value_heads"),
        d.num_key_value_heads,
        "num_attention_heads",
        d.num_attention_heads,
    )?;
    bounded(
        &f("intermediate_size"),
        d.intermediate_size,
        1,
        MAX_INTERMEDIATE,
    )?;
    bounded(
        &f("max_position_embeddings"),
        d.max_position_embeddings,
        1,
        MAX_POSITIONS,
    )?;
    number(&f("rope_theta"), d.rope_theta, 0.0, true, f64::MAX)?;
    Ok(())
}

/// A recipe file's text, read bounded (any recipe kind: `Recipe`, the vq
/// stage's `VqRecipe`); a failure names the file.
pub(crate) fn read_recipe_text(path: &Path) -> Result<String> {
    glimpse_data::files::read_bounded_text(path, glimpse_data::files::MAX_CONFIG_BYTES, "recipe")
        .map_err(|e| TrainError::RecipeField {
            path: path.to_path_buf(),
            field: None,
            msg: e.to_string(),
        })
}

impl Recipe {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_toml(&read_recipe_text(path)?, path)
    }

    /// Parses and checks a recipe; `path` names it in errors, which are one
    /// line naming the field at fault.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let err = |field: Option<String>, msg: String| TrainError::RecipeField {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let toml_err = |e: toml::de::Error| {
            let field = e.span().and_then(|span| field_at(text, span.start));
            err(field, toml_message(&e, text))
        };
        let value: toml::Table = toml::from_str(text).map_err(toml_err)?;
        for key in value.keys() {
            let known = ["seed", "out", "data", "model", "tokenizer"];
            if !known.contains(&key.as_str()) && !STAGE_ORDER.contains(&key.as_str()) {
                return Err(err(
                    Some(key.clone()),
                    format!(
                        "unknown stage or section [{key}] (stages: {}; sections: {})",
                        STAGE_ORDER.join(", "),
                        known.join(", ")
                    ),
                ));
            }
        }
        let recipe: Recipe = toml::from_str(text).map_err(toml_err)?;
        recipe
            .check()
            .map_err(|(field, msg)| err(Some(field), msg))?;
        Ok(recipe)
    }

    fn check(&self) -> Check {
        if self.stages().is_empty() {
            return Err((
                "stages".into(),
                format!("no stage section ({})", STAGE_ORDER.join(", ")),
            ));
        }
        bounded(
            "tokenizer.vocab_size",
            self.tokenizer.vocab_size,
            8,
            MAX_VOCAB,
        )?;
        self.check_model()?;
        self.check_data()?;
        for (name, s) in self.stages() {
            let f = |field: &str| format!("{name}.{field}");
            bounded(&f("steps"), s.steps, 1, MAX_STEPS)?;
            bounded(&f("batch_size"), s.batch_size, 1, MAX_BATCH)?;
            bounded(&f("accumulate"), s.accumulate, 1, MAX_ACCUMULATE)?;
            bounded(&f("shards"), s.shards, 1, MAX_SHARDS)?;
            bounded(&f("warmup_steps"), s.warmup_steps, 0, MAX_STEPS)?;
            if name == "contrastive" && s.shards > 1 {
                return Err((
                    f("shards"),
                    format!(
                        "[contrastive] shards = {}: the contrastive loss compares every pair in \
                         the batch, so the batch cannot be split (use 1)",
                        s.shards
                    ),
                ));
            }
            number(&f("lr"), s.lr, 0.0, true, 1.0)?;
            number(&f("min_lr_ratio"), s.min_lr_ratio, 0.0, false, 1.0)?;
            number(&f("weight_decay"), s.weight_decay, 0.0, false, 1.0)?;
            number(&f("grad_clip"), s.grad_clip, 0.0, false, f64::MAX)?;
            for (field, v) in [
                ("projector_lr_scale", s.projector_lr_scale),
                ("decoder_lr_scale", s.decoder_lr_scale),
                ("tower_lr_scale", s.tower_lr_scale),
            ] {
                number(&f(field), v, 0.0, false, 1e6)?;
            }
            number(
                &f("hard_negative_random_share"),
                s.hard_negative_random_share,
                0.0,
                false,
                1.0,
            )?;
            if !["clip", "siglip"].contains(&s.loss.as_str()) {
                return Err((f("loss"), format!("'{}' is not clip or siglip", s.loss)));
            }
            if !AUGMENTATIONS.contains(&s.augment.as_str()) {
                return Err((
                    f("augment"),
                    format!("'{}' is not one of {}", s.augment, AUGMENTATIONS.join(", ")),
                ));
            }
            if s.augment != "none" && name != "contrastive" {
                return Err((f("augment"), "applies to [contrastive] only".into()));
            }
            if s.shift > 0 && s.shift >= self.model.vision.image_size / 2 {
                return Err((
                    f("shift"),
                    format!(
                        "shift {} moves the image out of its {}-pixel frame",
                        s.shift, self.model.vision.image_size
                    ),
                ));
            }
            number(&f("rotate"), s.rotate, 0.0, false, 180.0)?;
            if s.rotate > 0.0 && name != "contrastive" {
                return Err((f("rotate"), "applies to [contrastive] only".into()));
            }
            if s.shift > 0 && name != "contrastive" {
                return Err((f("shift"), "applies to [contrastive] only".into()));
            }
        }
        if self.contrastive.is_some() && self.model.text_encoder.is_none() {
            return Err((
                "model.text_encoder".into(),
                "[contrastive] needs [model.text_encoder]".into(),
            ));
        }
        Ok(())
    }

    fn check_data(&self) -> Check {
        let d = &self.data;
        if !["skip", "fail"].contains(&d.on_bad_row.as_str()) {
            return Err((
                "data.on_bad_row".into(),
                format!("'{}' is not skip or fail", d.on_bad_row),
            ));
        }
        if self.needs_easy_vqa() && d.easy_vqa.is_none() {
            let why = "a stage reads easy-VQA (contrastive, lm, or a VLM stage without data)";
            return Err(("data.easy_vqa".into(), format!("is missing: {why}")));
        }
        for (name, s) in self.stages() {
            let vlm = !["contrastive", "lm"].contains(&name);
            if !vlm && (s.data.is_some() || s.eval_data.is_some()) {
                return Err((
                    format!("{name}.data"),
                    "applies to the VLM stages (align, instruct, full) only".into(),
                ));
            }
            if let Some(l) = &s.lora {
                if !vlm {
                    return Err((
                        format!("{name}.lora"),
                        "applies to the VLM stages (align, instruct, full) only".into(),
                    ));
                }
                bounded(&format!("{name}.lora.r"), l.r, 1, 4096)?;
                number(&format!("{name}.lora.alpha"), l.alpha, 0.0, true, 1e6)?;
                number(&format!("{name}.lora.dropout"), l.dropout, 0.0, false, 0.99)?;
                if l.targets.is_empty() {
                    return Err((format!("{name}.lora.targets"), "is empty".into()));
                }
            }
            if s.data.is_some() != s.eval_data.is_some() {
                return Err((
                    format!("{name}.eval_data"),
                    "data and eval_data go together: the stage is scored on held-out rows".into(),
                ));
            }
        }
        if self.model.vision.from.is_some() && self.contrastive.is_some() {
            return Err((
                "model.vision.from".into(),
                "a pretrained tower is not trained by [contrastive] (drop the stage, or the from)"
                    .into(),
            ));
        }
        if self.model.decoder.from.is_some() {
            if let Some((name, _)) = self
                .stages()
                .into_iter()
                .find(|(n, s)| !["contrastive", "lm"].contains(n) && s.data.is_none())
            {
                return Err((
                    format!("{name}.data"),
                    "is needed with a pretrained decoder (model.decoder.from): its rows are rendered by the decoder's chat template (write easy-VQA as rows with `glimpse data easy-vqa`)".into(),
                ));
            }
            if self.contrastive.is_some() {
                return Err((
                    "model.decoder.from".into(),
                    "[contrastive] trains its text tower on a tokenizer of the run's own; train the tower in a run of its own and take it with model.vision.from".into(),
                ));
            }
        }
        if self.model.decoder.from.is_some() && self.lm.is_some() {
            return Err((
                "model.decoder.from".into(),
                "a pretrained decoder is not pretrained again by [lm] (drop the stage, or the from)"
                    .into(),
            ));
        }
        if d.train_images == Some(0) {
            return Err((
                "data.train_images".into(),
                "0 leaves no training images".into(),
            ));
        }
        // The trainer scores every stage on held-out data; an empty set
        // would report no accuracy (or 0%) for a run that looks fine.
        if d.eval_questions == 0 && self.stages().iter().any(|(n, _)| *n != "contrastive") {
            return Err((
                "data.eval_questions".into(),
                "0 leaves the evaluation of the lm and VLM stages nothing to score (at least 1)"
                    .into(),
            ));
        }
        if d.eval_images == 0 && self.contrastive.is_some() {
            return Err((
                "data.eval_images".into(),
                "0 leaves the zero-shot evaluation of [contrastive] nothing to score (at least 1)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_model(&self) -> Check {
        let m = &self.model;
        let v = &m.vision;
        // A pretrained part's sizes come from its config, which
        // glimpse-models bounds when it is read; here they must stay unset.
        if v.from.is_some() {
            for (field, value) in [
                ("image_size", v.image_size),
                ("patch_size", v.patch_size),
                ("hidden_size", v.hidden_size),
                ("num_hidden_layers", v.num_hidden_layers),
                ("num_attention_heads", v.num_attention_heads),
                ("intermediate_size", v.intermediate_size),
            ] {
                if value != 0 {
                    return Err((
                        format!("model.vision.{field}"),
                        "comes from the pretrained tower (model.vision.from); leave it unset"
                            .into(),
                    ));
                }
            }
        } else {
            self.check_vision()?;
        }
        if !["default", "full", "cls"].contains(&v.feature_select.as_str()) {
            return Err((
                "model.vision.feature_select".into(),
                format!("'{}' is not default, full or cls", v.feature_select),
            ));
        }
        self.check_text_encoder()?;
        let d = &m.decoder;
        if d.from.is_some() {
            for (field, value) in [
                ("hidden_size", d.hidden_size),
                ("num_hidden_layers", d.num_hidden_layers),
                ("num_attention_heads", d.num_attention_heads),
                ("num_key_value_heads", d.num_key_value_heads),
                ("intermediate_size", d.intermediate_size),
            ] {
                if value != 0 {
                    return Err((
                        format!("model.decoder.{field}"),
                        "comes from the pretrained decoder (model.decoder.from); leave it unset"
                            .into(),
                    ));
                }
            }
        } else {
            self.check_decoder()?;
        }
        self.check_rest()
    }

    fn check_vision(&self) -> Check {
        let v = &self.model.vision;
        bounded("model.vision.image_size", v.image_size, 1, MAX_IMAGE_SIZE)?;
        bounded("model.vision.patch_size", v.patch_size, 1, v.image_size)?;
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err((
                "model.vision.patch_size".into(),
                format!(
                    "{} does not divide image_size {}",
                    v.patch_size, v.image_size
                ),
            ));
        }
        bounded("model.vision.hidden_size", v.hidden_size, 1, MAX_WIDTH)?;
        bounded(
            "model.vision.num_hidden_layers",
            v.num_hidden_layers,
            1,
            MAX_LAYERS,
        )?;
        bounded(
            "model.vision.num_attention_heads",
            v.num_attention_heads,
            1,
            MAX_HEADS,
        )?;
        divides(
            "model.vision.num_attention_heads",
            v.num_attention_heads,
            "hidden_size",
            v.hidden_size,
        )?;
        bounded(
            "model.vision.intermediate_size",
            v.intermediate_size,
            1,
            MAX_INTERMEDIATE,
        )?;
        let layers = v.num_hidden_layers as i64;
        if v.feature_layer > layers || v.feature_layer < -(layers + 1) {
            return Err((
                "model.vision.feature_layer".into(),
                format!(
                    "{} is out of range: the tower has {layers} layers",
                    v.feature_layer
                ),
            ));
        }
        Ok(())
    }

    fn check_text_encoder(&self) -> Check {
        if let Some(t) = &self.model.text_encoder {
            let f = |x: &str| format!("model.text_encoder.{x}");
            bounded(&f("hidden_size"), t.hidden_size, 1, MAX_WIDTH)?;
            bounded(&f("num_hidden_layers"), t.num_hidden_layers, 1, MAX_LAYERS)?;
            bounded(
                &f("num_attention_heads"),
                t.num_attention_heads,
                1,
                MAX_HEADS,
            )?;
            divides(
                &f("num_attention_heads"),
                t.num_attention_heads,
                "hidden_size",
                t.hidden_size,
            )?;
            bounded(
                &f("intermediate_size"),
                t.intermediate_size,
                1,
                MAX_INTERMEDIATE,
            )?;
            bounded(
                &f("max_position_embeddings"),
                t.max_position_embeddings,
                1,
                MAX_POSITIONS,
            )?;
            bounded(&f("projection_dim"), t.projection_dim, 1, MAX_WIDTH)?;
        }
        Ok(())
    }

    fn check_decoder(&self) -> Check {
        check_decoder_spec("model.decoder", &self.model.decoder)
    }

    /// Projector, fusion and the size of the whole, once the parts' sizes
    /// are known (a pretrained part's are 0 here: its checks ran on load).
    fn check_rest(&self) -> Check {
        let m = &self.model;
        let d = &m.decoder;
        let p = &m.projector;
        if !["none", "avg_pool2x2", "pixel_shuffle2x2"].contains(&p.compression.as_str()) {
            return Err((
                "model.projector.compression".into(),
                format!(
                    "'{}' is not none, avg_pool2x2 or pixel_shuffle2x2",
                    p.compression
                ),
            ));
        }
        bounded("model.projector.num_latents", p.num_latents, 1, MAX_LATENTS)?;
        bounded("model.projector.depth", p.depth, 1, MAX_LAYERS)?;
        bounded("model.projector.num_heads", p.num_heads, 1, MAX_HEADS)?;
        if d.from.is_none() && matches!(p.kind, ProjectorKind::Perceiver | ProjectorKind::Qformer) {
            divides(
                "model.projector.num_heads",
                p.num_heads,
                "model.decoder.hidden_size",
                d.hidden_size,
            )?;
        }
        if !["early", "cross"].contains(&m.fusion.mode.as_str()) {
            return Err((
                "model.fusion.mode".into(),
                format!("'{}' is not early or cross", m.fusion.mode),
            ));
        }
        if m.fusion.mode == "cross" && d.from.is_none() {
            bounded("model.fusion.every", m.fusion.every, 1, d.num_hidden_layers)?;
        }
        self.check_temporal()?;
        self.check_tiling()?;
        let params = self.parameter_estimate();
        if params > MAX_PARAMETERS {
            return Err((
                "model".into(),
                format!(
                    "about {params} parameters, more than the trainer's bound of {MAX_PARAMETERS}"
                ),
            ));
        }
        Ok(())
    }

    /// The model's parameter count, roughly (the matrices, not the norms
    /// and biases), from the recipe alone, for [`MAX_PARAMETERS`]. Each
    /// size is already bounded, so u128 arithmetic cannot overflow.
    pub fn parameter_estimate(&self) -> u128 {
        let m = &self.model;
        let u = |x: usize| x as u128;
        let vocab = u(self.tokenizer.vocab_size);
        let block = |h: u128, i: u128| 4 * h * h + 2 * h * i;
        let v = &m.vision;
        let (vh, side) = (u(v.hidden_size), u(v.image_size / v.patch_size.max(1)));
        let vision = 3 * u(v.patch_size).pow(2) * vh
            + (side * side + 1) * vh
            + u(v.num_hidden_layers) * block(vh, u(v.intermediate_size));
        let text = m.text_encoder.as_ref().map_or(0, |t| {
            let h = u(t.hidden_size);
            (vocab + u(t.max_position_embeddings)) * h
                + u(t.num_hidden_layers) * block(h, u(t.intermediate_size))
                + (h + vh) * u(t.projection_dim)
        });
        let d = &m.decoder;
        let h = u(d.hidden_size);
        let kv = h / u(d.num_attention_heads.max(1)) * u(d.num_key_value_heads);
        let layer = 2 * h * h + 2 * h * kv + 3 * h * u(d.intermediate_size);
        let decoder = vocab * h + u(d.num_hidden_layers) * layer;
        let p = &m.projector;
        let projector = 4 * vh * h + u(p.num_latents) * h + u(p.depth) * (12 * h * h + 8 * h * h);
        let cross = if m.fusion.mode == "cross" {
            u(d.num_hidden_layers / m.fusion.every.max(1)) * block(h, 4 * h)
        } else {
            0
        };
        let temporal = m.temporal.as_ref().map_or(0, |t| {
            let i = if t.intermediate_size == 0 {
                u(v.intermediate_size)
            } else {
                u(t.intermediate_size)
            };
            u(t.num_hidden_layers) * block(vh, i) + u(t.frames) * vh
        });
        vision + text + decoder + projector + cross + temporal
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

    /// The easy-VQA root with `~` and `$VARS` expanded (checked present by
    /// [`Recipe::needs_easy_vqa`]'s caller).
    pub fn easy_vqa_root(&self) -> PathBuf {
        expand(self.data.easy_vqa.as_deref().unwrap_or(""))
    }

    /// Whether the run reads easy-VQA itself: a stage that trains on it
    /// (contrastive, lm, a VLM stage without `data`), or a tokenizer
    /// trained on its text (no pretrained decoder, `[data] easy_vqa` set;
    /// without it such a run trains its tokenizer on the stages' rows).
    pub fn needs_easy_vqa(&self) -> bool {
        (self.model.decoder.from.is_none() && self.data.easy_vqa.is_some())
            || self
                .stages()
                .iter()
                .any(|(name, s)| ["contrastive", "lm"].contains(name) || s.data.is_none())
    }

    /// `[model.temporal]` within bounds: a known mode, frames, and the
    /// attention layers' sizes (heads dividing the tower's width when the
    /// recipe sizes the tower); early fusion.
    fn check_temporal(&self) -> Check {
        let Some(t) = &self.model.temporal else {
            return Ok(());
        };
        let f = |x: &str| format!("model.temporal.{x}");
        if !["mean", "attention"].contains(&t.mode.as_str()) {
            return Err((f("mode"), format!("'{}' is not mean or attention", t.mode)));
        }
        bounded(&f("frames"), t.frames, 1, MAX_FRAMES)?;
        bounded(&f("num_hidden_layers"), t.num_hidden_layers, 1, MAX_LAYERS)?;
        bounded(
            &f("num_attention_heads"),
            t.num_attention_heads,
            0,
            MAX_HEADS,
        )?;
        bounded(
            &f("intermediate_size"),
            t.intermediate_size,
            0,
            MAX_INTERMEDIATE,
        )?;
        let v = &self.model.vision;
        if t.mode == "attention" && v.from.is_none() && t.num_attention_heads > 0 {
            divides(
                &f("num_attention_heads"),
                t.num_attention_heads,
                "model.vision.hidden_size",
                v.hidden_size,
            )?;
        }
        if self.model.fusion.mode != "early" {
            return Err((
                f("mode"),
                "a video's rows take its <video> placeholders: needs [model.fusion] mode early"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[model.tiling]` within bounds; early fusion (each tile's rows follow
    /// its tag in the prompt); every VLM stage reads data files, whose
    /// images are tiled as batches need them (easy-VQA's splits are decoded
    /// whole up front).
    fn check_tiling(&self) -> Check {
        let Some(t) = &self.model.tiling else {
            return Ok(());
        };
        // the bound's own message names `tiling.<field>`; the error names
        // the section once
        const WHAT: &str = "[model.tiling]";
        t.check(WHAT).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.trim_start_matches(WHAT).trim_start_matches(": ");
            ("model.tiling".to_string(), msg.to_string())
        })?;
        if self.model.fusion.mode != "early" {
            return Err((
                "model.tiling".into(),
                "each tile's rows follow its tag in the prompt: needs [model.fusion] mode early"
                    .into(),
            ));
        }
        for (name, s) in self.stages() {
            if !["contrastive", "lm"].contains(&name) && s.data.is_none() {
                return Err((
                    "model.tiling".into(),
                    format!("[{name}] reads easy-VQA, whose images are not tiled: give it data and eval_data files"),
                ));
            }
        }
        Ok(())
    }

    /// `[data] on_bad_row` as the policy.
    pub fn on_bad_row(&self) -> crate::stages::rows::OnBadRow {
        if self.data.on_bad_row == "fail" {
            crate::stages::rows::OnBadRow::Fail
        } else {
            crate::stages::rows::OnBadRow::Skip
        }
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
        let mut json = json!({
            "model_type": "glimpse",
            "vision_config": self.vision_json(),
            "text_config": d.text_config_json(ids),
            "projector": projector,
            "fusion": fusion,
            "vision_feature_layer": v.feature_layer,
            "vision_feature_select_strategy": v.feature_select,
            "image_token_id": ids.image,
        });
        if let Some(t) = &m.tiling {
            json["tiling"] = json!(t);
        }
        json
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
pub(crate) fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |t| t.matches('\n').count())
                + 1;
            format!("{msg} (line {line})")
        }
        None => msg,
    }
}

/// The dotted name of the TOML key at byte `offset` of `text`
/// (`instruct.lr`): the table header above it and the key on its line, so
/// a parse error names the field as the recipe's author wrote it.
pub(crate) fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text.get(line_start..line_end)?.trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(|h| h.trim_matches(|c| c == '[' || c == ' ').to_string())
    };
    if line.starts_with('[') {
        return header(line);
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(header);
    let key = line
        .split('=')
        .next()
        .map(|k| k.trim().replace(['"', '\''], ""))
        .filter(|k| !k.is_empty() && !k.starts_with('#'));
    match (section, key) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (s, k) => k.or(s),
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
