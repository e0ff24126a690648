//! Figures drawn with plotters, each rendered twice from one description: SVG (crisp in the
//! browser) and PNG (for anything that cannot show SVG). Both are built in memory and written
//! atomically, so a killed report never leaves half a picture.

use super::curves::TrainingCurve;
use super::grid::{knob_series, point_interval, seed_noise_at, series_rows, Knob, Score};
use super::results_table::ResultRow;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::io::Cursor;

/// Tableau-10: distinct, colour-blind-friendly series colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const FONT: &str = "sans-serif";
const PANEL_WIDTH: u32 = 560;
const PANEL_HEIGHT: u32 = 400;
const TITLE_HEIGHT: u32 = 40;
const LEGEND_ROW_HEIGHT: u32 = 22;
/// Curves are thinned to this many points so SVGs of long runs stay small.
const MAX_CURVE_POINTS: usize = 400;

/// One named line (and/or markers) in a panel; the same label has the same colour in every panel.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSeries {
    pub label: String,
    /// Points joined by a line, in x order.
    pub line: Vec<(f64, f64)>,
    /// Whether `line`'s points also get filled markers.
    pub markers: bool,
    /// Points drawn as hollow circles and not joined (a different LR schedule).
    pub hollow: Vec<(f64, f64)>,
    /// Vertical 95 % error bars `(x, lo, hi)`.
    pub error_bars: Vec<(f64, f64, f64)>,
}

/// One chart of a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<PlotSeries>,
    /// Draw y = 0 (chance level for stable scores) and keep it in view.
    pub zero_line: bool,
    /// A dashed reference line (label, y), kept in view: the text-only model's text score.
    pub baseline: Option<(String, f64)>,
    /// Only whole-number ticks on x (epoch counts).
    pub integer_x: bool,
}

/// A figure: panels side by side with one shared legend underneath.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File-name stem: `<slug>.png` and `<slug>.svg`.
    pub slug: String,
    pub title: String,
    pub caption: String,
    pub panels: Vec<Panel>,
}

/// A figure's two encodings.
pub struct RenderedFigure {
    pub svg: String,
    pub png: Vec<u8>,
}

/// Vision and text stable score against one knob; fresh-schedule points hollow; the text panel
/// shows the text-only model's score as a dashed line, as the paper compares against it.
pub fn knob_figure(rows: &[ResultRow], knob: Knob) -> Figure {
    let text_only = rows.iter().filter(|r| r.introduction.is_none()).filter_map(|r| Score::Text.of(r)).reduce(f64::max);
    let panel = |score: Score| Panel {
        title: format!("{} stable score", score.name()),
        x_label: knob.axis_label().to_string(),
        y_label: "stable score (accuracy - chance)".to_string(),
        series: knob_series(rows, knob, score)
            .into_iter()
            .map(|s| {
                let error_bars = s
                    .points
                    .iter()
                    .filter_map(|p| {
                        let runs = series_rows(rows, knob, &s.label, p.x, p.fresh);
                        let noise = seed_noise_at(rows, &runs, |r| score.of(r));
                        let ci = point_interval(&runs, score, noise)?;
                        Some((p.x, ci.lo, ci.hi))
                    })
                    .collect();
                PlotSeries {
                    line: s.points.iter().filter(|p| !p.fresh).map(|p| (p.x, p.mean)).collect(),
                    markers: true,
                    hollow: s.points.iter().filter(|p| p.fresh).map(|p| (p.x, p.mean)).collect(),
                    error_bars,
                    label: s.label,
                }
            })
            .collect(),
        zero_line: true,
        baseline: text_only.filter(|_| score == Score::Text).map(|y| ("text-only model".to_string(), y)),
        integer_x: knob == Knob::FinetuneEpochs,
    };
    let caption = match knob {
        Knob::Introduction => "Mean over seeds, with 95 % error bars (item noise plus seed noise, as in the findings). Hollow markers: scratch / full points, trained with a fresh warmup + cosine schedule instead of continuing the text schedule.",
        _ => "Mean over seeds, with 95 % error bars (item noise plus seed noise, as in the findings); one line per combination of the other knobs. Hollow markers: fresh-schedule cooldowns.",
    };
    Figure {
        slug: knob.slug().to_string(),
        title: format!("Stable score vs. {}", knob.axis_label()),
        caption: caption.to_string(),
        panels: vec![panel(Score::Vision), panel(Score::Text)],
    }
}

