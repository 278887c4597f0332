//! The synthetic shapes generator (`glimpse_data::synth_shapes`): the same
//! seed draws the same images, what a question says is what is drawn, the
//! questions are easy-VQA's, and the split loads as easy-VQA's do.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use glimpse_data::datasets::{
    image_attributes, load_caption_jsonl, load_easy_vqa_split, load_llava_json, AnswerKind, COLORS,
    SHAPES,
};
use glimpse_data::synth_shapes::{
    clearly_named, nearest_color, synth_example, write_synth_split, Geometry, NAMED_RGB,
    QUESTIONS_PER_IMAGE, TEMPLATES,
};

/// The 24 question patterns of easy-VQA 1.0's train and test splits
/// (enumerated from its questions.json with colours → {color} and shapes →
/// {shape}), kept here so the test needs no fetched data.
const EASY_VQA_TEMPLATES: [&str; 24] = [
    "does the image contain a {color} shape?",
    "does the image contain a {shape}?",
    "does the image not contain a {color} shape?",
    "does the image not contain a {shape}?",
    "is a {color} shape present?",
    "is a {shape} present?",
    "is no {color} shape present?",
    "is no {shape} present?",
    "is there a {color} shape in the image?",
    "is there a {color} shape?",
    "is there a {shape} in the image?",
    "is there a {shape}?",
    "is there not a {color} shape in the image?",
    "is there not a {color} shape?",
    "is there not a {shape} in the image?",
    "is there not a {shape}?",
    "what color is the shape?",
    "what color is the {shape}?",
    "what is the color of the shape?",
    "what is the color of the {shape}?",
    "what is the {color} shape?",
    "what shape does the image contain?",
    "what shape is in the image?",
    "what shape is present?",
];

/// A question with its colour and shape words put back as placeholders.
fn pattern(question: &str) -> String {
    let words: Vec<String> = question
        .split(' ')
        .map(|w| {
            let bare = w.trim_end_matches('?');
            let tail = &w[bare.len()..];
            if COLORS.contains(&bare) {
                format!("{{color}}{tail}")
            } else if SHAPES.contains(&bare) {
                format!("{{shape}}{tail}")
            } else {
                w.to_string()
            }
        })
        .collect();
    words.join(" ")
}

#[test]
fn templates_are_easy_vqas() {
    let ours: BTreeSet<&str> = TEMPLATES.iter().map(|t| t.text).collect();
    let theirs: BTreeSet<&str> = EASY_VQA_TEMPLATES.iter().copied().collect();
    assert_eq!(ours, theirs);
}

#[test]
fn same_seed_same_images_other_seed_other_images() -> Result<()> {
    for id in [0, 1, 17] {
        let a = synth_example(7, id, 64)?;
        let b = synth_example(7, id, 64)?;
        assert_eq!(a.image.image.as_raw(), b.image.image.as_raw(), "image {id}");
        assert_eq!(a.questions, b.questions, "image {id}");
    }
    let differ = (0..8)
        .filter(|&id| {
            let a = synth_example(7, id, 64).map(|e| e.image.image.into_raw());
            let b = synth_example(8, id, 64).map(|e| e.image.image.into_raw());
            a.ok() != b.ok()
        })
        .count();
    assert_eq!(differ, 8, "seed 8 draws other images than seed 7");
    Ok(())
}

