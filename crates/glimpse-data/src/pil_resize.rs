//! Pillow's convolution resampler for 8-bit RGB (libImaging/Resample.c),
//! reproduced bit for bit: double-precision filter weights normalised per
//! output pixel, rounded to 22-bit fixed point, a horizontal pass into an
//! 8-bit intermediate, then a vertical pass, each clipped to 0..=255.
//!
//! Why not a resize crate: transformers' processors resize through Pillow,
//! and the crates that follow Pillow (fast_image_resize) use 15-bit weights
//! or another pass order for speed, which moves pixels by up to several
//! levels on high-frequency images. Being one level off at every pixel is a
//! systematic shift of the model's input, so parity needs Pillow's arithmetic.

use image::RgbImage;

/// Pillow's resampling filters (the ones HF processors use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
    Lanczos,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                // cubic convolution with a = -0.5
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                let sinc = |x: f64| {
                    if x == 0.0 {
                        1.0
                    } else {
                        let px = x * std::f64::consts::PI;
                        px.sin() / px
                    }
                };
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output index: first input index, tap count, fixed-point weights.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.
fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Taps {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: arithmetic shift, then clamp.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((w, h), filter)` on an RGB image;
/// `None` only if `h` or `w` is 0 or too large to address.
///
/// # Shapes
/// HWC u8 (H, W, 3) -> (h, w, 3)
pub fn resize(img: &RgbImage, h: usize, w: usize, filter: Filter) -> Option<RgbImage> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if (in_h, in_w) == (h, w) {
        return Some(img.clone());
    }
    let horiz = taps(in_w, w, filter);
    let vert = taps(in_h, h, filter);
    let mut src: Vec<u8> = img.as_raw().clone();
    let (mut cur_w, mut cur_h, mut row_offset) = (in_w, in_h, 0usize);
    let half = 1i32 << (PRECISION_BITS - 1);

    if w != in_w {
        // Only the rows the vertical pass will read.
        let first = vert.bounds[0].0;
        let last = vert.bounds[h - 1].0 + vert.bounds[h - 1].1;
        let rows = if h != in_h { first..last } else { 0..in_h };
        let mut tmp = vec![0u8; rows.len() * w * 3];
        for (ty, y) in rows.clone().enumerate() {
            let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for xx in 0..w {
                let (xmin, xmax) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + xmax];
                let mut acc = [half; 3];
                for (x, kx) in k.iter().enumerate() {
                    let px = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i32::from(px[c]) * kx;
                    }
                }
                for c in 0..3 {
                    tmp[(ty * w + xx) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        row_offset = rows.start;
        src = tmp;
        cur_w = w;
        cur_h = rows.len();
    }

    if h != in_h {
        let mut out = vec![0u8; h * cur_w * 3];
        for yy in 0..h {
            let (ymin, ymax) = vert.bounds[yy];
            let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + ymax];
            for xx in 0..cur_w {
                let mut acc = [half; 3];
                for (y, ky) in k.iter().enumerate() {
                    let row = ymin + y - row_offset;
                    let px = &src[(row * cur_w + xx) * 3..(row * cur_w + xx) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i32::from(px[c]) * ky;
                    }
                }
                for c in 0..3 {
                    out[(yy * cur_w + xx) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        src = out;
        cur_h = h;
    }
    debug_assert_eq!((cur_h, cur_w), (h, w));
    RgbImage::from_raw(w as u32, h as u32, src)
}
