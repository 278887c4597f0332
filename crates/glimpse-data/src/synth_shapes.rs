//! A second generator of easy-VQA-style data, drawn by our own code, never
//! trained on: it measures whether a model trained on easy-VQA knows shapes
//! and colours or only easy-VQA's renderings of them (issue 18, item 7).
//!
//! What it shares with easy-VQA: one shape per image, the 8 colour names and
//! 3 shapes ([`COLORS`], [`SHAPES`]), the 24 question templates
//! ([`TEMPLATES`]) and the 13 answers, and the split layout
//! (`images/N.png` + `questions.json` as `[[question, answer, image_id], ..]`),
//! so `glimpse eval vqa` and `eval zeroshot` score it exactly as they score
//! easy-VQA's test split.
//!
//! What differs (easy-VQA draws aliased, axis-aligned rectangles, upright
//! triangles and circles in one exact colour per name on a flat pale tint):
//! - anti-aliased fills (4×4 samples a pixel);
//! - rectangles of aspect 0.35–1 at any rotation; triangles with every angle
//!   at least 40° at any rotation (scalene as often as not); circles;
//! - sizes from 14% to 42% of the side (circumradius), anywhere inside;
//! - each colour jittered around its named value (±32 on all channels
//!   together, ±12 on each) with a brightness gradient across the shape
//!   (up to ±12%), kept unambiguous:
//!   every shade is at most half as far from its own name's colour as from
//!   any other's;
//! - backgrounds: a linear gradient between two random light tints at a
//!   random angle, and per-pixel noise of up to ±6 on the whole image;
//! - yes/no questions name the drawn attribute half the time (easy-VQA: one
//!   colour question in 8, one shape question in 3), so always answering
//!   "no" scores 50% here.
//!
//! Everything is a function of (seed, image id): image N is the same whether
//! 10 or 10,000 images are written.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::datasets::caption_jsonl::write_caption_jsonl;
use crate::datasets::easy_vqa::{easy_vqa_to_captions, easy_vqa_to_llava, VqaExample};
use crate::datasets::llava_json::write_llava_json;
use crate::datasets::{write_atomic, COLORS, SHAPES};
use crate::error::{DataError, Result};

/// The RGB value each colour name stands for, in [`COLORS`] order (the
/// values easy-VQA's images use for those names).
pub const NAMED_RGB: [[u8; 3]; 8] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [0, 0, 0],
    [128, 128, 128],
    [0, 128, 128],
    [165, 42, 42],
    [255, 255, 0],
];

/// Image side bounds: below 32 the smallest shapes lose their form; above
/// 512 a split of many images is gigabytes for no gain.
pub const MIN_SIZE: u32 = 32;
pub const MAX_SIZE: u32 = 512;
/// easy-VQA's side.
pub const DEFAULT_SIZE: u32 = 64;
/// 25× easy-VQA's train split (about 1 GB of PNGs, 1M questions held in
/// memory while writing): far past any held-out use.
pub const MAX_IMAGES: usize = 100_000;
/// 2 colour, 2 shape and 6 yes/no questions an image (easy-VQA: 9.7 on average).
pub const QUESTIONS_PER_IMAGE: usize = 10;

/// Samples per pixel side for anti-aliasing.
const SUPERSAMPLE: u32 = 4;
/// Jitter around a named colour: all channels together, then each alone.
const BRIGHTNESS_JITTER: i32 = 32;
const COLOR_JITTER: i32 = 12;
/// Largest brightness change across a shape (fraction of its colour).
const MAX_SHADE: f32 = 0.12;
/// Largest per-pixel noise amplitude.
const MAX_NOISE: i32 = 6;

/// What a question asks; the yes/no kinds say whether the template is
/// negated ("is there not ...", "is no ... present", "does ... not contain").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    Color,
    Shape,
    HasColor { negated: bool },
    HasShape { negated: bool },
}

/// A question pattern: `{color}` and `{shape}` are filled with a colour or
/// shape name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub text: &'static str,
    pub asks: Asks,
}

impl Template {
    pub fn fill(&self, color: &str, shape: &str) -> String {
        self.text
            .replace("{color}", color)
            .replace("{shape}", shape)
    }
}

const fn t(text: &'static str, asks: Asks) -> Template {
    Template { text, asks }
}

const YES_COLOR: Asks = Asks::HasColor { negated: false };
const NOT_COLOR: Asks = Asks::HasColor { negated: true };
const YES_SHAPE: Asks = Asks::HasShape { negated: false };
const NOT_SHAPE: Asks = Asks::HasShape { negated: true };

