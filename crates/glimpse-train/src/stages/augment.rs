//! Image augmentation for stages that run the vision tower forward on
//! training images. easy-VQA's labels (a colour and a shape that is a
//! circle, rectangle or upright triangle at a random place) do not change
//! under a left-right mirror, so `hflip` shows the tower each image mirrored
//! half of the time: a twice larger training set for the price of a copy.
//! `dihedral` draws one of the eight symmetries of the square, for data
//! whose labels do not depend on orientation at all (on easy-VQA it costs
//! accuracy: the test triangles are all upright). `shift = N` also moves
//! each image by up to N pixels each way, the uncovered border repeating
//! the edge pixels (easy-VQA's plain background): the shapes sit anywhere,
//! and a moved image puts them across other patch boundaries. `rotate = D`
//! turns each image by an angle drawn from [-D, D] degrees about its centre
//! (bilinear, the uncovered corners repeating the edge): shapes drawn at
//! any angle, which easy-VQA never shows and other images do
//! (docs/generalisation.md). Kept out of evaluation.

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

/// What a contrastive stage does to each training image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Orientations drawn from (see [`source`]): 1 none, 2 mirrors
    /// left-right or not, 8 is every symmetry of the square.
    pub orientations: u8,
    /// Largest move each way, in pixels.
    pub shift: usize,
    /// Largest turn each way, in degrees (0: none).
    pub rotate: f64,
}

impl Augment {
    pub fn is_identity(&self) -> bool {
        self.orientations <= 1 && self.shift == 0 && self.rotate == 0.0
    }
}

/// Turns one (H, W) plane by `angle` radians about its centre: output
/// (y, x) reads the input bilinearly at the point the inverse turn takes
/// it to, clamped into the frame.
fn rotate_plane(src: &[f32], h: usize, w: usize, angle: f64, out: &mut [f32]) {
    let (sin, cos) = angle.sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let at = |y: i64, x: i64| {
        let y = y.clamp(0, h as i64 - 1) as usize;
        let x = x.clamp(0, w as i64 - 1) as usize;
        f64::from(src[y * w + x])
    };
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (y as f64 - cy, x as f64 - cx);
            let sy = cos * dy - sin * dx + cy;
            let sx = sin * dy + cos * dx + cx;
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - y0, sx - x0);
            let (y0, x0) = (y0 as i64, x0 as i64);
            let v = at(y0, x0) * (1.0 - fy) * (1.0 - fx)
                + at(y0, x0 + 1) * (1.0 - fy) * fx
                + at(y0 + 1, x0) * fy * (1.0 - fx)
                + at(y0 + 1, x0 + 1) * fy * fx;
            out[y * w + x] = v as f32;
        }
    }
}

