//! Metrics log round trip and loss/accuracy PNGs drawn from synthetic records.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Result;
use glimpse_train::plot::{PANEL_WIDTH, PLOT_HEIGHT};
use glimpse_train::{plot_stage, read_metrics, MetricRecord, MetricsLog, TrainError};

fn train(stage: &str, step: u64, loss: f64) -> MetricRecord {
    MetricRecord {
        stage: stage.into(),
        step,
        split: "train".into(),
        loss: Some(loss),
        lr: Some(1e-3),
        examples_per_s: Some(120.5),
        ..Default::default()
    }
}

fn eval(stage: &str, step: u64, loss: f64, accuracy: Option<f64>) -> MetricRecord {
    MetricRecord {
        stage: stage.into(),
        step,
        split: "eval".into(),
        loss: Some(loss),
        accuracy,
        ..Default::default()
    }
}

/// A decaying loss with noise, evals every 50 steps, and an `align` stage
/// that must not leak into the `instruct` plot.
fn records(with_accuracy: bool) -> Vec<MetricRecord> {
    let mut out = Vec::new();
    for step in (0..=400u64).step_by(10) {
        let s = step as f64;
        out.push(train(
            "instruct",
            step,
            2.5 * (-s / 120.0).exp() + 0.2 + 0.05 * (s * 0.7).sin(),
        ));
        out.push(train("align", step, 9.0));
        if step % 50 == 0 {
            let acc = with_accuracy.then(|| 1.0 - 0.7 * (-s / 100.0).exp());
            out.push(eval("instruct", step, 2.3 * (-s / 130.0).exp() + 0.3, acc));
        }
    }
    out
}

fn distinct_colours(path: &Path) -> Result<(u32, u32, usize)> {
    let img = image::open(path)?.to_rgb8();
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    Ok((img.width(), img.height(), colours.len()))
}

#[test]
fn plot_with_accuracy_has_two_panels() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("plots/instruct.png");
    plot_stage(&records(true), "instruct", &out)?;
    let (w, h, colours) = distinct_colours(&out)?;
    assert_eq!((w, h), (2 * PANEL_WIDTH, PLOT_HEIGHT));
    // White, black text, three curve colours and their anti-aliasing.
    assert!(colours > 10, "{colours} colours");
    Ok(())
}

#[test]
fn plot_without_accuracy_has_one_panel() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("instruct.png");
    plot_stage(&records(false), "instruct", &out)?;
    let (w, h, colours) = distinct_colours(&out)?;
    assert_eq!((w, h), (PANEL_WIDTH, PLOT_HEIGHT));
    assert!(colours > 10, "{colours} colours");
    Ok(())
}

#[test]
fn plot_survives_a_single_point_and_non_finite_losses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("one.png");
    let recs = vec![
        train("s", 5, 1.0),
        train("s", 6, f64::NAN),
        eval("s", 7, f64::INFINITY, None),
    ];
    plot_stage(&recs, "s", &out)?;
    assert_eq!(distinct_colours(&out)?.0, PANEL_WIDTH);
    Ok(())
}

#[test]
fn plot_of_an_unknown_stage_is_a_one_line_error_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("missing.png");
    let err = plot_stage(&records(true), "full", &out).unwrap_err();
    assert!(matches!(err, TrainError::Plot { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("missing.png") && msg.contains("\"full\""),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert!(!out.exists());
    Ok(())
}

#[test]
fn metrics_log_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run/metrics.jsonl");
    let mut extra = eval("instruct", 50, 0.9, Some(0.97));
    extra
        .extra
        .insert("grad_norm".into(), serde_json::json!(0.5));
    let written = vec![train("instruct", 10, 1.23), extra, train("full", 60, 0.5)];
    {
        let mut log = MetricsLog::open(&path)?;
        log.append(&written[0])?;
        log.append(&written[1])?;
    }
    // Reopening appends (a resumed run).
    MetricsLog::open(&path)?.append(&written[2])?;
    assert_eq!(read_metrics(&path)?, written);

    // The documented line format reads as expected; unknown keys are kept.
    let text = std::fs::read_to_string(&path)?;
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        r#"{"stage":"instruct","step":10,"split":"train","loss":1.23,"lr":0.001,"examples_per_s":120.5}"#
    );
    assert!(text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .contains(r#""grad_norm":0.5"#));
    Ok(())
}

#[test]
fn metrics_log_tolerates_a_torn_last_line_but_not_a_bad_middle_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("metrics.jsonl");
    let good = r#"{"stage":"a","step":1,"split":"train","loss":1.0}"#;
    std::fs::write(&path, format!("{good}\n\n{good}\n{{\"stage\":\"a\",\"st"))?;
    assert_eq!(read_metrics(&path)?.len(), 2);

    std::fs::write(&path, format!("{good}\nnot json\n{good}\n"))?;
    let msg = read_metrics(&path).unwrap_err().to_string();
    assert!(
        msg.contains("metrics.jsonl") && msg.contains("line 2"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    let missing = dir.path().join("nope.jsonl");
    let msg = read_metrics(&missing).unwrap_err().to_string();
    assert!(msg.contains("nope.jsonl"), "{msg}");
    Ok(())
}
