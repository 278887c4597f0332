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
    /// glimpse's own tiling: `rows` × `cols` crops row by row, then a
    /// thumbnail of the whole image when `thumbnail`.
    Tiles {
        rows: usize,
        cols: usize,
        thumbnail: bool,
    },
    /// Llama 3.2 Vision: a canvas of `rows` × `cols` tiles (row by row,
    /// then padding tiles up to the model's `max_num_tiles`) on which the
    /// image, resized to `height` × `width` pixels, sits at the top left.
    Canvas {
        rows: usize,
        cols: usize,
        height: usize,
        width: usize,
    },
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
    tiles(mass, rows, cols, per, true)
}

/// Crops side by side, then (when `thumbnail`) a whole-image view spread
/// over them: Idefics3's split ([`split`]) and glimpse's own tiling
/// (`glimpse_data::dynamic_tiles`: `rows` × `cols` crops of `per` rows,
/// a thumbnail after them when there is more than one).
///
/// # Shapes
/// `mass`: ((rows·cols + thumbnail)·per,) -> (rows·q, cols·q), or (q, q)
pub fn tiles(
    mass: &[f32],
    rows: usize,
    cols: usize,
    per: usize,
    thumbnail: bool,
) -> Result<Vec<Vec<f32>>, String> {
    let q = (per as f64).sqrt().round() as usize;
    let views = rows * cols + usize::from(thumbnail);
    if q == 0 || q * q != per || views == 0 || mass.len() != views * per {
        return Err(format!(
            "{} rows for {rows}x{cols} crops{} of {per} rows each",
            mass.len(),
            if thumbnail {
                " and a whole-image view"
            } else {
                ""
            }
        ));
    }
    if rows * cols == 0 {
        return Ok(square(mass, 0, q));
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
    if !thumbnail {
        return Ok(fine);
    }
    Ok(add_coarse(fine, &square(mass, rows * cols * per, q)))
}

/// Llama 3.2 Vision: `mass` is `max_tiles` tiles of `1 + g²` rows each
/// (the class token, then the tile's `g` × `g` patches), the first `rows` ×
/// `cols` of them the image's canvas row by row, the rest padding tiles.
/// The map is the canvas's patch grid cut to the `content` (rows, cols) of
/// patches the resized image covers (the processor pads bottom and right
/// with black). Class tokens and padding tiles have no place on the picture
/// and are left out.
///
/// # Shapes
/// `mass`: (max_tiles·(1 + g²),) -> content
pub fn canvas(
    mass: &[f32],
    (rows, cols): (usize, usize),
    g: usize,
    max_tiles: usize,
    content: (usize, usize),
) -> Result<Vec<Vec<f32>>, String> {
    let per = 1 + g * g;
    if g == 0 || rows * cols == 0 || rows * cols > max_tiles || mass.len() != max_tiles * per {
        return Err(format!(
            "{} rows for {max_tiles} tiles of 1 + {g}x{g} rows with a {rows}x{cols} canvas",
            mass.len()
        ));
    }
    let (ch, cw) = content;
    if ch == 0 || cw == 0 || ch > rows * g || cw > cols * g {
        return Err(format!(
            "an image of {ch}x{cw} patches does not fit a {rows}x{cols} canvas of {g}x{g} tiles"
        ));
    }
    Ok((0..ch)
        .map(|y| {
            (0..cw)
                .map(|x| {
                    let tile = (y / g) * cols + x / g;
                    mass[tile * per + 1 + (y % g) * g + x % g]
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvas_joins_the_tiles_and_cuts_the_padding() {
        // 1x2 canvas of 2x2 tiles, max 3 tiles: [cls, 4 patches] x 3
        let mass = [
            100., 1., 2., 3., 4., //
            100., 5., 6., 7., 8., //
            100., 9., 9., 9., 9.,
        ];
        let full = canvas(&mass, (1, 2), 2, 3, (2, 4)).unwrap();
        assert_eq!(full, vec![vec![1., 2., 5., 6.], vec![3., 4., 7., 8.]]);
        // the image covers 1 patch row and 3 patch columns
        let cut = canvas(&mass, (1, 2), 2, 3, (1, 3)).unwrap();
        assert_eq!(cut, vec![vec![1., 2., 5.]]);
        assert!(canvas(&mass, (2, 2), 2, 3, (1, 1)).is_err());
        assert!(canvas(&mass, (1, 2), 2, 3, (3, 1)).is_err());
        assert!(canvas(&mass[1..], (1, 2), 2, 3, (1, 1)).is_err());
    }

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
    fn tiles_without_a_thumbnail_are_the_crops_alone() {
        // 2x1 crops of 1 row each, no thumbnail
        assert_eq!(
            tiles(&[1., 2.], 2, 1, 1, false).unwrap(),
            vec![vec![1.], vec![2.]]
        );
        // with a thumbnail of one cell over both: +1.5 each
        assert_eq!(
            tiles(&[1., 2., 3.], 2, 1, 1, true).unwrap(),
            vec![vec![2.5], vec![3.5]]
        );
        // one crop, no thumbnail: its own square
        assert_eq!(
            tiles(&[1., 2., 3., 4.], 1, 1, 4, false).unwrap(),
            vec![vec![1., 2.], vec![3., 4.]]
        );
        assert!(tiles(&[1., 2., 3.], 2, 1, 1, false).is_err());
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