/// easy-VQA's 24 question patterns (all that its train and test splits use).
pub const TEMPLATES: [Template; 24] = [
    t("what color is the shape?", Asks::Color),
    t("what color is the {shape}?", Asks::Color),
    t("what is the color of the shape?", Asks::Color),
    t("what is the color of the {shape}?", Asks::Color),
    t("what is the {color} shape?", Asks::Shape),
    t("what shape does the image contain?", Asks::Shape),
    t("what shape is in the image?", Asks::Shape),
    t("what shape is present?", Asks::Shape),
    t("does the image contain a {color} shape?", YES_COLOR),
    t("does the image not contain a {color} shape?", NOT_COLOR),
    t("is a {color} shape present?", YES_COLOR),
    t("is no {color} shape present?", NOT_COLOR),
    t("is there a {color} shape in the image?", YES_COLOR),
    t("is there a {color} shape?", YES_COLOR),
    t("is there not a {color} shape in the image?", NOT_COLOR),
    t("is there not a {color} shape?", NOT_COLOR),
    t("does the image contain a {shape}?", YES_SHAPE),
    t("does the image not contain a {shape}?", NOT_SHAPE),
    t("is a {shape} present?", YES_SHAPE),
    t("is no {shape} present?", NOT_SHAPE),
    t("is there a {shape} in the image?", YES_SHAPE),
    t("is there a {shape}?", YES_SHAPE),
    t("is there not a {shape} in the image?", NOT_SHAPE),
    t("is there not a {shape}?", NOT_SHAPE),
];

/// How many questions of each kind an image gets: open colour, open shape,
/// yes/no colour, yes/no shape.
const PER_KIND: [usize; 4] = [2, 2, 3, 3];

/// The colour name (index into [`COLORS`]) nearest to `rgb`.
pub fn nearest_color(rgb: [u8; 3]) -> usize {
    let mut best = 0;
    let mut best_d = u32::MAX;
    for (i, named) in NAMED_RGB.iter().enumerate() {
        let d = dist2(rgb, *named);
        if d < best_d {
            best = i;
            best_d = d;
        }
    }
    best
}

fn dist2(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| (i32::from(x) - i32::from(y)).unsigned_abs().pow(2))
        .sum()
}

/// The colour `rgb` names with room to spare (see [`unambiguous`]); `None`
/// for what is between names, such as the light backgrounds.
pub fn clearly_named(rgb: [u8; 3]) -> Option<usize> {
    let idx = nearest_color(rgb);
    unambiguous(rgb, idx).then_some(idx)
}

/// `rgb` names colour `idx` with room to spare: at most half as far from
/// its colour as from any other (squared distances: a quarter).
fn unambiguous(rgb: [u8; 3], idx: usize) -> bool {
    let own = dist2(rgb, NAMED_RGB[idx]);
    NAMED_RGB
        .iter()
        .enumerate()
        .all(|(j, other)| j == idx || own * 4 <= dist2(rgb, *other))
}

fn scale_rgb(rgb: [u8; 3], f: f32) -> [u8; 3] {
    rgb.map(|c| (f32::from(c) * f).round().clamp(0.0, 255.0) as u8)
}

/// One drawn shape in pixel coordinates (x right, y down; pixel (i, j)
/// covers [i, i+1) × [j, j+1)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Geometry {
    Circle {
        center: (f32, f32),
        radius: f32,
    },
    /// Half-sides along the rectangle's own axes, turned by `angle` radians.
    Rectangle {
        center: (f32, f32),
        half: (f32, f32),
        angle: f32,
    },
    Triangle {
        vertices: [(f32, f32); 3],
    },
}

impl Geometry {
    pub fn contains(&self, x: f32, y: f32) -> bool {
        match *self {
            Geometry::Circle { center, radius } => {
                let (dx, dy) = (x - center.0, y - center.1);
                dx * dx + dy * dy <= radius * radius
            }
            Geometry::Rectangle {
                center,
                half,
                angle,
            } => {
                let (s, c) = angle.sin_cos();
                let (dx, dy) = (x - center.0, y - center.1);
                let u = dx * c + dy * s;
                let v = -dx * s + dy * c;
                u.abs() <= half.0 && v.abs() <= half.1
            }
            Geometry::Triangle { vertices: v } => {
                let edge = |a: (f32, f32), b: (f32, f32)| {
                    (b.0 - a.0) * (y - a.1) - (b.1 - a.1) * (x - a.0)
                };
                let e = [edge(v[0], v[1]), edge(v[1], v[2]), edge(v[2], v[0])];
                e.iter().all(|&d| d >= 0.0) || e.iter().all(|&d| d <= 0.0)
            }
        }
    }