/// Over 300 images: the pixel holding each shape's centroid shows the named
/// colour; the image is the requested size; every shape and colour occurs;
/// the drawn shape covers a plausible share of the image.
#[test]
fn pixels_agree_with_the_answers() -> Result<()> {
    let mut colors = BTreeSet::new();
    let mut shapes = BTreeSet::new();
    let mut rotated_rects = 0;
    for id in 0..300 {
        let ex = synth_example(3, id, 64)?;
        let img = &ex.image;
        assert_eq!(img.image.dimensions(), (64, 64));
        let (cx, cy) = img.geometry.centroid();
        assert!(img.geometry.contains(cx, cy));
        let px = img.image.get_pixel(cx as u32, cy as u32).0;
        assert_eq!(
            COLORS[nearest_color(px)],
            img.color_name(),
            "image {id}: centroid pixel {px:?}, fill {:?}",
            img.fill
        );
        assert_eq!(nearest_color(img.fill), img.color);
        let kind = match img.geometry {
            Geometry::Circle { .. } => "circle",
            Geometry::Rectangle { angle, .. } => {
                if angle.sin().abs() > 0.2 && angle.cos().abs() > 0.2 {
                    rotated_rects += 1;
                }
                "rectangle"
            }
            Geometry::Triangle { .. } => "triangle",
        };
        assert_eq!(kind, img.shape_name(), "image {id}");
        // Pixels wholly inside the shape show its colour (noise and shading
        // included); pixels a pixel or more clear of it, the background,
        // name no colour at all.
        let samples = |x0: f32, x1: f32, y0: f32, y1: f32| {
            (0..5).flat_map(move |i| {
                (0..5).map(move |j| {
                    (
                        x0 + (x1 - x0) * i as f32 / 4.0,
                        y0 + (y1 - y0) * j as f32 / 4.0,
                    )
                })
            })
        };
        let (mut inside, mut inside_clear, mut outside) = (0, 0, 0);
        for (x, y, p) in img.image.enumerate_pixels() {
            let (fx, fy) = (x as f32, y as f32);
            if samples(fx, fx + 1.0, fy, fy + 1.0).all(|(sx, sy)| img.geometry.contains(sx, sy)) {
                inside += 1;
                assert_eq!(nearest_color(p.0), img.color, "image {id} pixel ({x}, {y})");
                inside_clear += usize::from(clearly_named(p.0) == Some(img.color));
            } else if samples(fx - 1.0, fx + 2.0, fy - 1.0, fy + 2.0)
                .all(|(sx, sy)| !img.geometry.contains(sx, sy))
            {
                outside += 1;
                assert_eq!(
                    clearly_named(p.0),
                    None,
                    "image {id} background ({x}, {y}) {:?}",
                    p.0
                );
            }
        }
        assert!(inside >= 12, "image {id}: {inside} pixels inside");
        assert_eq!(
            inside_clear, inside,
            "image {id}: pixels clearly of its colour"
        );
        assert!(
            outside >= 64 * 64 / 3,
            "image {id}: {outside} background pixels"
        );
        colors.insert(img.color);
        shapes.insert(img.shape);
    }
    assert_eq!(colors.len(), 8);
    assert_eq!(shapes.len(), 3);
    assert!(
        rotated_rects > 20,
        "{rotated_rects} visibly rotated rectangles"
    );
    Ok(())
}

#[test]
fn answers_follow_the_drawing_and_yes_no_is_balanced() -> Result<()> {
    let (mut yes, mut no) = (0, 0);
    for id in 0..200 {
        let ex = synth_example(11, id, 64)?;
        let (color, shape) = (ex.image.color_name(), ex.image.shape_name());
        assert_eq!(ex.questions.len(), QUESTIONS_PER_IMAGE);
        let distinct: BTreeSet<String> = ex.questions.iter().map(|(q, _)| pattern(q)).collect();
        assert_eq!(
            distinct.len(),
            QUESTIONS_PER_IMAGE,
            "image {id}: a template twice"
        );
        for (q, a) in &ex.questions {
            assert!(EASY_VQA_TEMPLATES.contains(&pattern(q).as_str()), "{q}");
            let words: Vec<&str> = q.trim_end_matches('?').split(' ').collect();
            match AnswerKind::of(a) {
                Some(AnswerKind::Color) => assert_eq!(a, color, "{q}"),
                Some(AnswerKind::Shape) => assert_eq!(a, shape, "{q}"),
                Some(AnswerKind::YesNo) => {
                    let negated = words.contains(&"not") || words.starts_with(&["is", "no"]);
                    let named_ok = words.iter().all(|w| {
                        !(COLORS.contains(w) && *w != color || SHAPES.contains(w) && *w != shape)
                    });
                    assert_eq!(a == "yes", named_ok != negated, "image {id}: {q} → {a}");
                    if a == "yes" {
                        yes += 1
                    } else {
                        no += 1
                    }
                }
                None => panic!("answer {a:?} is not one of easy-VQA's"),
            }
            // Open questions name only what is drawn.
            if !matches!(AnswerKind::of(a), Some(AnswerKind::YesNo)) {
                for w in &words {
                    assert!(!COLORS.contains(w) || *w == color, "{q}");
                    assert!(!SHAPES.contains(w) || *w == shape, "{q}");
                }
            }
        }
    }
    // 1,200 yes/no answers, each "yes" with probability 1/2.
    assert_eq!(yes + no, 1200);
    assert!((520..=680).contains(&yes), "{yes} yes, {no} no");
    Ok(())
}

