//! Loss and accuracy curves of one training stage as a PNG, drawn from the
//! metrics log: left panel train and eval loss against step,
//! right panel eval accuracy when the stage measured any.
//!
//! Text is drawn with DejaVu Sans compiled into the crate, so plots work on
//! machines without system fonts (CI); the PNG is encoded with `image`.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::metrics::{MetricRecord, EVAL, TRAIN};

/// Width of one panel in pixels; the PNG is this times the panel count.
pub const PANEL_WIDTH: u32 = 640;
/// Height of the PNG in pixels.
pub const PLOT_HEIGHT: u32 = 480;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const EVAL_COLOR: RGBColor = RGBColor(214, 39, 40);
const ACCURACY_COLOR: RGBColor = RGBColor(44, 160, 44);

/// Draws `stage`'s curves from `records` (other stages are ignored) into
/// the PNG `out`, creating its directory. Non-finite values are left out.
pub fn plot_stage(records: &[MetricRecord], stage: &str, out: &Path) -> Result<()> {
    plot_stage_with(records, stage, out, &[])
}

/// [`plot_stage`] with one more panel per name in `extras`: that figure of
/// the stage's eval records (`MetricRecord::extra`, e.g. the VQ stage's
/// codebook usage and perplexity), where it has any.
pub fn plot_stage_with(
    records: &[MetricRecord],
    stage: &str,
    out: &Path,
    extras: &[&str],
) -> Result<()> {
    let err = |msg: String| plot_error(out, msg);
    register_font().map_err(err)?;

    let series = |split: &str, value: fn(&MetricRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.stage == stage && r.split == split)
            .filter_map(|r| {
                value(r)
                    .filter(|v| v.is_finite())
                    .map(|v| (r.step as f64, v))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let train_loss = series(TRAIN, |r| r.loss);
    let eval_loss = series(EVAL, |r| r.loss);
    let accuracy = series(EVAL, |r| r.accuracy);

    let extra_series: Vec<(&str, Vec<(f64, f64)>)> = extras
        .iter()
        .map(|name| {
            let mut points: Vec<(f64, f64)> = records
                .iter()
                .filter(|r| r.stage == stage && r.split == EVAL)
                .filter_map(|r| {
                    let v = r.extra.get(*name)?.as_f64()?;
                    v.is_finite().then_some((r.step as f64, v))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (*name, points)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let has_loss = !train_loss.is_empty() || !eval_loss.is_empty();
    let panels = usize::from(has_loss) + usize::from(!accuracy.is_empty()) + extra_series.len();
    if panels == 0 {
        return Err(err(format!(
            "stage {stage:?} has no finite loss or accuracy to plot"
        )));
    }
    let (width, height) = (PANEL_WIDTH * panels as u32, PLOT_HEIGHT);
    // Every point, so that all panels share one step axis.
    let steps = span(
        train_loss
            .iter()
            .chain(&eval_loss)
            .chain(&accuracy)
            .chain(extra_series.iter().flat_map(|(_, p)| p))
            .map(|p| p.0),
    );

    // (height, width, 3) RGB, row-major, as BitMapBackend writes it.
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((1, panels));
        let mut areas = areas.iter();
        if has_loss {
            let area = areas.next().expect("one area per panel");
            let losses = span(train_loss.iter().chain(&eval_loss).map(|p| p.1));
            let curves = [
                Curve {
                    name: "train loss",
                    color: TRAIN_COLOR,
                    points: &train_loss,
                },
                Curve {
                    name: "eval loss",
                    color: EVAL_COLOR,
                    points: &eval_loss,
                },
            ];
            let title = format!("{stage}: loss");
            // Losses fall: the upper right corner is usually free.
            let legend = SeriesLabelPosition::UpperRight;
            draw_panel(area, &title, "loss", steps.clone(), losses, &curves, legend)
                .map_err(err)?;
        }
        if !accuracy.is_empty() {
            let area = areas.next().expect("one area per panel");
            // Accuracy keeps its whole 0..1 scale so runs compare by eye.
            let top = accuracy.iter().map(|p| p.1).fold(1.0, f64::max);
            let curves = [Curve {
                name: "eval accuracy",
                color: ACCURACY_COLOR,
                points: &accuracy,
            }];
            let title = format!("{stage}: accuracy");
            let legend = SeriesLabelPosition::LowerRight;
            draw_panel(
                area,
                &title,
                "accuracy",
                steps.clone(),
                0.0..top * 1.02,
                &curves,
                legend,
            )
            .map_err(err)?;
        }
        for (name, points) in &extra_series {
            let area = areas.next().expect("one area per panel");
            let curves = [Curve {
                name,
                color: EVAL_COLOR,
                points,
            }];
            let title = format!("{stage}: {name}");
            let ys = span(points.iter().map(|p| p.1));
            let legend = SeriesLabelPosition::LowerRight;
            draw_panel(area, &title, name, steps.clone(), ys, &curves, legend).map_err(err)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    image::save_buffer_with_format(
        out,
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| err(format!("cannot write: {e}")))
}

struct Curve<'a> {
    name: &'a str,
    color: RGBColor,
    points: &'a [(f64, f64)],
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    curves: &[Curve<'_>],
    legend: SeriesLabelPosition,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for c in curves.iter().filter(|c| !c.points.is_empty()) {
        let color = c.color;
        // Few points (eval every N steps) get dots so single evals show.
        let dots = if c.points.len() <= 60 { 3 } else { 0 };
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(c.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if dots > 0 {
            let marks = c
                .points
                .iter()
                .map(|&p| Circle::new(p, dots, color.filled()));
            chart.draw_series(marks).map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// `min..max` of `values`, widened so a single value or a flat curve still
/// has a visible range.
fn span(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.1
    };
    (lo - pad)..(hi + pad)
}

/// Registers the bundled font as plotters' "sans-serif", once per process.
fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| "the bundled DejaVu Sans font cannot be parsed".to_string())
}

fn plot_error(path: &Path, msg: String) -> TrainError {
    TrainError::Plot {
        path: path.to_path_buf(),
        msg: msg.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}