/// Loss, learning rate and achieved image-token share against tokens seen, one line per run.
pub fn curves_figure(curves: &[TrainingCurve]) -> Figure {
    let panel = |title: &str, y_label: &str, value: fn(&super::curves::MetricPoint) -> f64| Panel {
        title: title.to_string(),
        x_label: "tokens (millions)".to_string(),
        y_label: y_label.to_string(),
        series: curves
            .iter()
            .filter(|c| !c.points.is_empty())
            .map(|c| {
                let stride = c.points.len().div_ceil(MAX_CURVE_POINTS).max(1);
                let mut line: Vec<(f64, f64)> =
                    c.points.iter().step_by(stride).map(|p| (p.tokens as f64 / 1e6, value(p))).collect();
                let last = c.points.last().expect("non-empty");
                if (c.points.len() - 1) % stride != 0 {
                    line.push((last.tokens as f64 / 1e6, value(last)));
                }
                PlotSeries { label: c.run_id.clone(), line, markers: false, hollow: Vec::new(), error_bars: Vec::new() }
            })
            .collect(),
        zero_line: false,
        baseline: None,
        integer_x: false,
    };
    Figure {
        slug: "training_curves".to_string(),
        title: "Training curves".to_string(),
        caption: "Every training node: loss, learning rate and the achieved share of image tokens per logged step."
            .to_string(),
        panels: vec![
            panel("training loss", "loss (nats/token)", |p| p.loss),
            panel("learning rate", "learning rate", |p| p.lr),
            panel("image-token share", "image tokens / tokens", |p| p.achieved_image_fraction),
        ],
    }
}

/// Legend labels across all panels in first-seen order; a label's index picks its colour.
fn legend_labels(figure: &Figure) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for s in figure.panels.iter().flat_map(|p| &p.series) {
        if !labels.contains(&s.label) {
            labels.push(s.label.clone());
        }
    }
    labels
}

fn colour(labels: &[String], label: &str) -> RGBColor {
    PALETTE[labels.iter().position(|l| l == label).unwrap_or(0) % PALETTE.len()]
}

/// Legend entries wrapped into rows that fit the figure's width: (row, x offset, label).
fn legend_layout(labels: &[String], width: u32) -> Vec<(u32, u32, &str)> {
    let mut placed = Vec::new();
    let (mut row, mut x) = (0u32, 20u32);
    for label in labels {
        let w = 40 + 8 * label.chars().count() as u32;
        if x + w > width && x > 20 {
            row += 1;
            x = 20;
        }
        placed.push((row, x, label.as_str()));
        x += w;
    }
    placed
}

fn size(figure: &Figure) -> (u32, u32) {
    let width = PANEL_WIDTH * figure.panels.len().max(1) as u32;
    let rows = legend_layout(&legend_labels(figure), width).last().map_or(0, |(r, _, _)| r + 1);
    (width, TITLE_HEIGHT + PANEL_HEIGHT + rows * LEGEND_ROW_HEIGHT + 10)
}