#[test]
fn split_loads_as_easy_vqa() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut ticks = 0;
    let summary = write_synth_split(dir.path(), 24, 5, 64, || ticks += 1)?;
    assert_eq!(ticks, 24);
    assert_eq!(summary.images, 24);
    assert_eq!(summary.questions, 24 * QUESTIONS_PER_IMAGE);
    assert_eq!(summary.yes + summary.no, 24 * 6);
    assert_eq!(summary.by_color.iter().sum::<usize>(), 24);

    let examples = load_easy_vqa_split(dir.path())?;
    assert_eq!(examples.len(), 24 * QUESTIONS_PER_IMAGE);
    // The loader's images are the generator's, in order, decodable, 64×64.
    let first = synth_example(5, 0, 64)?;
    let on_disk = image::open(&examples[0].image)?.to_rgb8();
    assert_eq!(on_disk.as_raw(), first.image.image.as_raw());
    let rows: Vec<(&str, &str)> = examples
        .iter()
        .filter(|e| e.image_id == 0)
        .map(|e| (e.question.as_str(), e.answer.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = first
        .questions
        .iter()
        .map(|(q, a)| (q.as_str(), a.as_str()))
        .collect();
    assert_eq!(rows, want);

    // Both attributes of every image follow from its questions, so
    // `eval zeroshot` scores every image.
    let attrs = image_attributes(&examples)?;
    assert_eq!(attrs.len(), 24);
    for (id, a) in &attrs {
        let ex = synth_example(5, *id, 64)?;
        assert_eq!(a.color, Some(ex.image.color_name()), "image {id}");
        assert_eq!(a.shape, Some(ex.image.shape_name()), "image {id}");
    }

    let llava = load_llava_json(&dir.path().join("llava.json"))?;
    assert_eq!(llava.len(), 24);
    assert_eq!(llava[0].images, vec![dir.path().join("images/0.png")]);
    assert_eq!(llava[0].conversations.len(), 2 * QUESTIONS_PER_IMAGE);
    let text = std::fs::read_to_string(dir.path().join("llava.json"))?;
    assert!(
        text.contains("\"image\": \"images/0.png\""),
        "paths relative to the file"
    );
    let captions = load_caption_jsonl(&dir.path().join("captions.jsonl"))?;
    let by_image: BTreeMap<_, _> = captions
        .iter()
        .map(|c| (c.image.clone(), c.caption.clone()))
        .collect();
    let ex3 = synth_example(5, 3, 64)?;
    assert_eq!(
        by_image[&dir.path().join("images/3.png")],
        format!("a {} {}", ex3.image.color_name(), ex3.image.shape_name())
    );
    Ok(())
}

#[test]
fn refuses_bad_sizes_before_drawing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = write_synth_split(dir.path(), 0, 1, 64, || {}).expect_err("0 images");
    assert!(
        err.to_string().contains("images 0 is outside 1..="),
        "{err}"
    );
    let err = write_synth_split(dir.path(), 2, 1, 8, || {}).expect_err("size 8");
    assert!(
        err.to_string().contains("size 8 is outside 32..=512"),
        "{err}"
    );
    assert!(!dir.path().join("images").exists(), "nothing written");
    let err = synth_example(1, 0, 100_000).expect_err("huge side");
    assert!(err.to_string().contains("size 100000"), "{err}");
}

#[test]
fn named_colours_are_far_apart() {
    // The nearest-colour rule used above is only meaningful if each named
    // value is its own nearest.
    for (i, rgb) in NAMED_RGB.iter().enumerate() {
        assert_eq!(nearest_color(*rgb), i);
    }
}
