//! Moving shapes: small synthetic videos whose questions need time, drawn
//! by our own code with [`crate::synth_shapes`]'s shapes, colours,
//! backgrounds and noise (issue 20, item 5).
//!
//! Each video asks one question of one kind:
//! - **motion**: "Which way does the red circle move?" (left, right, up,
//!   down): a red circle crosses the frame in a straight line, a static
//!   shape of another colour beside it;
//! - **order**: "Which shape appears first?" (circle, rectangle, triangle):
//!   two shapes of different kinds, each shown for half the frames, the
//!   second from a later frame;
//! - **colour change**: "Does the square change colour?" (yes, no): a
//!   square that keeps its colour or takes another one mid-video, a static
//!   shape beside it.
//!
//! The motion and order videos are drawn so that a model blind to frame
//! order cannot answer them: every video is as likely as itself played
//! backwards (the track's ends, the onsets' reflection), which shows the
//! same frames and asks for the opposite answer. Averaging frames therefore
//! leaves the direction and the order at chance (given the axis, which the
//! set of frames does show, motion is a coin toss between two answers);
//! the colour change survives averaging and is the control.
//!
//! Answers are balanced exactly: video `id` asks kind `id % 3` and takes
//! answer `(id / 3) % answers` of its kind; the rest is drawn from
//! (seed, split, id), so video N is the same however many are written.
//! Frames are written as a folder of lossless PNGs per video, which
//! `glimpse_data::load_video` reads decoding only the sampled files.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::datasets::llava_json::{write_llava_json, LlavaRecord, Speaker, Turn};
use crate::datasets::{COLORS, VIDEO_PLACEHOLDER};
use crate::error::{DataError, Result};
use crate::synth_shapes::{
    mix, pick_fill, rectangle, render, triangle, Background, Geometry, Paint,
};

/// Frame side bounds (the shapes keep their form from 32 pixels up).
pub const MIN_SIZE: u32 = 32;
pub const MAX_SIZE: u32 = 128;
pub const DEFAULT_SIZE: u32 = 32;
/// Frames per video: at least 4 (an onset gap and a reflection need room).
pub const MIN_FRAMES: usize = 4;
pub const MAX_FRAMES: usize = 64;
pub const DEFAULT_FRAMES: usize = 8;
/// Videos per split.
pub const MAX_VIDEOS: usize = 100_000;

/// The index of red in [`COLORS`] (the moving circle's colour).
const RED: usize = 0;
/// Noise amplitude of a video, at most (per pixel and frame).
const MAX_NOISE: i32 = 4;

/// What a video asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Motion,
    Order,
    ColourChange,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Motion, Kind::Order, Kind::ColourChange];

    pub fn name(self) -> &'static str {
        match self {
            Self::Motion => "motion",
            Self::Order => "order",
            Self::ColourChange => "colour_change",
        }
    }

    pub fn question(self) -> &'static str {
        match self {
            Self::Motion => "Which way does the red circle move?",
            Self::Order => "Which shape appears first?",
            Self::ColourChange => "Does the square change colour?",
        }
    }

    /// Its answers; a video of this kind takes each equally often.
    pub fn answers(self) -> &'static [&'static str] {
        match self {
            Self::Motion => &["left", "right", "up", "down"],
            Self::Order => &ORDER_SHAPES,
            Self::ColourChange => &["yes", "no"],
        }
    }

    /// The kind `id` asks (the answer balance follows from it).
    pub fn of(id: u32) -> Self {
        Self::ALL[id as usize % 3]
    }
}

/// The shapes of the order videos (easy-VQA's three).
pub const ORDER_SHAPES: [&str; 3] = ["circle", "rectangle", "triangle"];

/// What was drawn, beside the frames, for tests and reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Drawn {
    /// The circle's centre in each frame.
    Motion { track: Vec<(f32, f32)> },
    /// The two shapes, first the one that appears first.
    Order { shapes: [Shown; 2] },
    /// The square, its colour (into [`COLORS`]) in each frame.
    ColourChange {
        square: Geometry,
        colours: Vec<usize>,
    },
}

