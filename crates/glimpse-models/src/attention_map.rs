//! Attention over a tiled or split image's prompt rows, laid back over the
//! picture: the inverse of how the families lay an image out in the prompt
//! (`llava_next::pack_image_features`, Idefics3's crops then the global
//! image). Pure functions on one image's per-row attention, so the layout
//! arithmetic is tested apart from any model (`Vlm::image_attention_maps`
//! gathers the attention).

/// How one image's prompt rows lie over the picture, for attention maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLayout {
    /// One tower pass over the whole image: its patch grid.
    Whole,
    /// LLaVA-NeXT: the whole image's tile, then the crop grid of an image
    /// `height` × `width`, unpadded, with a newline row after each row.
    Anyres { height: usize, width: usize },
    /// Idefics3 / SmolVLM: `rows` × `cols` crops row by row, then the
    /// global image (no crops when the image was read whole).
    Split { rows: usize, cols: usize },
}

/// `q` × `q` rows of `mass` from `start`, row-major.
fn square(mass: &[f32], start: usize, q: usize) -> Vec<Vec<f32>> {
    (0..q)
        .map(|r| mass[start + r * q..start + (r + 1) * q].to_vec())
        .collect()
}

/// `fine` plus a coarse `q` × `q` map of the same picture, each coarse
/// cell's attention spread evenly over the fine cells it covers: the map
/// stays attention per area, and its total is both views' total.
fn add_coarse(mut fine: Vec<Vec<f32>>, coarse: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let (rows, cols, q) = (fine.len(), fine[0].len(), coarse.len());
    let cell = |r: usize, c: usize| (r * q / rows, c * q / cols);
    let mut covered = vec![vec![0usize; q]; q];
    for r in 0..rows {
        for c in 0..cols {
            let (a, b) = cell(r, c);
            covered[a][b] += 1;
        }
    }
    for (r, row) in fine.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let (a, b) = cell(r, c);
            *v += coarse[a][b] / covered[a][b] as f32;
        }
    }
    fine
}

/// LLaVA-NeXT: `mass` is the base tile's `g` × `g` rows, then the unpadded
/// grid's `rows` × (`cols` + 1) (a newline after each row). The map is the
/// grid without its newline column, the base tile spread over it.
///
/// # Shapes
/// `mass`: (g² + rows·(cols + 1),) -> (rows, cols)
pub fn anyres(mass: &[f32], g: usize, rows: usize, cols: usize) -> Result<Vec<Vec<f32>>, String> {
    let base = g * g;
    if rows == 0 || cols == 0 || g == 0 || mass.len() != base + rows * (cols + 1) {
        return Err(format!(
            "{} rows for a {g}x{g} base tile and a {rows}x{cols} grid with newlines",
            mass.len()
        ));
    }
    let fine = (0..rows)
        .map(|r| {
            let start = base + r * (cols + 1);
            mass[start..start + cols].to_vec()
        })
        .collect();
    Ok(add_coarse(fine, &square(mass, 0, g)))
}

/// Idefics3 / SmolVLM: `mass` is `rows` × `cols` crops of `per` rows each
/// (a square q × q after pixel shuffle), row by row, then the global image.
/// The map is the crops side by side, the global image spread over them;
/// an image read whole (no crops) is the global image's q × q.
///
/// # Shapes
/// `mass`: ((rows·cols + 1)·per,) -> (rows·q, cols·q), or (q, q)
pub fn split(mass: &[f32], rows: usize, cols: usize, per: usize) -> Result<Vec<Vec<f32>>, String> {
    let q = (per as f64).sqrt().round() as usize;
    if q == 0 || q * q != per || mass.len() != (rows * cols + 1) * per {
        return Err(format!(
            "{} rows for {rows}x{cols} crops and a global image of {per} rows each",
            mass.len()
        ));
    }
    let global = square(mass, rows * cols * per, q);
    if rows * cols == 0 {
        return Ok(global);
    }
    let mut fine = vec![vec![0f32; cols * q]; rows * q];
    for i in 0..rows {
        for j in 0..cols {
            let tile = square(mass, (i * cols + j) * per, q);
            for (a, row) in tile.iter().enumerate() {
                fine[i * q + a][j * q..(j + 1) * q].copy_from_slice(row);
            }
        }
    }
    Ok(add_coarse(fine, &global))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_crops_side_by_side_with_the_global_image_spread() {
        // 1x2 crops of 2x2, then the global 2x2
        let mass = [1., 2., 3., 4., 5., 6., 7., 8., 10., 20., 30., 40.];
        let map = split(&mass, 1, 2, 4).unwrap();
        // each global cell covers 2 fine cells: +5, +10, +15, +20
        assert_eq!(map, vec![vec![6., 7., 15., 16.], vec![18., 19., 27., 28.]]);
        let total: f32 = map.iter().flatten().sum();
        assert_eq!(total, mass.iter().sum::<f32>());
        // read whole: the global image alone
        assert_eq!(
            split(&[1., 2., 3., 4.], 0, 0, 4).unwrap(),
            vec![vec![1., 2.], vec![3., 4.]]
        );
        assert!(split(&mass, 1, 2, 3).is_err());
        assert!(split(&mass[1..], 1, 2, 4).is_err());
    }

    #[test]
    fn anyres_drops_the_newlines_and_spreads_the_base_tile() {
        // base 1x1 (g = 1) = 6, then a 2x2 grid with a newline after each row
        let mass = [6., 1., 2., 100., 3., 4., 100.];
        let map = anyres(&mass, 1, 2, 2).unwrap();
        assert_eq!(map, vec![vec![2.5, 3.5], vec![4.5, 5.5]]);
        // the newlines' attention is left out, the rest kept
        let total: f32 = map.iter().flatten().sum();
        assert_eq!(total, 16.);
        assert!(anyres(&mass, 1, 2, 3).is_err());
    }
}
