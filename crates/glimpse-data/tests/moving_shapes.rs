//! The moving-shapes video generator (`glimpse_data::moving_shapes`): the
//! same seed draws the same videos, answers are balanced exactly, what an
//! answer says is what the pixels show (the red circle's path, which shape
//! shows first, the square's colour), and a split loads as LLaVA rows whose
//! videos `load_video` reads.

use anyhow::Result;
use glimpse_data::datasets::{load_llava_json, COLORS, VIDEO_PLACEHOLDER};
use glimpse_data::moving_shapes::{
    moving_example, write_moving_split, Drawn, Kind, SplitName, ORDER_SHAPES,
};
use glimpse_data::synth_shapes::clearly_named;
use glimpse_data::{load_video, FrameSampling, VideoOptions};
use image::RgbImage;

const RED: usize = 0;

/// Pixels clearly named colour `c` and their centroid.
fn pixels_of(frame: &RgbImage, c: usize) -> (usize, (f32, f32)) {
    let (mut n, mut sx, mut sy) = (0usize, 0f32, 0f32);
    for (x, y, p) in frame.enumerate_pixels() {
        if clearly_named(p.0) == Some(c) {
            n += 1;
            sx += x as f32 + 0.5;
            sy += y as f32 + 0.5;
        }
    }
    (n, (sx / n.max(1) as f32, sy / n.max(1) as f32))
}

#[test]
fn same_seed_same_videos_other_seed_or_split_other_videos() -> Result<()> {
    let mut differ = [0usize; 2];
    for id in 0..12 {
        let a = moving_example(7, SplitName::Train, id, 32, 8)?;
        let b = moving_example(7, SplitName::Train, id, 32, 8)?;
        assert_eq!(a.frames.len(), 8);
        for (x, y) in a.frames.iter().zip(&b.frames) {
            assert_eq!(x.as_raw(), y.as_raw(), "video {id}");
        }
        assert_eq!(
            (a.question.as_str(), a.answer.as_str()),
            (b.question.as_str(), b.answer.as_str())
        );
        let c = moving_example(8, SplitName::Train, id, 32, 8)?;
        let d = moving_example(7, SplitName::Test, id, 32, 8)?;
        differ[0] += usize::from(c.frames[0].as_raw() != a.frames[0].as_raw());
        differ[1] += usize::from(d.frames[0].as_raw() != a.frames[0].as_raw());
        // the kind and answer follow the id alone
        assert_eq!((c.kind, &c.answer), (a.kind, &a.answer));
    }
    assert_eq!(
        differ,
        [12, 12],
        "seed 8 and the test split draw other videos"
    );
    Ok(())
}

/// 36 videos: 12 of each kind, each answer equally often; the rows load
/// as LLaVA JSON with one `<video>` each, and each video as 8 frames.
#[test]
fn answers_are_balanced_and_the_split_loads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut ticks = 0;
    let s = write_moving_split(dir.path(), SplitName::Train, 36, 3, 32, 8, || ticks += 1)?;
    assert_eq!((ticks, s.videos), (36, 36));
    let counts: Vec<(&str, &str, usize)> = s
        .answers
        .iter()
        .map(|(k, a, n)| (k.name(), *a, *n))
        .collect();
    assert_eq!(
        counts,
        [
            ("motion", "left", 3),
            ("motion", "right", 3),
            ("motion", "up", 3),
            ("motion", "down", 3),
            ("order", "circle", 4),
            ("order", "rectangle", 4),
            ("order", "triangle", 4),
            ("colour_change", "yes", 6),
            ("colour_change", "no", 6),
        ]
    );
    let rows = load_llava_json(&dir.path().join("llava.json"))?;
    assert_eq!(rows.len(), 36);
    for row in &rows {
        assert!(row.images.is_empty());
        assert_eq!(row.videos.len(), 1);
        assert!(row.conversations[0].value.starts_with(VIDEO_PLACEHOLDER));
    }
    // written relative to the file
    let text = std::fs::read_to_string(dir.path().join("llava.json"))?;
    assert!(text.contains("\"video\": \"videos/5\""), "{}", &text[..300]);
    let opts = VideoOptions {
        sampling: FrameSampling::frames(8),
        ..VideoOptions::default()
    };
    let video = load_video(&rows[5].videos[0], &opts)?;
    assert_eq!((video.total_frames, video.width, video.height), (8, 32, 32));
    let ex = moving_example(3, SplitName::Train, 5, 32, 8)?;
    for (k, f) in video.frames.iter().enumerate() {
        assert_eq!(
            f.image.as_raw(),
            ex.frames[k].as_raw(),
            "frame {k}: lossless"
        );
    }
    Ok(())
}