    /// The centre of mass (inside the shape for all three kinds).
    pub fn centroid(&self) -> (f32, f32) {
        match *self {
            Geometry::Circle { center, .. } | Geometry::Rectangle { center, .. } => center,
            Geometry::Triangle { vertices: v } => (
                (v[0].0 + v[1].0 + v[2].0) / 3.0,
                (v[0].1 + v[1].1 + v[2].1) / 3.0,
            ),
        }
    }

    fn corners(&self) -> Vec<(f32, f32)> {
        match *self {
            Geometry::Circle { center, radius } => vec![
                (center.0 - radius, center.1 - radius),
                (center.0 + radius, center.1 + radius),
            ],
            Geometry::Rectangle {
                center,
                half,
                angle,
            } => {
                let (s, c) = angle.sin_cos();
                [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)]
                    .iter()
                    .map(|(a, b)| {
                        let (u, v) = (a * half.0, b * half.1);
                        (center.0 + u * c - v * s, center.1 + u * s + v * c)
                    })
                    .collect()
            }
            Geometry::Triangle { vertices } => vertices.to_vec(),
        }
    }

    /// (min x, min y, max x, max y).
    pub fn bounds(&self) -> (f32, f32, f32, f32) {
        self.corners().iter().fold(
            (f32::MAX, f32::MAX, f32::MIN, f32::MIN),
            |(x0, y0, x1, y1), &(x, y)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
        )
    }

    /// The shape moved by (dx, dy).
    pub fn translate(self, dx: f32, dy: f32) -> Self {
        let mv = |p: (f32, f32)| (p.0 + dx, p.1 + dy);
        match self {
            Geometry::Circle { center, radius } => Geometry::Circle {
                center: mv(center),
                radius,
            },
            Geometry::Rectangle {
                center,
                half,
                angle,
            } => Geometry::Rectangle {
                center: mv(center),
                half,
                angle,
            },
            Geometry::Triangle { vertices } => Geometry::Triangle {
                vertices: vertices.map(mv),
            },
        }
    }
}

/// One generated image and what it shows.
#[derive(Debug, Clone)]
pub struct SynthImage {
    /// Index into [`COLORS`].
    pub color: usize,
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// The shape's colour before shading and noise.
    pub fill: [u8; 3],
    pub geometry: Geometry,
    pub image: RgbImage,
}

impl SynthImage {
    pub fn color_name(&self) -> &'static str {
        COLORS[self.color]
    }

    pub fn shape_name(&self) -> &'static str {
        SHAPES[self.shape]
    }
}

/// An image with its questions and answers.
#[derive(Debug, Clone)]
pub struct SynthExample {
    pub image: SynthImage,
    /// (question, answer), in the order written.
    pub questions: Vec<(String, String)>,
}

/// splitmix64's finaliser: nearby (seed, id) pairs give unrelated streams.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn check_size(size: u32) -> Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DataError::Input(format!(
            "synthetic shapes: size {size} is outside {MIN_SIZE}..={MAX_SIZE}"
        )));
    }
    Ok(())
}

/// Image `id` of the set drawn with `seed`, `size` pixels square, with its
/// questions.
pub fn synth_example(seed: u64, id: u32, size: u32) -> Result<SynthExample> {
    check_size(size)?;
    let mut rng = StdRng::seed_from_u64(mix(seed ^ mix(u64::from(id))));
    let image = draw(&mut rng, size);
    let questions = ask(&mut rng, image.color, image.shape);
    Ok(SynthExample { image, questions })
}

