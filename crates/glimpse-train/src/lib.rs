//! Training pieces for glimpse: contrastive and language-model losses, AdamW with
//! parameter groups, learning-rate schedules, gradient clipping and accumulation.
//!
//! Every loss is built from candle ops that have a backward pass (no
//! `candle_nn::ops::softmax_last_dim`, which has none), so `loss.backward()` works.

pub mod error;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod plot;

pub use error::{Result, TrainError};
pub use losses::{
    clip_logits, clip_loss, hard_negative_clip_loss, hard_negative_mask, log_softmax_last_dim,
    masked_lm_loss, siglip_logits, siglip_loss, token_cross_entropy, HardNegativeConfig,
    LabelledRows, SigLipParams, CLIP_INIT_LOGIT_SCALE, IGNORE_INDEX, MAX_LOGIT_SCALE,
};
pub use metrics::{read_metrics, MetricRecord, MetricsLog};
pub use optim::{
    clip_grad_norm, param_groups_by_dim, AdamW, AdamWConfig, GradAccumulator, ParamGroup,
    WarmupCosine,
};
pub use plot::{plot_stage, plot_stage_with};
pub mod checkpoint;
pub mod export;
pub mod init;
pub mod lock;
pub mod params;
pub mod pretrained;
pub mod recipe;
pub mod run;
pub mod shards;
pub mod stage_loop;
pub mod stages;
pub mod text_side;
pub mod trainer;