/// A shape of an order video.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// Into [`ORDER_SHAPES`].
    pub kind: usize,
    /// Into [`COLORS`].
    pub colour: usize,
    pub geometry: Geometry,
    /// The frames it shows in.
    pub frames: std::ops::Range<usize>,
}

/// One video with its question.
#[derive(Debug, Clone)]
pub struct MovingExample {
    pub kind: Kind,
    pub question: String,
    pub answer: String,
    pub frames: Vec<RgbImage>,
    pub drawn: Drawn,
}

fn check(size: u32, frames: usize) -> Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DataError::Input(format!(
            "moving shapes: size {size} is outside {MIN_SIZE}..={MAX_SIZE}"
        )));
    }
    if !(MIN_FRAMES..=MAX_FRAMES).contains(&frames) {
        return Err(DataError::Input(format!(
            "moving shapes: frames {frames} is outside {MIN_FRAMES}..={MAX_FRAMES}"
        )));
    }
    Ok(())
}

/// Which split a video belongs to: the two draw from unrelated streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitName {
    Train,
    Test,
}

impl SplitName {
    pub fn dir(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "test",
        }
    }

    fn salt(self) -> u64 {
        match self {
            Self::Train => 0,
            Self::Test => 0x7e57_5e7d_0f7e_57ed,
        }
    }
}

/// Video `id` of `split` drawn with `seed`: `frames` frames of `size`².
pub fn moving_example(
    seed: u64,
    split: SplitName,
    id: u32,
    size: u32,
    frames: usize,
) -> Result<MovingExample> {
    check(size, frames)?;
    let mut rng = StdRng::seed_from_u64(mix(seed ^ mix(u64::from(id)) ^ split.salt()));
    let kind = Kind::of(id);
    let answers = kind.answers();
    let answer = answers[(id as usize / 3) % answers.len()];
    let side = size as f32;
    let background = Background::draw(&mut rng, side);
    let noise = rng.random_range(0..=MAX_NOISE);
    let (paints, drawn) = match kind {
        Kind::Motion => motion(&mut rng, side, frames, answer),
        Kind::Order => order(&mut rng, side, frames, answer),
        Kind::ColourChange => colour_change(&mut rng, side, frames, answer == "yes"),
    };
    let frames = paints
        .iter()
        .map(|p| render(size, &background, p, noise, &mut rng))
        .collect();
    Ok(MovingExample {
        kind,
        question: kind.question().to_string(),
        answer: answer.to_string(),
        frames,
        drawn,
    })
}

/// A shape of one colour: its fill, shading and the radius the shading
/// is measured against.
fn paint(rng: &mut StdRng, geometry: Geometry, color: usize, radius: f32) -> Paint {
    let (fill, shade) = pick_fill(rng, color);
    let shade_dir = rng.random_range(0.0..std::f32::consts::TAU).sin_cos();
    Paint {
        geometry,
        fill,
        shade,
        shade_dir,
        radius,
    }
}

/// A colour index other than those in `not`.
fn other_color(rng: &mut StdRng, not: &[usize]) -> usize {
    loop {
        let c = rng.random_range(0..COLORS.len());
        if !not.contains(&c) {
            return c;
        }
    }
}

/// A shape of kind `shape` (into [`ORDER_SHAPES`], or 3 for a square) of
/// circumradius `radius`, centred at the origin.
fn centred(rng: &mut StdRng, shape: usize, radius: f32) -> Geometry {
    match shape {
        0 => Geometry::Circle {
            center: (0.0, 0.0),
            radius,
        },
        // visibly not square: aspect 0.4-0.65
        1 => {
            let aspect = rng.random_range(0.4..=0.65);
            rectangle(rng, radius, aspect)
        }
        2 => triangle(rng, radius),
        _ => rectangle(rng, radius, 1.0),
    }
}