/// The red circle's centroid in the pixels follows the drawn track within
/// a pixel, and the answer is the way it goes.
#[test]
fn motion_answers_follow_the_pixels() -> Result<()> {
    let mut checked = 0;
    for id in (0..120).step_by(3) {
        let ex = moving_example(11, SplitName::Test, id, 32, 8)?;
        assert_eq!(ex.kind, Kind::Motion);
        let Drawn::Motion { track } = &ex.drawn else {
            panic!("video {id}: not a motion video");
        };
        let seen: Vec<(f32, f32)> = ex
            .frames
            .iter()
            .map(|f| {
                let (n, c) = pixels_of(f, RED);
                assert!(n >= 20, "video {id}: {n} red pixels");
                c
            })
            .collect();
        for (k, (s, t)) in seen.iter().zip(track).enumerate() {
            let d = ((s.0 - t.0).powi(2) + (s.1 - t.1).powi(2)).sqrt();
            assert!(d < 1.0, "video {id} frame {k}: seen {s:?}, drawn {t:?}");
        }
        let (dx, dy) = (seen[7].0 - seen[0].0, seen[7].1 - seen[0].1);
        let way = if dx.abs() > dy.abs() {
            if dx > 0.0 {
                "right"
            } else {
                "left"
            }
        } else if dy > 0.0 {
            "down"
        } else {
            "up"
        };
        assert_eq!(way, ex.answer, "video {id}");
        // at least a third of the side, along one axis
        assert!(
            dx.abs().max(dy.abs()) > 32.0 / 3.0,
            "video {id}: moved {dx}, {dy}"
        );
        checked += 1;
    }
    assert_eq!(checked, 40);
    Ok(())
}

/// Each shape's colour is in the pixels exactly in the frames it is drawn
/// in, the one named first shows first, and the onsets are the documented
/// (onset, gap) pairs of an 8-frame video: shown 4 frames, gap 2 to 4.
#[test]
fn order_answers_follow_the_pixels() -> Result<()> {
    let mut patterns = std::collections::BTreeMap::new();
    for id in (1..240).step_by(3) {
        let ex = moving_example(5, SplitName::Train, id, 32, 8)?;
        let Drawn::Order { shapes } = &ex.drawn else {
            panic!("video {id}: not an order video");
        };
        assert_eq!(ex.answer, ORDER_SHAPES[shapes[0].kind], "video {id}");
        assert_ne!(shapes[0].kind, shapes[1].kind, "video {id}: two kinds");
        assert_ne!(
            shapes[0].colour, shapes[1].colour,
            "video {id}: two colours"
        );
        for (k, frame) in ex.frames.iter().enumerate() {
            for s in shapes {
                // the shape's colour at its centroid while shown, the
                // background's (no colour name) otherwise
                let (cx, cy) = s.geometry.centroid();
                let named = clearly_named(frame.get_pixel(cx as u32, cy as u32).0);
                let want = s.frames.contains(&k).then_some(s.colour);
                assert_eq!(
                    named, want,
                    "video {id} frame {k}: {} shown in {:?}",
                    COLORS[s.colour], s.frames
                );
            }
        }
        let (a, b) = (shapes[0].frames.clone(), shapes[1].frames.clone());
        assert_eq!((a.len(), b.len()), (4, 4));
        let gap = b.start - a.start;
        assert!(
            (2..=4).contains(&gap) && a.start + gap + 4 <= 8,
            "{a:?} {b:?}"
        );
        *patterns.entry((a.start, gap)).or_insert(0usize) += 1;
    }
    // every reflected pattern (onset -> 8 - 4 - gap - onset) occurs too
    for &(a, g) in patterns.keys() {
        assert!(patterns.contains_key(&(4 - g - a, g)), "{patterns:?}");
    }
    assert_eq!(patterns.len(), 6, "{patterns:?}");
    Ok(())
}

/// The square's colour at its centre is the drawn one in every frame, and
/// the answer says whether it changes.
#[test]
fn colour_change_answers_follow_the_pixels() -> Result<()> {
    let (mut yes, mut no) = (0, 0);
    for id in (2..120).step_by(3) {
        let ex = moving_example(9, SplitName::Train, id, 32, 8)?;
        let Drawn::ColourChange { square, colours } = &ex.drawn else {
            panic!("video {id}: not a colour-change video");
        };
        let (cx, cy) = square.centroid();
        for (k, frame) in ex.frames.iter().enumerate() {
            let p = frame.get_pixel(cx as u32, cy as u32).0;
            assert_eq!(clearly_named(p), Some(colours[k]), "video {id} frame {k}");
        }
        let changes = colours.windows(2).any(|w| w[0] != w[1]);
        assert_eq!(ex.answer, if changes { "yes" } else { "no" }, "video {id}");
        if changes {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert_eq!((yes, no), (20, 20));
    Ok(())
}

#[test]
fn sizes_out_of_range_are_refused() {
    for (size, frames) in [(16, 8), (32, 2), (32, 65), (200, 8)] {
        let e = moving_example(0, SplitName::Train, 0, size, frames).unwrap_err();
        assert!(e.to_string().contains("moving shapes"), "{e}");
    }
    assert!(moving_example(0, SplitName::Train, 0, 48, 16).is_ok());
}
