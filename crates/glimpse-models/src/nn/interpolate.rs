//! Bicubic resizing of a learned position-embedding grid, matching
//! `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
//! (cubic convolution with A = -0.75, edge indices clamped), which is what
//! transformers' `interpolate_pos_encoding` uses for CLIP and SigLIP.
//!
//! Bicubic interpolation is separable, so the 2-D resize is
//! `Wh · grid · Wwᵀ` with one weight matrix per axis.

use candle_core::{Result, Tensor};

const A: f64 = -0.75;

fn cubic_near(x: f64) -> f64 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic_far(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// (out, in) matrix whose row o holds the four cubic taps for output `o`.
fn axis_weights(input: usize, output: usize) -> Vec<f32> {
    let mut w = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    let last = input as i64 - 1;
    for o in 0..output {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let base = src.floor();
        let t = src - base;
        let taps = [
            cubic_far(t + 1.0),
            cubic_near(t),
            cubic_near(1.0 - t),
            cubic_far(2.0 - t),
        ];
        for (k, tap) in taps.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, last) as usize;
            w[o * input + idx] += *tap as f32;
        }
    }
    w
}

/// # Shapes
/// `grid`: (h, w, D) -> (new_h, new_w, D)
pub fn bicubic_resize_grid(grid: &Tensor, new_h: usize, new_w: usize) -> Result<Tensor> {
    let (h, w, d) = grid.dims3()?;
    if (h, w) == (new_h, new_w) {
        return Ok(grid.clone());
    }
    let dev = grid.device();
    let dtype = grid.dtype();
    let wh = Tensor::from_vec(axis_weights(h, new_h), (new_h, h), dev)?.to_dtype(dtype)?;
    let ww = Tensor::from_vec(axis_weights(w, new_w), (new_w, w), dev)?.to_dtype(dtype)?;
    // rows: (new_h, h) x (h, w*D) -> (new_h, w*D)
    let rows = wh.matmul(&grid.reshape((h, w * d))?)?;
    // (new_h, w, D) -> (new_h, D, w) so the width axis is last
    let rows = rows.reshape((new_h, w, d))?.transpose(1, 2)?.contiguous()?;
    // cols: (new_h*D, w) x (w, new_w) -> (new_h*D, new_w)
    let cols = rows.reshape((new_h * d, w))?.matmul(&ww.t()?)?;
    // (new_h, D, new_w) -> (new_h, new_w, D)
    cols.reshape((new_h, d, new_w))?
        .transpose(1, 2)?
        .contiguous()
}