/// (B, C, H, W) -> (B, C, H, W): each row in an orientation drawn from
/// `seed` (the same seed, the same batch: resumed runs see the same
/// pixels), then moved by (dy, dx) in [-shift, shift]². Nothing is drawn
/// for a transform that is off, so mirror-only runs see the pixels they
/// always did.
pub fn augment(pixels: &Tensor, aug: Augment, seed: u64) -> Result<Tensor> {
    let (b, c, h, w) = pixels.dims4()?;
    if aug.is_identity() {
        return Ok(pixels.clone());
    }
    if aug.orientations > 2 && h != w {
        return Err(TrainError::Config(format!(
            "augment: turning images needs them square, got {h}x{w}"
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let src = pixels.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    let mut out = vec![0f32; src.len()];
    let s = aug.shift as i64;
    for row in 0..b {
        let k: u8 = rng.random_range(0..aug.orientations.max(1));
        let (dy, dx) = if aug.shift > 0 {
            (rng.random_range(-s..=s), rng.random_range(-s..=s))
        } else {
            (0, 0)
        };
        // the moved image's (y, x) shows the oriented one's (y - dy, x - dx),
        // clamped into the frame
        let moved = |v: usize, d: i64, n: usize| (v as i64 - d).clamp(0, n as i64 - 1) as usize;
        for ch in 0..c {
            let base = (row * c + ch) * plane;
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = source(k, h, w, moved(y, dy, h), moved(x, dx, w));
                    out[base + y * w + x] = src[base + sy * w + sx];
                }
            }
        }
        // drawn last, so runs without it see the pixels they always did
        if aug.rotate > 0.0 {
            let angle = rng.random_range(-aug.rotate..=aug.rotate).to_radians();
            for ch in 0..c {
                let base = (row * c + ch) * plane;
                let turned = out[base..base + plane].to_vec();
                rotate_plane(&turned, h, w, angle, &mut out[base..base + plane]);
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

    fn aug(orientations: u8, shift: usize) -> Augment {
        Augment {
            orientations,
            shift,
            rotate: 0.0,
        }
    }

    /// A quarter turn by rotation lands every pixel where the dihedral
    /// quarter turn does (bilinear at whole pixels), and a turn by 0 keeps
    /// the image.
    #[test]
    fn rotation_by_a_right_angle_is_a_quarter_turn() {
        let (h, w) = (5, 5);
        let img: Vec<f32> = (0..25).map(|v| v as f32).collect();
        let mut out = vec![0f32; 25];
        rotate_plane(&img, h, w, 0.0, &mut out);
        assert_eq!(out, img);
        rotate_plane(&img, h, w, std::f64::consts::FRAC_PI_2, &mut out);
        // out(y, x) reads in(w - 1 - x, y) after a turn by +90°
        for y in 0..h {
            for x in 0..w {
                let want = img[(w - 1 - x) * w + y];
                assert!((out[y * w + x] - want).abs() < 1e-4, "({y}, {x})");
            }
        }
    }

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
        let a = augment(&x, aug(8, 0), 7).unwrap();
        let b = augment(&x, aug(8, 0), 7).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // each channel plane keeps its own values
        let sum = |t: &Tensor| t.sum((2, 3)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(sum(&a), sum(&x));
        // some seed turns some row
        let moved = (0..16).any(|s| {
            augment(&x, aug(2, 0), s)
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
        let e = augment(&x, aug(8, 0), 0).unwrap_err().to_string();
        assert!(e.contains("4x5"), "{e}");
        // one orientation (or none) leaves the pixels as they are
        assert!(augment(&x, aug(1, 0), 0).is_ok() && augment(&x, aug(0, 0), 0).is_ok());
        // a mirror needs no square: each row of each plane comes back reversed
        let x = Tensor::arange(0f32, 20.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 5))
            .unwrap();
        let mirrored = (0..16)
            .map(|seed| augment(&x, aug(2, 0), seed).unwrap())
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

    /// A shift moves the image by at most `shift` pixels and repeats the
    /// edge into the uncovered border; every row of a batch draws its own.
    #[test]
    fn shift_moves_within_bounds_and_repeats_the_edge() {
        // one plane 6x6 holding 10*y + x
        let x = Tensor::from_vec(
            (0..36)
                .map(|i| (10 * (i / 6) + i % 6) as f32)
                .collect::<Vec<_>>(),
            (1, 1, 6, 6),
            &Device::Cpu,
        )
        .unwrap();
        let batch = Tensor::cat(&[&x; 8], 0).unwrap();
        let out = augment(&batch, aug(1, 2), 3).unwrap();
        let mut moves = std::collections::BTreeSet::new();
        for r in 0..8 {
            let p = out
                .get(r)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            // the centre pixel (3, 3) shows (3 - dy, 3 - dx)
            let (sy, sx) = ((p[3][3] / 10.0) as i64, (p[3][3] % 10.0) as i64);
            let (dy, dx) = (3 - sy, 3 - sx);
            assert!(dy.abs() <= 2 && dx.abs() <= 2, "moved by ({dy}, {dx})");
            for (y, line) in p.iter().enumerate() {
                for (xx, &v) in line.iter().enumerate() {
                    let cy = (y as i64 - dy).clamp(0, 5);
                    let cx = (xx as i64 - dx).clamp(0, 5);
                    assert_eq!(v, (10 * cy + cx) as f32, "row {r} at ({y}, {xx})");
                }
            }
            moves.insert((dy, dx));
        }
        assert!(moves.len() > 1, "every row moved alike: {moves:?}");
        // no shift and one orientation: the pixels as they are
        let same = augment(&batch, aug(1, 0), 3).unwrap();
        assert_eq!(
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            batch.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