/// Data range with a margin; degenerate ranges are widened so a single point still shows.
fn padded_range(values: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) =
        values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let span = hi - lo;
    if span < 1e-12 {
        let pad = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        return (lo - pad, hi + pad);
    }
    (lo - 0.06 * span, hi + 0.06 * span)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let labels = legend_labels(figure);
    let (width, _) = root.dim_in_pixel();
    let titled = root.titled(&figure.title, (FONT, 22))?;
    let (plots, legend) = titled.split_vertically(PANEL_HEIGHT);
    for (area, panel) in plots.split_evenly((1, figure.panels.len().max(1))).iter().zip(&figure.panels) {
        draw_panel(area, panel, &labels)?;
    }
    for (row, x, label) in legend_layout(&labels, width) {
        let y = (row * LEGEND_ROW_HEIGHT + 12) as i32;
        let c = colour(&labels, label);
        legend.draw(&PathElement::new(vec![(x as i32, y), (x as i32 + 24, y)], c.stroke_width(3)))?;
        legend.draw(&Text::new(label.to_string(), (x as i32 + 30, y - 7), (FONT, 14)))?;
    }
    root.present()
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    labels: &[String],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all_points = || panel.series.iter().flat_map(|s| s.line.iter().chain(&s.hollow));
    let bar_ends = || panel.series.iter().flat_map(|s| s.error_bars.iter().flat_map(|b| [b.1, b.2]));
    let (x0, x1) = padded_range(all_points().map(|p| p.0), false);
    let ys = all_points().map(|p| p.1).chain(bar_ends()).chain(panel.baseline.as_ref().map(|b| b.1));
    let (y0, y1) = padded_range(ys.filter(|y| y.is_finite()), panel.zero_line);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .x_label_formatter(&|v| if panel.integer_x && v.fract() != 0.0 { String::new() } else { tick(v) })
        .y_label_formatter(&tick)
        .light_line_style(RGBColor(243, 243, 243))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if panel.zero_line {
        chart.draw_series(LineSeries::new(vec![(x0, 0.0), (x1, 0.0)], RGBColor(120, 120, 120).stroke_width(1)))?;
    }
    if let Some((label, y)) = &panel.baseline {
        let grey = RGBColor(90, 90, 90);
        chart.draw_series(DashedLineSeries::new(vec![(x0, *y), (x1, *y)], 8, 5, grey.stroke_width(2)))?;
        let above =
            EmptyElement::at((x0, *y)) + Text::new(label.clone(), (6, -17), (FONT, 13).into_font().color(&grey));
        chart.draw_series(std::iter::once(above))?;
    }
    if all_points().next().is_none() {
        let mid = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        chart.draw_series(std::iter::once(Text::new("no data in this grid", mid, (FONT, 15))))?;
    }
    for s in &panel.series {
        let c = colour(labels, &s.label);
        let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
        chart.draw_series(LineSeries::new(s.line.iter().filter(finite).cloned(), c.stroke_width(2)))?;
        if s.markers {
            chart.draw_series(s.line.iter().filter(finite).map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        chart.draw_series(s.hollow.iter().filter(finite).map(|&p| Circle::new(p, 6, c.stroke_width(2))))?;
        for &(x, lo, hi) in s.error_bars.iter().filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite()) {
            chart.draw_series(LineSeries::new([(x, lo), (x, hi)], c.stroke_width(1)))?;
        }
    }
    Ok(())
}

/// Axis tick text without float noise: "10" not "10.0", "0" not "3.5e-18" (a zero reached by
/// stepping), "2.5e-5" for tiny learning rates.
fn tick(value: &f64) -> String {
    let v = *value;
    if v.abs() < 1e-12 {
        return "0".to_string();
    }
    if v.abs() < 1e-3 {
        return format!("{v:.1e}");
    }
    let fixed = format!("{v:.4}");
    fixed.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Draws a figure into an SVG string and a PNG byte buffer.
pub fn render(figure: &Figure) -> Result<RenderedFigure> {
    let (w, h) = size(figure);
    let context = || format!("drawing figure {}", figure.slug);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        draw(&root, figure).map_err(|e| anyhow!("{e}")).with_context(context)?;
    }
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root, figure).map_err(|e| anyhow!("{e}")).with_context(context)?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels).context("pixel buffer size")?;
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}.png", figure.slug))?;
    Ok(RenderedFigure { svg, png })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_and_survive_single_points() {
        assert_eq!(padded_range([2.0, 2.0].into_iter(), false), (1.8, 2.2));
        assert_eq!(padded_range(std::iter::empty(), false), (0.0, 1.0));
        let (lo, hi) = padded_range([0.2, 0.4].into_iter(), true);
        assert!(lo < 0.0 && hi > 0.4);
    }

    #[test]
    fn ticks_drop_float_noise() {
        assert_eq!(tick(&10.0), "10");
        assert_eq!(tick(&0.25), "0.25");
        assert_eq!(tick(&0.0), "0");
        assert_eq!(tick(&3.5e-18), "0");
        assert_eq!(tick(&0.00003), "3.0e-5");
    }

    #[test]
    fn legend_wraps_to_the_width() {
        let labels: Vec<String> = (0..6).map(|i| format!("series number {i}")).collect();
        let placed = legend_layout(&labels, 560);
        assert!(placed.iter().all(|(_, x, l)| x + 40 + 8 * l.len() as u32 <= 560 || *x == 20));
        assert!(placed.last().unwrap().0 > 0, "six long labels need more than one row");
    }
}
