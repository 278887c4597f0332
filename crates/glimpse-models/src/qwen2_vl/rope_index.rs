//! M-RoPE positions of a Qwen2-VL prompt (transformers'
//! `Qwen2VLModel.get_rope_index`): text tokens count up on all three axes;
//! an image's (or video's) placeholder run takes (t, row, column) positions
//! over its merged grid, all offset by where it starts, and the text after
//! it resumes at start + max(rows, columns). `rope_delta` is how far the
//! positions run behind (or ahead of) the token count, which decoding
//! adds to every later token.

use crate::error::{ModelError, Result};

/// The three position rows of a prompt and its `rope_deltas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// temporal, height, width: T positions each.
    pub axes: [Vec<usize>; 3],
    /// max position + 1 - T.
    pub delta: i64,
}

/// Positions for `ids` whose image placeholder runs take `image_grids`
/// in order, and video runs `video_grids` (grids as the processor gives
/// them, before merging). Each run of consecutive placeholders is one
/// image, as transformers groups them, and must hold exactly that image's
/// t·h·w / m² tokens.
pub fn rope_index(
    ids: &[u32],
    image_token: u32,
    video_token: u32,
    image_grids: &[[usize; 3]],
    video_grids: &[[usize; 3]],
    merge: usize,
) -> Result<RopeIndex> {
    let mut axes: [Vec<usize>; 3] = Default::default();
    let mut grids = [image_grids.iter(), video_grids.iter()];
    let mut current = 0usize;
    let mut i = 0;
    while i < ids.len() {
        let kind = |id: u32| {
            if id == image_token {
                Some(0)
            } else if id == video_token {
                Some(1)
            } else {
                None
            }
        };
        let here = kind(ids[i]);
        let end = (i..ids.len())
            .find(|&j| kind(ids[j]) != here)
            .unwrap_or(ids.len());
        match here {
            None => {
                for p in current..current + (end - i) {
                    axes.iter_mut().for_each(|a| a.push(p));
                }
                current += end - i;
            }
            Some(k) => {
                let what = ["image", "video"][k];
                let &[t, h, w] = grids[k].next().ok_or_else(|| {
                    ModelError::Input(format!(
                        "the prompt holds more {what} placeholder runs than {what}s"
                    ))
                })?;
                let (gh, gw) = (h / merge, w / merge);
                if end - i != t * gh * gw {
                    return Err(ModelError::Input(format!(
                        "a run of {} {what} placeholders at token {i} for a {t}x{h}x{w} grid that needs {} (placeholders of two {what}s need text between them)",
                        end - i,
                        t * gh * gw
                    )));
                }
                // (t, gh, gw) meshgrid flattened t-major
                for ti in 0..t {
                    for y in 0..gh {
                        for x in 0..gw {
                            axes[0].push(current + ti);
                            axes[1].push(current + y);
                            axes[2].push(current + x);
                        }
                    }
                }
                current += gh.max(gw);
            }
        }
        i = end;
    }
    if grids.iter_mut().any(|g| g.next().is_some()) {
        return Err(ModelError::Input(
            "more images or videos than placeholder runs in the prompt".into(),
        ));
    }
    let max = axes.iter().flatten().max().map_or(0, |&m| m as i64 + 1);
    Ok(RopeIndex {
        axes,
        delta: max - ids.len() as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_positions_follow_the_merged_grid() {
        // text 2, an image 4x6 patches (2x3 merged), text 2
        let ids = [1, 2, 9, 9, 9, 9, 9, 9, 3, 4];
        let r = rope_index(&ids, 9, 8, &[[1, 4, 6]], &[], 2).unwrap();
        assert_eq!(r.axes[0], [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(r.axes[1], [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(r.axes[2], [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(r.delta, 7 - 10);
        assert!(rope_index(&ids, 9, 8, &[[1, 4, 4]], &[], 2).is_err());
        assert!(rope_index(&ids, 9, 8, &[], &[], 2).is_err());
        assert!(rope_index(&ids, 9, 8, &[[1, 4, 6], [1, 2, 2]], &[], 2).is_err());
    }
}
