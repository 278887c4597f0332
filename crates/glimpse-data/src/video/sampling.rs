//! Which frames of a video are kept: `--frames N`, `--fps F`,
//! `--max-frames N`, with transformers' uniform rule.

/// How frames are sampled from a video of `T` frames at `video_fps`.
///
/// The rule, step by step:
/// 1. `frames` and `fps` together are refused (transformers'
///    `sample_frames` refuses `num_frames` with `fps` too).
/// 2. The count `n`: `frames` if given (more than `T` is an error, as in
///    transformers); else from `fps`, `n = max(1, floor(T / video_fps * fps))`
///    (transformers' `default_sample_indices_fn`), at most `T` (where
///    transformers raises, an `fps` above the video's own keeps every
///    frame); else every frame, `n = T`.
/// 3. `max_frames` caps `n`.
/// 4. The indices are `floor(i * T / n)` for `i = 0..n`: transformers 5.x's
///    `np.arange(n) * T // n` (`default_sample_indices_fn`, which
///    `BaseVideoProcessor.sample_frames` calls), in exact integers. Frame 0
///    is always kept; the last kept frame is at most `T - 1`; `n = T`
///    keeps every frame.
///
/// A frame's timestamp is when it is shown, in seconds from the start:
/// `index / video_fps` for a constant-rate video (transformers'
/// `VideoMetadata.timestamps`), the sum of the delays before it for a GIF
/// or WebP animation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameSampling {
    /// `--frames N`: `N` frames spread uniformly over the video.
    pub frames: Option<usize>,
    /// `--fps F`: `F` frames per second of video.
    pub fps: Option<f64>,
    /// `--max-frames N`: at most `N` frames, whatever the rule above gives.
    pub max_frames: Option<usize>,
}

impl FrameSampling {
    /// Every frame.
    pub fn all() -> Self {
        Self::default()
    }

    /// `n` frames spread uniformly over the video.
    pub fn frames(n: usize) -> Self {
        Self {
            frames: Some(n),
            ..Self::default()
        }
    }

    /// `fps` frames per second of video.
    pub fn fps(fps: f64) -> Self {
        Self {
            fps: Some(fps),
            ..Self::default()
        }
    }

    /// The flags alone, before any file is opened; the error says which
    /// flag is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.frames.is_some() && self.fps.is_some() {
            return Err("--frames and --fps are exclusive: give one".into());
        }
        if self.frames == Some(0) {
            return Err("--frames 0: at least one frame is needed".into());
        }
        if self.max_frames == Some(0) {
            return Err("--max-frames 0: at least one frame is needed".into());
        }
        if let Some(fps) = self.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(format!("--fps {fps}: a positive number is needed"));
            }
        }
        Ok(())
    }

    /// The sampled frame indices of a video of `total` frames shown at
    /// `video_fps` frames per second, ascending (the rule is on
    /// [`FrameSampling`]). The error is the reason, for the caller to
    /// put after the video's name.
    pub fn indices(&self, total: usize, video_fps: f64) -> Result<Vec<usize>, String> {
        self.validate()?;
        if total == 0 {
            return Err("the video has no frames".into());
        }
        let mut n = match (self.frames, self.fps) {
            (Some(n), _) if n > total => {
                return Err(format!(
                    "--frames {n} is more than the video's {total} frames"
                ))
            }
            (Some(n), _) => n,
            (None, Some(fps)) => {
                if !(video_fps.is_finite() && video_fps > 0.0) {
                    return Err("--fps: the video has no frame rate; use --frames".into());
                }
                // `as` saturates: a huge product becomes usize::MAX, then `total`
                let n = (total as f64 / video_fps * fps).floor() as usize;
                n.clamp(1, total)
            }
            (None, None) => total,
        };
        if let Some(max) = self.max_frames {
            n = n.min(max);
        }
        Ok(uniform_indices(total, n))
    }
}

/// `floor(i * total / n)` for `i = 0..n`: `n` of `total` frames spread
/// uniformly, starting at frame 0 (transformers' `np.arange(n) * T // n`).
/// `n` is at most `total`, so the indices are distinct.
pub fn uniform_indices(total: usize, n: usize) -> Vec<usize> {
    let (t, n) = (total as u128, n as u128);
    (0..n).map(|i| (i * t / n) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_when_n_is_the_total() {
        assert_eq!(uniform_indices(5, 5), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn fps_below_one_frame_keeps_frame_zero() {
        let s = FrameSampling::fps(0.01);
        assert_eq!(s.indices(10, 25.0), Ok(vec![0]));
    }

    #[test]
    fn fps_above_the_videos_keeps_every_frame() {
        let s = FrameSampling::fps(100.0);
        assert_eq!(s.indices(4, 10.0), Ok(vec![0, 1, 2, 3]));
    }

    #[test]
    fn max_frames_caps_the_count() {
        let s = FrameSampling {
            max_frames: Some(3),
            ..FrameSampling::all()
        };
        assert_eq!(s.indices(12, 10.0), Ok(vec![0, 4, 8]));
    }
}
