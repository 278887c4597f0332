//! LLaVA-NeXT-Video (HF `LlavaNextVideoForConditionalGeneration`): images
//! as LLaVA-NeXT reads them ([`crate::llava_next`]); a video's frames go
//! through the tower as one batch, each frame's selected patch grid is
//! pooled over `spatial_pool_stride`-sized cells (transformers'
//! `LlavaNextVideoPooler`, average or max) before the shared projector,
//! and the frames' pooled rows, frame after frame, replace the `<video>`
//! placeholders.
//!
//! The count of placeholders a video takes is the model's,
//! `frames · ⌊g / stride⌋²` for a g×g patch grid. transformers'
//! `LlavaNextVideoProcessor` writes `frames · (g² // 4)`, the same for
//! stride 2 on an even grid (every released checkpoint: 24×24 patches,
//! stride 2); with any other pair its prompts do not fit its own model.

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{ConfigError, ModelError, Result};
use crate::vision::VitConfig;
use crate::vlm::Vlm;

/// `spatial_pool_mode`: how a cell of patches becomes one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// `nn.AvgPool2d(stride, stride)`: the cell's mean.
    Average,
    /// `nn.MaxPool2d(stride, stride)`: each channel's largest value.
    Max,
}

/// The video side of a `llava_next_video` `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlavaNextVideoConfig {
    /// `video_token_index` (or `video_token_id`): the `<video>` placeholder.
    pub video_token_id: u32,
    pub pool_mode: PoolMode,
    /// `spatial_pool_stride`: the pooling cell's side and step.
    pub pool_stride: usize,
}

impl LlavaNextVideoConfig {
    /// The fields with `LlavaNextVideoConfig`'s defaults (`<video>` 32000,
    /// `"average"`, stride 2); `vision`: the tower, whose patch grid the
    /// stride must fit.
    pub fn from_json(value: &Value, vision: &VitConfig) -> std::result::Result<Self, ConfigError> {
        let video_token_id = match value
            .get("video_token_index")
            .or_else(|| value.get("video_token_id"))
        {
            None | Some(Value::Null) => 32000,
            Some(v) => v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    ConfigError::new("video_token_index", format!("{v} is not a token id"))
                })?,
        };
        let pool_mode = match value.get("spatial_pool_mode") {
            None | Some(Value::Null) => PoolMode::Average,
            Some(v) => match v.as_str() {
                Some("average") => PoolMode::Average,
                Some("max") => PoolMode::Max,
                Some("conv") => {
                    return Err(ConfigError::new(
                        "spatial_pool_mode",
                        "'conv' (a learned pooling convolution) is not supported; glimpse reads average and max",
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        "spatial_pool_mode",
                        format!("{v} is not average, max or conv"),
                    ))
                }
            },
        };
        let grid = vision.grid();
        let pool_stride = match value.get("spatial_pool_stride") {
            None | Some(Value::Null) => 2,
            Some(v) => v
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| (1..=grid).contains(s))
                .ok_or_else(|| {
                    ConfigError::new(
                        "spatial_pool_stride",
                        format!("{v} must be an integer in 1..={grid} (the tower's {grid}x{grid} patch grid)"),
                    )
                })?,
        };
        if pool_stride > grid {
            // only the default can get here: a 1x1 grid
            return Err(ConfigError::new(
                "spatial_pool_stride",
                format!("{pool_stride} (the default) is larger than the tower's {grid}x{grid} patch grid"),
            ));
        }
        Ok(Self {
            video_token_id,
            pool_mode,
            pool_stride,
        })
    }

    /// Rows one frame becomes: its `grid`×`grid` patches pooled, ⌊grid /
    /// stride⌋² (floor-mode pooling drops a partial last cell).
    pub fn rows_per_frame(&self, grid: usize) -> usize {
        let side = grid / self.pool_stride;
        side * side
    }
}