fn draw(rng: &mut StdRng, size: u32) -> SynthImage {
    let side = size as f32;
    let color = rng.random_range(0..COLORS.len());
    let shape = rng.random_range(0..SHAPES.len());
    let radius = side * rng.random_range(0.14..0.42);
    let geometry = match SHAPES[shape] {
        "circle" => Geometry::Circle {
            center: (0.0, 0.0),
            radius,
        },
        "rectangle" => {
            let aspect: f32 = rng.random_range(0.35..=1.0);
            rectangle(rng, radius, aspect)
        }
        _ => triangle(rng, radius),
    };
    // Anywhere the whole shape fits, a pixel clear of the border.
    let (x0, y0, x1, y1) = geometry.bounds();
    let place = |rng: &mut StdRng, lo: f32, hi: f32| {
        let (min, max) = (1.0 - lo, side - 1.0 - hi);
        if max > min {
            rng.random_range(min..max)
        } else {
            (min + max) / 2.0
        }
    };
    let dx = place(rng, x0, x1);
    let dy = place(rng, y0, y1);
    let geometry = geometry.translate(dx, dy);

    let (fill, shade) = pick_fill(rng, color);
    let shade_dir = rng.random_range(0.0..std::f32::consts::TAU).sin_cos();
    let background = Background::draw(rng, side);
    let noise = rng.random_range(0..=MAX_NOISE);
    let painted = Paint {
        geometry,
        fill,
        shade,
        shade_dir,
        radius,
    };
    let image = render(size, &background, &[painted], noise, rng);
    SynthImage {
        color,
        shape,
        fill,
        geometry,
        image,
    }
}

/// A rectangle of circumradius `radius` and side ratio `aspect`, turned
/// by an angle drawn from `rng`, centred at the origin.
pub(crate) fn rectangle(rng: &mut StdRng, radius: f32, aspect: f32) -> Geometry {
    let w = radius / (1.0 + aspect * aspect).sqrt();
    Geometry::Rectangle {
        center: (0.0, 0.0),
        half: (w, w * aspect),
        angle: rng.random_range(0.0..std::f32::consts::PI),
    }
}

/// A triangle of circumradius `radius` centred at the origin: vertices on
/// the circumcircle, arcs of at least 80° between them, so every inside
/// angle (half the opposite arc) is ≥ 40°.
pub(crate) fn triangle(rng: &mut StdRng, radius: f32) -> Geometry {
    let mut cuts = [rng.random::<f32>(), rng.random::<f32>()];
    cuts.sort_by(f32::total_cmp);
    let spare = 360.0 - 3.0 * 80.0;
    let arcs = [80.0 + spare * cuts[0], 80.0 + spare * (cuts[1] - cuts[0])];
    let start: f32 = rng.random_range(0.0..360.0);
    let at = |deg: f32| {
        let r = deg.to_radians();
        (radius * r.cos(), radius * r.sin())
    };
    Geometry::Triangle {
        vertices: [
            at(start),
            at(start + arcs[0]),
            at(start + arcs[0] + arcs[1]),
        ],
    }
}

/// A shape as drawn: its geometry, colour, and a brightness gradient of
/// up to ±`shade` along `shade_dir` (sin, cos), measured against `radius`.
#[derive(Debug, Clone)]
pub(crate) struct Paint {
    pub geometry: Geometry,
    pub fill: [u8; 3],
    pub shade: f32,
    pub shade_dir: (f32, f32),
    pub radius: f32,
}

/// `shapes` painted in order over `background`, each anti-aliased by
/// coverage (4×4 samples a pixel), then per-pixel noise of up to ±`noise`
/// drawn from `rng`.
pub(crate) fn render(
    size: u32,
    background: &Background,
    shapes: &[Paint],
    noise: i32,
    rng: &mut StdRng,
) -> RgbImage {
    let side = size as f32;
    let inside = |v: f32| v.clamp(0.0, side) as u32;
    // per shape: its centroid and pixel box (x0, y0, x1, y1)
    type PixelBox = (u32, u32, u32, u32);
    let boxes: Vec<((f32, f32), PixelBox)> = shapes
        .iter()
        .map(|p| {
            let (bx0, by0, bx1, by1) = p.geometry.bounds();
            (
                p.geometry.centroid(),
                (
                    inside(bx0.floor()),
                    inside(by0.floor()),
                    inside(bx1.ceil()),
                    inside(by1.ceil()),
                ),
            )
        })
        .collect();
    let samples = (SUPERSAMPLE * SUPERSAMPLE) as f32;
    let mut image = RgbImage::new(size, size);
    for (x, y, px) in image.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
        let mut rgb = background.at(fx, fy);
        for (p, &((cx, cy), (px0, py0, px1, py1))) in shapes.iter().zip(&boxes) {
            if !((px0..px1).contains(&x) && (py0..py1).contains(&y)) {
                continue;
            }
            let mut covered = 0u32;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let step = 1.0 / SUPERSAMPLE as f32;
                    let sxf = x as f32 + (sx as f32 + 0.5) * step;
                    let syf = y as f32 + (sy as f32 + 0.5) * step;
                    covered += u32::from(p.geometry.contains(sxf, syf));
                }
            }
            if covered > 0 {
                let along = ((fx - cx) * p.shade_dir.1 + (fy - cy) * p.shade_dir.0) / p.radius;
                let f = 1.0 + p.shade * along.clamp(-1.0, 1.0);
                let a = covered as f32 / samples;
                for (v, &fill) in rgb.iter_mut().zip(&p.fill) {
                    let shape_c = (f32::from(fill) * f).clamp(0.0, 255.0);
                    *v = *v * (1.0 - a) + shape_c * a;
                }
            }
        }
        let jitter = |rng: &mut StdRng| {
            if noise == 0 {
                0.0
            } else {
                rng.random_range(-noise..=noise) as f32
            }
        };
        *px = Rgb([0, 1, 2].map(|c| (rgb[c] + jitter(rng)).round().clamp(0.0, 255.0) as u8));
    }
    image
}