/// `g` moved to a random spot where it fits a pixel clear of the border
/// and its bounds keep `gap` pixels from every box in `taken`; `None`
/// when 64 tries find none.
fn place(rng: &mut StdRng, g: Geometry, side: f32, taken: &[Region], gap: f32) -> Option<Geometry> {
    let (x0, y0, x1, y1) = g.bounds();
    for _ in 0..64 {
        let dx = rng.random_range((1.0 - x0)..(side - 1.0 - x1).max(1.0 - x0 + 1e-3));
        let dy = rng.random_range((1.0 - y0)..(side - 1.0 - y1).max(1.0 - y0 + 1e-3));
        let moved = g.translate(dx, dy);
        let b = moved.bounds();
        let clear = taken
            .iter()
            .all(|t| b.2 + gap <= t.0 || t.2 + gap <= b.0 || b.3 + gap <= t.1 || t.3 + gap <= b.1);
        if clear {
            return Some(moved);
        }
    }
    None
}

/// A part of the frame: (min x, min y, max x, max y).
type Region = (f32, f32, f32, f32);

/// The frame cut in two halves, side by side or one above the other, in
/// an order drawn from `rng`: two shapes placed one in each never overlap.
fn halves(rng: &mut StdRng, side: f32) -> [Region; 2] {
    let h = side / 2.0;
    let mut two = if rng.random_bool(0.5) {
        [(0.0, 0.0, h, side), (h, 0.0, side, side)]
    } else {
        [(0.0, 0.0, side, h), (0.0, h, side, side)]
    };
    if rng.random_bool(0.5) {
        two.swap(0, 1);
    }
    two
}

/// `g` moved to a random spot inside `region`, a pixel clear of its edges
/// (centred across an axis it does not fit along).
fn place_in(rng: &mut StdRng, g: Geometry, region: Region) -> Geometry {
    let (x0, y0, x1, y1) = g.bounds();
    let mut axis = |lo: f32, hi: f32, from: f32, to: f32| {
        let (min, max) = (from + 1.0 - lo, to - 1.0 - hi);
        if max > min {
            rng.random_range(min..max)
        } else {
            (min + max) / 2.0
        }
    };
    let dx = axis(x0, x1, region.0, region.2);
    let dy = axis(y0, y1, region.1, region.3);
    g.translate(dx, dy)
}

/// Per frame, what is painted (in order).
type Frames = Vec<Vec<Paint>>;

/// A red circle crossing the frame along one axis; a static shape of
/// another colour clear of its path.
fn motion(rng: &mut StdRng, side: f32, frames: usize, answer: &str) -> (Frames, Drawn) {
    let radius = side * rng.random_range(0.12..0.17);
    let travel = side * rng.random_range(0.38..0.5);
    // the track's low end, so both ends fit; which end it starts from is
    // the answer, the track itself is drawn the same either way
    let lo = rng.random_range((1.0 + radius)..(side - 1.0 - radius - travel));
    let across = rng.random_range((1.0 + radius)..(side - 1.0 - radius));
    let (from, to) = match answer {
        "right" | "down" => (lo, lo + travel),
        _ => (lo + travel, lo),
    };
    let horizontal = matches!(answer, "left" | "right");
    let track: Vec<(f32, f32)> = (0..frames)
        .map(|k| {
            let along = from + (to - from) * k as f32 / (frames - 1) as f32;
            if horizontal {
                (along, across)
            } else {
                (across, along)
            }
        })
        .collect();
    let circle = paint(
        rng,
        Geometry::Circle {
            center: (0.0, 0.0),
            radius,
        },
        RED,
        radius,
    );
    let swept = {
        let (a, b) = (track[0], track[frames - 1]);
        (
            a.0.min(b.0) - radius,
            a.1.min(b.1) - radius,
            a.0.max(b.0) + radius,
            a.1.max(b.1) + radius,
        )
    };
    let other = distractor(rng, side, &[swept]);
    let paints = track
        .iter()
        .map(|&(x, y)| {
            let mut now = other.iter().cloned().collect::<Vec<_>>();
            now.push(Paint {
                geometry: circle.geometry.translate(x, y),
                ..circle.clone()
            });
            now
        })
        .collect();
    (paints, Drawn::Motion { track })
}

