//! Image augmentation for stages that run the vision tower forward on
//! training images. easy-VQA's labels (a colour and a shape that is a
//! circle, rectangle or upright triangle at a random place) do not change
//! under a left-right mirror, so `hflip` shows the tower each image mirrored
//! half of the time: a twice larger training set for the price of a copy.
//! `dihedral` draws one of the eight symmetries of the square, for data
//! whose labels do not depend on orientation at all (on easy-VQA it costs
//! accuracy: the test triangles are all upright). Kept out of evaluation.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{Result, TrainError};

/// The augmentations a recipe may name.
pub const AUGMENTATIONS: [&str; 3] = ["none", "hflip", "dihedral"];

/// Where pixel (y, x) of an orientation `k` in 0..8 reads from, in an
/// `h` × `w` image: `k & 1` mirrors left-right, `k & 2` mirrors top-bottom,
/// `k & 4` transposes (square images only; rotations are a transpose and a
/// mirror).
fn source(k: u8, h: usize, w: usize, y: usize, x: usize) -> (usize, usize) {
    let (mut sy, mut sx) = if k & 4 != 0 { (x, y) } else { (y, x) };
    if k & 1 != 0 {
        sx = w - 1 - sx;
    }
    if k & 2 != 0 {
        sy = h - 1 - sy;
    }
    (sy, sx)
}

/// (B, C, H, W) -> (B, C, H, W): each row in an orientation drawn from
/// `seed` (the same seed, the same batch: resumed runs see the same
/// pixels) among the first `orientations` of [`source`]'s: 2 mirrors
/// left-right or not, 8 is every symmetry of the square.
pub fn reorient(pixels: &Tensor, orientations: u8, seed: u64) -> Result<Tensor> {
    let (b, c, h, w) = pixels.dims4()?;
    if orientations <= 1 {
        return Ok(pixels.clone());
    }
    if orientations > 2 && h != w {
        return Err(TrainError::Config(format!(
            "augment: turning images needs them square, got {h}x{w}"
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let src = pixels.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    let mut out = vec![0f32; src.len()];
    for row in 0..b {
        let k: u8 = rng.random_range(0..orientations);
        for ch in 0..c {
            let base = (row * c + ch) * plane;
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = source(k, h, w, y, x);
                    out[base + y * w + x] = src[base + sy * w + sx];
                }
            }
        }
    }
    let device: &Device = pixels.device();
    Ok(Tensor::from_vec(out, (b, c, h, w), device)?)
}

/// The orientations an `augment` value draws from (1: none).
pub fn orientations(augment: &str) -> u8 {
    match augment {
        "hflip" => 2,
        "dihedral" => 8,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight orientations of an asymmetric 3x3 image are eight
    /// different images, each a permutation of the same pixels.
    #[test]
    fn eight_distinct_orientations() {
        let n = 3;
        let img: Vec<u32> = (0..9).collect();
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..8u8 {
            let t: Vec<u32> = (0..n * n)
                .map(|i| {
                    let (sy, sx) = source(k, n, n, i / n, i % n);
                    img[sy * n + sx]
                })
                .collect();
            let mut sorted = t.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, img);
            seen.insert(t);
        }
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn same_seed_same_batch_and_pixels_kept() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 16.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 4))
            .unwrap();
        let a = reorient(&x, 8, 7).unwrap();
        let b = reorient(&x, 8, 7).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // each channel plane keeps its own values
        let sum = |t: &Tensor| t.sum((2, 3)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(sum(&a), sum(&x));
        // some seed turns some row
        let moved = (0..16).any(|s| {
            reorient(&x, 2, s)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                != x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        });
        assert!(moved);
    }

    #[test]
    fn non_square_is_an_error() {
        let x = Tensor::zeros((1, 3, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = reorient(&x, 8, 0).unwrap_err().to_string();
        assert!(e.contains("4x5"), "{e}");
        // one orientation (or none) leaves the pixels as they are
        assert!(reorient(&x, 1, 0).is_ok() && reorient(&x, 0, 0).is_ok());
        // a mirror needs no square: each row of each plane comes back reversed
        let x = Tensor::arange(0f32, 20.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 5))
            .unwrap();
        let mirrored = (0..16)
            .map(|seed| reorient(&x, 2, seed).unwrap())
            .find(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] != 0.0)
            .expect("some seed mirrors the row");
        let rows = mirrored
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(rows[0], vec![4.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(rows[3], vec![19.0, 18.0, 17.0, 16.0, 15.0]);
    }
}