/// transformers' `LlavaNextVideoPooler` on each frame's patch grid, row
/// by row as the patches lie.
///
/// # Shapes
/// `features`: (F, g·g, W) -> (F, p·p, W), p = ⌊g / stride⌋
pub fn spatial_pool(
    features: &Tensor,
    grid: usize,
    mode: PoolMode,
    stride: usize,
) -> Result<Tensor> {
    let (f, l, w) = features.dims3()?;
    if l != grid * grid || stride == 0 || stride > grid {
        return Err(ModelError::Input(format!(
            "spatial pooling: {l} features per frame are not a {grid}x{grid} grid pooled by {stride}"
        )));
    }
    let (p, s) = (grid / stride, stride);
    // (F, g·g, W) -> (F, g, g, W), cut to whole cells: (F, p·s, p·s, W)
    let x = features
        .reshape((f, grid, grid, w))?
        .narrow(1, 0, p * s)?
        .narrow(2, 0, p * s)?;
    // (F, p·s, p·s, W) -> (F, p, s, p, s, W) -> (F, p, p, s, s, W)
    // -> (F·p·p, s·s, W): each cell's patches row-major, as torch sums them
    let cells = x
        .reshape((f, p, s, p, s, w))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((f * p * p, s * s, w))?;
    let pooled = match mode {
        // divided (not multiplied by 1/s²), as torch's avg_pool2d does
        PoolMode::Average => {
            let area = Tensor::full((s * s) as f32, (), cells.device())?.to_dtype(cells.dtype())?;
            cells.sum(1)?.broadcast_div(&area)?
        }
        PoolMode::Max => cells.max(1)?,
    };
    // (F·p·p, W) -> (F, p·p, W)
    Ok(pooled.reshape((f, p * p, w))?)
}

impl Vlm {
    /// One video's rows (LLaVA-NeXT-Video): its frames through the tower
    /// as one batch, the selected features pooled per frame, projected,
    /// frame after frame: the order the `<video>` placeholders take them in.
    ///
    /// # Shapes
    /// `frames`: (F, C, S, S) -> (F·p², Dt), p² =
    /// [`LlavaNextVideoConfig::rows_per_frame`]
    pub fn encode_llava_next_video(&self, frames: &Tensor) -> Result<Tensor> {
        let cfg = self.config();
        let Some(video) = &cfg.llava_next_video else {
            return Err(ModelError::Input(
                "encode_llava_next_video: the model is not LLaVA-NeXT-Video (llava_next_video)"
                    .into(),
            ));
        };
        let size = cfg.vision.image_size;
        let (f, _, h, w) = frames.dims4()?;
        if (h, w) != (size, size) || f == 0 {
            return Err(ModelError::Input(format!(
                "a video of {f} frames of {w}x{h}: the tower reads frames of {size}x{size}"
            )));
        }
        // (F, C, S, S) -> (F, g·g, W)
        let features = self.tower_features(frames)?;
        let pooled = spatial_pool(
            &features,
            cfg.vision.grid(),
            video.pool_mode,
            video.pool_stride,
        )?;
        // (F, p², W) -> (F, p², Dt) -> (F·p², Dt)
        let rows = self.multi_modal_projector.forward(&pooled)?;
        let (f, m, d) = rows.dims3()?;
        Ok(rows
            .reshape((f * m, d))?
            .to_dtype(self.language_model.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn pools_each_cell_and_drops_a_partial_one() -> Result<()> {
        // one frame, a 3x3 grid of 1-wide features 0..9, stride 2: one
        // cell (0, 1, 3, 4); the last row and column are dropped
        let x = Tensor::arange(0f32, 9., &Device::Cpu)?.reshape((1, 9, 1))?;
        let avg = spatial_pool(&x, 3, PoolMode::Average, 2)?;
        assert_eq!(avg.flatten_all()?.to_vec1::<f32>()?, vec![2.0]);
        let max = spatial_pool(&x, 3, PoolMode::Max, 2)?;
        assert_eq!(max.flatten_all()?.to_vec1::<f32>()?, vec![4.0]);
        // a 4x4 grid, two frames, two channels (the second the negative)
        let a = Tensor::arange(0f32, 32., &Device::Cpu)?.reshape((2, 16, 1))?;
        let x = Tensor::cat(&[&a, &a.neg()?], D::Minus1)?;
        let avg = spatial_pool(&x, 4, PoolMode::Average, 2)?;
        assert_eq!(avg.dims(), &[2, 4, 2]);
        let got = avg.to_vec3::<f32>()?;
        // cell (0, 1) of frame 1: patches 16 + {2, 3, 6, 7}
        assert_eq!(got[1][1], vec![20.5, -20.5]);
        let max = spatial_pool(&x, 4, PoolMode::Max, 2)?.to_vec3::<f32>()?;
        assert_eq!(max[0][3], vec![15.0, -10.0]);
        assert!(spatial_pool(&x, 5, PoolMode::Max, 2).is_err());
        Ok(())
    }
}