/// A static square, rectangle or triangle (see [`centred`]) that is not
/// red, clear of `taken`; `None` when there is no room.
fn distractor(rng: &mut StdRng, side: f32, taken: &[Region]) -> Option<Paint> {
    let radius = side * rng.random_range(0.12..0.17);
    let kinds = [1, 2, 3];
    let not = [RED];
    let kind = kinds[rng.random_range(0..kinds.len())];
    let g = centred(rng, kind, radius);
    let color = other_color(rng, &not);
    let placed = place(rng, g, side, taken, 1.0)?;
    Some(paint(rng, placed, color, radius))
}

/// Two shapes of different kinds, each shown for half the frames, the one
/// named by `answer` first. The onsets are drawn so that the reflected
/// pattern (which swaps first and second) is as likely.
fn order(rng: &mut StdRng, side: f32, frames: usize, answer: &str) -> (Frames, Drawn) {
    let first = ORDER_SHAPES.iter().position(|s| *s == answer).unwrap_or(0);
    let second = {
        let k = rng.random_range(0..ORDER_SHAPES.len() - 1);
        if k >= first {
            k + 1
        } else {
            k
        }
    };
    let shown = frames / 2;
    // gap between the onsets in [frames/4, frames - shown], then the
    // first onset anywhere that leaves the second room: the set of
    // (onset, gap) is closed under reflection a -> frames - shown - gap - a
    let gap = rng.random_range((frames / 4).max(1)..=frames - shown);
    let onset = rng.random_range(0..=frames - shown - gap);
    let spans = [onset..onset + shown, onset + gap..onset + gap + shown];
    let c1 = rng.random_range(0..COLORS.len());
    let c2 = other_color(rng, &[c1]);
    let mut placed: Vec<Paint> = Vec::new();
    let regions = halves(rng, side);
    for ((kind, color), region) in [(first, c1), (second, c2)].into_iter().zip(regions) {
        // at most 0.4 of the side across: fits its half
        let radius = side * rng.random_range(0.14..0.2);
        let g = centred(rng, kind, radius);
        let g = place_in(rng, g, region);
        placed.push(paint(rng, g, color, radius));
    }
    let paints = (0..frames)
        .map(|k| {
            placed
                .iter()
                .zip(&spans)
                .filter(|(_, span)| span.contains(&k))
                .map(|(p, _)| p.clone())
                .collect()
        })
        .collect();
    let [s1, s2] = spans;
    let shown = |kind, colour, p: &Paint, frames| Shown {
        kind,
        colour,
        geometry: p.geometry,
        frames,
    };
    (
        paints,
        Drawn::Order {
            shapes: [
                shown(first, c1, &placed[0], s1),
                shown(second, c2, &placed[1], s2),
            ],
        },
    )
}

/// A square that keeps its colour or changes it at a frame in the middle
/// half; a static circle or triangle of a third colour beside it.
fn colour_change(rng: &mut StdRng, side: f32, frames: usize, changes: bool) -> (Frames, Drawn) {
    let regions = halves(rng, side);
    // at most 0.44 of the side across: fits its half
    let radius = side * rng.random_range(0.16..0.22);
    let g = centred(rng, 3, radius);
    let square = place_in(rng, g, regions[0]);
    let c1 = rng.random_range(0..COLORS.len());
    let c2 = other_color(rng, &[c1]);
    let at = rng.random_range(frames / 4..=frames - frames / 4);
    let before = paint(rng, square, c1, radius);
    let after = paint(rng, square, c2, radius);
    let other = {
        let radius = side * rng.random_range(0.12..0.17);
        let kind = [0, 2][rng.random_range(0..2)];
        let g = centred(rng, kind, radius);
        let g = place_in(rng, g, regions[1]);
        let colour = other_color(rng, &[c1, c2]);
        Some(paint(rng, g, colour, radius))
    };
    let colours: Vec<usize> = (0..frames)
        .map(|k| if changes && k >= at { c2 } else { c1 })
        .collect();
    let paints = colours
        .iter()
        .map(|&c| {
            let mut now: Vec<Paint> = other.iter().cloned().collect();
            now.push(if c == c1 {
                before.clone()
            } else {
                after.clone()
            });
            now
        })
        .collect();
    (paints, Drawn::ColourChange { square, colours })
}