/// A colour near `NAMED_RGB[idx]` and a shading amount such that the
/// colour, and its darkest and lightest shades, all name `idx` clearly.
pub(crate) fn pick_fill(rng: &mut StdRng, idx: usize) -> ([u8; 3], f32) {
    for _ in 0..64 {
        // Lighter or darker as a whole, then a little per channel: a shift
        // that keeps the hue (±36 per channel independently turns gray
        // mauve and brown crimson, though still nearest their names).
        let level = rng.random_range(-BRIGHTNESS_JITTER..=BRIGHTNESS_JITTER);
        let fill = NAMED_RGB[idx].map(|c| {
            let tint = rng.random_range(-COLOR_JITTER..=COLOR_JITTER);
            (i32::from(c) + level + tint).clamp(0, 255) as u8
        });
        let shade = rng.random_range(0.0..=MAX_SHADE);
        // Every shade with the worst noise on top still names `idx`.
        let worst = |rgb: [u8; 3]| {
            (0..8).map(move |signs: u8| {
                let mut out = rgb;
                for (c, v) in out.iter_mut().enumerate() {
                    let d = if signs >> c & 1 == 1 {
                        MAX_NOISE
                    } else {
                        -MAX_NOISE
                    };
                    *v = (i32::from(*v) + d).clamp(0, 255) as u8;
                }
                out
            })
        };
        if [1.0, 1.0 - shade, 1.0 + shade]
            .iter()
            .flat_map(|&f| worst(scale_rgb(fill, f)))
            .all(|rgb| unambiguous(rgb, idx))
        {
            return (fill, shade);
        }
    }
    (NAMED_RGB[idx], 0.0)
}

/// A linear gradient between two light tints.
pub(crate) struct Background {
    from: [f32; 3],
    to: [f32; 3],
    dir: (f32, f32),
    side: f32,
}

impl Background {
    pub(crate) fn draw(rng: &mut StdRng, side: f32) -> Self {
        let tint = |rng: &mut StdRng| {
            let level: f32 = rng.random_range(200.0..=248.0);
            [0, 1, 2].map(|_| (level + rng.random_range(-14.0..=14.0)).clamp(0.0, 255.0))
        };
        let from = tint(rng);
        let to = tint(rng);
        let (s, c) = rng.random_range(0.0..std::f32::consts::TAU).sin_cos();
        Self {
            from,
            to,
            dir: (c, s),
            side,
        }
    }

    fn at(&self, x: f32, y: f32) -> [f32; 3] {
        let half = self.side / 2.0;
        let t =
            ((x - half) * self.dir.0 + (y - half) * self.dir.1) / (half * std::f32::consts::SQRT_2);
        let w = ((t + 1.0) / 2.0).clamp(0.0, 1.0);
        [0, 1, 2].map(|c| self.from[c] * (1.0 - w) + self.to[c] * w)
    }
}

