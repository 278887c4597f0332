//! Position ids of a variable-size patch grid (HF `Idefics3VisionEmbeddings`,
//! `SmolVLMVisionEmbeddings`; NaViT, Dehghani et al. 2023): each valid
//! patch's fractional coordinate (row / valid rows, col / valid cols) is
//! bucketed into the trained n x n position table, so a grid of any size
//! reads the table's rows spread over it. Padding patches get id 0 (and are
//! masked out of attention).
//!
//! The arithmetic is torch's, in its dtypes, because a rounding difference
//! moves a patch to the next bucket: the boundaries are
//! `torch.arange(1/n, 1.0, 1/n)` in float32 (each `start + i·step` computed
//! in f64, the length `ceil((1 - 1/n) / (1/n))`, which is n for some n), the
//! step `1 / valid` a float32 division, the coordinate `i · step` a float32
//! product clamped to float32(1 - 1e-6), the bucket the count of boundaries
//! at or below it (`bucketize(right=True)`).

/// # Shapes
/// returns max_h·max_w ids, row-major over the padded grid, for a grid whose
/// top-left `valid.0` x `valid.1` patches are real; `n`: the table's side
/// (`image_size / patch_size`).
pub fn bucketed_position_ids(valid: (usize, usize), max: (usize, usize), n: usize) -> Vec<u32> {
    let start = 1.0 / n as f64;
    let count = ((1.0 - start) / start).ceil().max(0.0) as usize;
    let boundaries: Vec<f32> = (0..count)
        .map(|i| (start + start * i as f64) as f32)
        .collect();
    let top = (1.0f64 - 1e-6) as f32;
    let buckets = |valid: usize, len: usize| -> Vec<usize> {
        let step = 1.0f32 / valid as f32;
        (0..len)
            .map(|i| {
                let x = (i as f32 * step).min(top);
                boundaries.partition_point(|&b| b <= x)
            })
            .collect()
    };
    let rows = buckets(valid.0, max.0);
    let cols = buckets(valid.1, max.1);
    let mut ids = vec![0u32; max.0 * max.1];
    for (r, &br) in rows.iter().enumerate().take(valid.0) {
        for (c, &bc) in cols.iter().enumerate().take(valid.1) {
            ids[r * max.1 + c] = (br * n + bc) as u32;
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from transformers 5.23's `Idefics3VisionEmbeddings` arithmetic
    /// (torch 2.15) on the same grids.
    #[test]
    fn equals_torch() {
        assert_eq!(
            bucketed_position_ids((4, 4), (4, 4), 4),
            (0..16).collect::<Vec<_>>()
        );
        // n = 7: the boundaries hold a 7th value just below 1.0
        assert_eq!(
            bucketed_position_ids((7, 7), (7, 7), 7),
            (0..49).collect::<Vec<_>>()
        );
        assert_eq!(
            bucketed_position_ids((3, 5), (4, 6), 7),
            [0, 1, 2, 4, 5, 0, 14, 15, 16, 18, 19, 0, 28, 29, 30, 32, 33, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bucketed_position_ids((5, 3), (6, 6), 10),
            [
                0, 3, 6, 0, 0, 0, 20, 23, 26, 0, 0, 0, 40, 43, 46, 0, 0, 0, 60, 63, 66, 0, 0, 0,
                80, 83, 86, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let sum = |v: Vec<u32>| v.iter().map(|&x| u64::from(x)).sum::<u64>();
        assert_eq!(sum(bucketed_position_ids((26, 26), (26, 26), 26)), 228_150);
        assert_eq!(sum(bucketed_position_ids((13, 9), (16, 16), 27)), 39_312);
    }
}