/// What [`write_moving_split`] wrote: videos per kind and answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MovingSummary {
    pub videos: usize,
    /// (kind, answer, count), in [`Kind::ALL`] and answer order.
    pub answers: Vec<(Kind, &'static str, usize)>,
}

/// Writes `videos` videos of `split` into `dir`: `videos/N/NN.png` (one
/// folder of frames per video) and `llava.json`, one row per video:
/// `{"id", "video": "videos/N", "conversations": [human "<video>\n<q>", gpt
/// "<a>"]}`. `llava.json` is written last, so a split cut short has none.
/// `on_video` runs after each video (a progress bar).
pub fn write_moving_split(
    dir: &Path,
    split: SplitName,
    videos: usize,
    seed: u64,
    size: u32,
    frames: usize,
    mut on_video: impl FnMut(),
) -> Result<MovingSummary> {
    if !(1..=MAX_VIDEOS).contains(&videos) {
        return Err(DataError::Input(format!(
            "moving shapes: videos {videos} is outside 1..={MAX_VIDEOS}"
        )));
    }
    check(size, frames)?;
    let mut summary = MovingSummary {
        videos,
        answers: Kind::ALL
            .iter()
            .flat_map(|&k| k.answers().iter().map(move |&a| (k, a, 0)))
            .collect(),
    };
    let width = (frames - 1).to_string().len();
    let mut records = Vec::with_capacity(videos);
    for id in 0..videos as u32 {
        let ex = moving_example(seed, split, id, size, frames)?;
        let folder: PathBuf = dir.join("videos").join(id.to_string());
        std::fs::create_dir_all(&folder)
            .map_err(|e| DataError::dataset(&folder, format!("cannot create: {e}")))?;
        for (k, frame) in ex.frames.iter().enumerate() {
            let path = folder.join(format!("{k:0width$}.png"));
            let mut png = Vec::new();
            frame
                .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
                .map_err(|e| DataError::image(path.display().to_string(), e))?;
            std::fs::write(&path, &png).map_err(|e| {
                DataError::image(path.display().to_string(), format!("cannot write: {e}"))
            })?;
        }
        if let Some(slot) = summary
            .answers
            .iter_mut()
            .find(|(k, a, _)| *k == ex.kind && *a == ex.answer)
        {
            slot.2 += 1;
        }
        records.push(LlavaRecord {
            id: format!("{}-{id}", split.dir()),
            images: Vec::new(),
            videos: vec![folder],
            conversations: vec![
                Turn {
                    from: Speaker::Human,
                    value: format!("{VIDEO_PLACEHOLDER}\n{}", ex.question),
                },
                Turn {
                    from: Speaker::Gpt,
                    value: ex.answer,
                },
            ],
        });
        on_video();
    }
    write_llava_json(&dir.join("llava.json"), &records)?;
    Ok(summary)
}

/// Writes both splits under `out` (`out/train`, `out/test`).
pub fn write_moving_shapes(
    out: &Path,
    train: usize,
    test: usize,
    seed: u64,
    size: u32,
    frames: usize,
    mut on_video: impl FnMut(),
) -> Result<[MovingSummary; 2]> {
    Ok([
        write_moving_split(
            &out.join("train"),
            SplitName::Train,
            train,
            seed,
            size,
            frames,
            &mut on_video,
        )?,
        write_moving_split(
            &out.join("test"),
            SplitName::Test,
            test,
            seed,
            size,
            frames,
            &mut on_video,
        )?,
    ])
}

/// A summary as one line: `motion left 5, right 5, ...; order ...`.
pub fn describe(summary: &MovingSummary) -> String {
    Kind::ALL
        .iter()
        .map(|&k| {
            let parts: Vec<String> = summary
                .answers
                .iter()
                .filter(|(kind, _, _)| *kind == k)
                .map(|(_, a, n)| format!("{a} {n}"))
                .collect();
            format!("{} {}", k.name(), parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