/// [`PER_KIND`] questions from distinct templates, in a shuffled order.
/// Yes/no questions name the drawn attribute half the time.
fn ask(rng: &mut StdRng, color: usize, shape: usize) -> Vec<(String, String)> {
    let kind = |t: &Template| match t.asks {
        Asks::Color => 0,
        Asks::Shape => 1,
        Asks::HasColor { .. } => 2,
        Asks::HasShape { .. } => 3,
    };
    let (c, s) = (COLORS[color], SHAPES[shape]);
    let other = |rng: &mut StdRng, all: &[&'static str], truth: usize| {
        if rng.random_bool(0.5) {
            all[truth]
        } else {
            let k = rng.random_range(0..all.len() - 1);
            all[if k >= truth { k + 1 } else { k }]
        }
    };
    let yes_no =
        |present: bool, negated: bool| if present != negated { "yes" } else { "no" }.to_string();
    let mut out = Vec::with_capacity(QUESTIONS_PER_IMAGE);
    for (k, &n) in PER_KIND.iter().enumerate() {
        let of_kind: Vec<&Template> = TEMPLATES.iter().filter(|t| kind(t) == k).collect();
        for t in of_kind.choose_multiple(rng, n).copied().collect::<Vec<_>>() {
            out.push(match t.asks {
                Asks::Color => (t.fill(c, s), c.to_string()),
                Asks::Shape => (t.fill(c, s), s.to_string()),
                Asks::HasColor { negated } => {
                    let named = other(rng, &COLORS, color);
                    (t.fill(named, s), yes_no(named == c, negated))
                }
                Asks::HasShape { negated } => {
                    let named = other(rng, &SHAPES, shape);
                    (t.fill(c, named), yes_no(named == s, negated))
                }
            });
        }
    }
    out.shuffle(rng);
    out
}

/// What [`write_synth_split`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynthSummary {
    pub images: usize,
    pub questions: usize,
    pub yes: usize,
    pub no: usize,
    /// Images per colour, in [`COLORS`] order.
    pub by_color: [usize; 8],
    /// Images per shape, in [`SHAPES`] order.
    pub by_shape: [usize; 3],
}

/// Writes `images` generated images as an easy-VQA split in `dir`:
/// `images/N.png`, `questions.json`, plus `llava.json` (one multi-turn
/// record per image) and `captions.jsonl` ("a {color} {shape}"), image paths
/// relative to `dir`. `questions.json` is written last, so a split cut
/// short has none. `on_image` runs after each image (a progress bar).
pub fn write_synth_split(
    dir: &Path,
    images: usize,
    seed: u64,
    size: u32,
    mut on_image: impl FnMut(),
) -> Result<SynthSummary> {
    if !(1..=MAX_IMAGES).contains(&images) {
        return Err(DataError::Input(format!(
            "synthetic shapes: images {images} is outside 1..={MAX_IMAGES}"
        )));
    }
    check_size(size)?;
    let image_dir = dir.join("images");
    std::fs::create_dir_all(&image_dir)
        .map_err(|e| DataError::dataset(&image_dir, format!("cannot create: {e}")))?;
    let mut summary = SynthSummary {
        images,
        ..SynthSummary::default()
    };
    let mut rows: Vec<(String, String, u32)> = Vec::with_capacity(images * QUESTIONS_PER_IMAGE);
    let mut examples: Vec<VqaExample> = Vec::with_capacity(images * QUESTIONS_PER_IMAGE);
    for id in 0..images as u32 {
        let ex = synth_example(seed, id, size)?;
        let path: PathBuf = image_dir.join(format!("{id}.png"));
        let mut png = Vec::new();
        ex.image
            .image
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|e| DataError::image(path.display().to_string(), e))?;
        std::fs::write(&path, &png).map_err(|e| {
            DataError::image(path.display().to_string(), format!("cannot write: {e}"))
        })?;
        summary.by_color[ex.image.color] += 1;
        summary.by_shape[ex.image.shape] += 1;
        for (question, answer) in ex.questions {
            match answer.as_str() {
                "yes" => summary.yes += 1,
                "no" => summary.no += 1,
                _ => {}
            }
            examples.push(VqaExample {
                image: path.clone(),
                question: question.clone(),
                answer: answer.clone(),
                image_id: id,
            });
            rows.push((question, answer, id));
        }
        on_image();
    }
    summary.questions = rows.len();
    write_llava_json(&dir.join("llava.json"), &easy_vqa_to_llava(&examples))?;
    write_caption_jsonl(
        &dir.join("captions.jsonl"),
        &easy_vqa_to_captions(&examples)?,
    )?;
    let qpath = dir.join("questions.json");
    let text = serde_json::to_string(&rows)
        .map_err(|e| DataError::dataset(&qpath, format!("cannot serialise: {e}")))?;
    write_atomic(&qpath, text.as_bytes())?;
    Ok(summary)
}
