//! PNG charts of a run's `metrics.jsonl` (cargo feature `plot`).
//!
//! `metrics.jsonl` is the contract; the PNG is only a view of it. Each line of the log is one JSON
//! object: `"kind"` is `"train"` (one row per optimizer step) or `"eval"`, `"step"` is the
//! optimizer step (u64), and every other key holding a number is a metric (`loss`, `accuracy`,
//! `lr`, `grad_norm`, `reward_mean`, `score`, …). The bookkeeping keys in [`BOOKKEEPING_KEYS`]
//! are not curves; `null`, strings and non-finite numbers are skipped, and so are lines that do not
//! parse (a killed run can leave a partial last line).
//!
//! [`read_metrics`] turns the log into one [`Metric`] per name, ordered by [`panel_order`];
//! [`render_png`] draws them as a grid of panels, two columns, one panel per metric: the train
//! curve smoothed by a trailing moving average over [`SMOOTH_WINDOW`] steps (the raw per-step
//! values faint behind it), eval values as markers joined by a line in a second colour, a legend,
//! "optimizer step" under every x axis and a title on top; [`plot_metrics`] does both and writes
//! the file atomically.
//!
//! Drawing is done by `plotters` on an RGB buffer; text is rasterized by `ab_glyph` from DejaVu
//! Sans, embedded in the binary from the `dejavu` crate (so no system fonts are needed); the PNG
//! is encoded by the `png` crate with deflate compression.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::checkpoint::write_bytes_atomically;

/// Keys of a metrics row that are bookkeeping, not curves.
pub const BOOKKEEPING_KEYS: [&str; 9] = [
    "kind",
    "step",
    "epoch",
    "examples",
    "elapsed_s",
    "weight",
    "step_s",
    "examples_per_s",
    "tokens",
];

/// Window (in train rows) of the trailing moving average drawn over train curves.
pub const SMOOTH_WINDOW: usize = 10;

/// Width of the chart [`plot_metrics`] writes, in pixels.
pub const DEFAULT_WIDTH: u32 = 900;

/// Smallest and largest accepted side of a chart, in pixels.
const SIDE_RANGE: std::ops::RangeInclusive<u32> = 64..=8192;

/// Train curves (tab:blue).
pub const TRAIN_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// Eval curves (tab:orange).
pub const EVAL_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
/// Background of the whole chart.
pub const BACKGROUND: RGBColor = WHITE;

/// The font family the chart's text is drawn in (registered from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";

/// One metric of the log: its train and eval values as `(step, value)` in step order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metric {
    /// The key in the JSONL rows (also the panel title).
    pub name: String,
    /// Values from `"kind": "train"` rows, raw (not smoothed).
    pub train: Vec<(f64, f64)>,
    /// Values from `"kind": "eval"` rows.
    pub eval: Vec<(f64, f64)>,
}

/// A parsed `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsLog {
    /// One entry per metric name, in [`panel_order`].
    pub metrics: Vec<Metric>,
    /// Non-empty lines that were not a JSON object with a string `kind` and an integer `step`.
    pub skipped_lines: usize,
}

/// Reads `metrics.jsonl` at `metrics_jsonl` and writes its chart to `png`
/// ([`DEFAULT_WIDTH`] wide, [`default_height`] high); returns the PNG's path.
///
/// Errors name the path: a missing or unreadable file, a file with no metric values (empty, or
/// nothing but unparsable lines), or a failure to draw or write.
pub fn plot_metrics(metrics_jsonl: &Path, png: &Path) -> Result<PathBuf> {
    let log = read_metrics(metrics_jsonl)?;
    let height = default_height(log.metrics.len());
    write_chart(
        &log,
        &chart_title(metrics_jsonl),
        png,
        DEFAULT_WIDTH,
        height,
    )
    .with_context(|| format!("plotting {}", metrics_jsonl.display()))?;
    Ok(png.to_path_buf())
}

/// Like [`plot_metrics`], at a given size in pixels.
pub fn plot_metrics_sized(
    metrics_jsonl: &Path,
    png: &Path,
    width: u32,
    height: u32,
) -> Result<PathBuf> {
    let log = read_metrics(metrics_jsonl)?;
    write_chart(&log, &chart_title(metrics_jsonl), png, width, height)
        .with_context(|| format!("plotting {}", metrics_jsonl.display()))?;
    Ok(png.to_path_buf())
}

/// Height [`plot_metrics`] gives a chart of `panels` panels: 600 px up to two rows of two, then
/// 270 px more per row, so panels keep a readable size.
pub fn default_height(panels: usize) -> u32 {
    let rows = panels.div_ceil(2).max(1) as u32;
    (60 + 270 * rows).clamp(600, *SIDE_RANGE.end())
}

/// Reads and parses the metrics log at `path`; an error (naming the path) when it is missing,
/// unreadable, or holds no metric value at all.
pub fn read_metrics(path: &Path) -> Result<MetricsLog> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let log = parse_metrics(&text);
    if log.metrics.is_empty() {
        bail!(
            "{}: no metric values to plot ({} unparsable lines)",
            path.display(),
            log.skipped_lines
        );
    }
    Ok(log)
}

/// Parses the text of a metrics log (see the module docs for the contract). Rows of a kind other
/// than `train`/`eval` are ignored; values within a kind are put in step order (stable, so the
/// log's order breaks ties).
pub fn parse_metrics(text: &str) -> MetricsLog {
    let mut by_name: BTreeMap<String, Metric> = BTreeMap::new();
    let mut skipped_lines = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let row = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(row)) => row,
            _ => {
                skipped_lines += 1;
                continue;
            }
        };
        let (Some(kind), Some(step)) = (
            row.get("kind").and_then(|k| k.as_str()),
            row.get("step").and_then(|s| s.as_u64()),
        ) else {
            skipped_lines += 1;
            continue;
        };
        let is_train = match kind {
            "train" => true,
            "eval" => false,
            _ => continue,
        };
        for (key, value) in &row {
            if BOOKKEEPING_KEYS.contains(&key.as_str()) {
                continue;
            }
            let Some(v) = value.as_f64().filter(|v| v.is_finite()) else {
                continue;
            };
            let metric = by_name.entry(key.clone()).or_insert_with(|| Metric {
                name: key.clone(),
                ..Metric::default()
            });
            let series = if is_train {
                &mut metric.train
            } else {
                &mut metric.eval
            };
            series.push((step as f64, v));
        }
    }
    let mut metrics: Vec<Metric> = by_name.into_values().collect();
    for m in &mut metrics {
        m.train.sort_by(|a, b| a.0.total_cmp(&b.0));
        m.eval.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    metrics.sort_by(|a, b| panel_order(&a.name).cmp(&panel_order(&b.name)));
    MetricsLog {
        metrics,
        skipped_lines,
    }
}

/// Sort key of a panel: `loss` first, `accuracy` second, then other names alphabetically, then
/// `lr` and `grad_norm` last (optimizer diagnostics).
pub fn panel_order(name: &str) -> (u8, &str) {
    let rank = match name {
        "loss" => 0,
        "accuracy" => 1,
        "lr" => 3,
        "grad_norm" => 4,
        _ => 2,
    };
    (rank, name)
}

/// Trailing moving average: point `i` becomes the mean of the values of points
/// `max(0, i + 1 - window) ..= i` (same x). A `window` of 0 is taken as 1.
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// Renders `log` as a `width`×`height` chart under `title` and writes it to `png` atomically.
fn write_chart(
    log: &MetricsLog,
    title: &str,
    png: &Path,
    width: u32,
    height: u32,
) -> Result<PathBuf> {
    let bytes = render_png(log, title, width, height)?;
    write_bytes_atomically(png, &bytes)?;
    Ok(png.to_path_buf())
}

/// Renders `log` as a `width`×`height` chart under `title` and returns the PNG file's bytes
/// (8-bit RGB, deflate-compressed).
pub fn render_png(log: &MetricsLog, title: &str, width: u32, height: u32) -> Result<Vec<u8>> {
    let rgb = render_rgb(log, title, width, height)?;
    encode_png(&rgb, width, height)
}

/// Each side of a chart must be in [`SIDE_RANGE`].
fn check_size(width: u32, height: u32) -> Result<()> {
    for side in [width, height] {
        if !SIDE_RANGE.contains(&side) {
            bail!(
                "chart size {width}x{height}: each side must be in {}..={} pixels",
                SIDE_RANGE.start(),
                SIDE_RANGE.end()
            );
        }
    }
    Ok(())
}

/// Renders `log` into an RGB raster (rows top to bottom, 3 bytes a pixel).
pub fn render_rgb(log: &MetricsLog, title: &str, width: u32, height: u32) -> Result<Vec<u8>> {
    check_size(width, height)?;
    embedded_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&BACKGROUND).map_err(draw_error)?;
        let scale = f64::from(width.min(height)) / 600.0;
        let title_size = (22.0 * scale).max(10.0);
        let body = root
            .titled(title, (FONT, title_size).into_font().color(&BLACK))
            .map_err(draw_error)?;
        let rows = log.metrics.len().div_ceil(2).max(1);
        let cells = body.split_evenly((rows, 2));
        for (metric, cell) in log.metrics.iter().zip(&cells) {
            draw_panel(cell, metric, scale)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(rgb)
}

/// A panel's chart on `area`: `caption` on top, `x_label` under the x axis, six ticks a side
/// labelled by [`tick_label`] (x ticks for an axis spanning `x_tick_span`), a faint grid.
fn panel_chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: &str,
    x_label: &str,
    (x_range, y_range): (std::ops::Range<f64>, std::ops::Range<f64>),
    x_tick_span: f64,
    scale: f64,
) -> Result<ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let px = |v: f64| (v * scale).round().max(1.0) as u32;
    let text = |size: f64| (FONT, (size * scale).max(8.0)).into_font().color(&BLACK);
    let y_span = y_range.end - y_range.start;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text(16.0))
        .margin(px(10.0))
        .x_label_area_size(px(38.0))
        .y_label_area_size(px(62.0))
        .build_cartesian_2d(x_range, y_range)
        .map_err(draw_error)?;
    let y_fmt = |v: &f64| tick_label(*v, y_span);
    let x_fmt = |v: &f64| tick_label(*v, x_tick_span);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(text(12.0))
        .axis_desc_style(text(13.0))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(draw_error)?;
    Ok(chart)
}

/// Draws one metric's panel: axes, grid, smoothed + raw train curve, eval markers and line, legend.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    metric: &Metric,
    scale: f64,
) -> Result<()> {
    let px = |v: f64| (v * scale).round().max(1.0) as u32;
    let text = |size: f64| (FONT, (size * scale).max(8.0)).into_font().color(&BLACK);
    let smoothed = smooth(&metric.train, SMOOTH_WINDOW);
    let all = || metric.train.iter().chain(&metric.eval);
    let (x_range, y_range) = ranges(all().copied());

    let mut chart = panel_chart(
        area,
        &metric.name,
        "optimizer step",
        (x_range, y_range),
        10.0,
        scale,
    )?;

    let line_width = px(2.0);
    let marker = px(3.5);
    if !metric.train.is_empty() {
        if metric.train.len() > 1 {
            chart
                .draw_series(LineSeries::new(
                    metric.train.iter().copied(),
                    TRAIN_COLOR.mix(0.25),
                ))
                .map_err(draw_error)?;
        }
        let label = if metric.train.len() > SMOOTH_WINDOW {
            format!("train (mean of last {SMOOTH_WINDOW})")
        } else {
            "train".to_string()
        };
        let style = TRAIN_COLOR.stroke_width(line_width);
        let series = if smoothed.len() > 1 {
            chart.draw_series(LineSeries::new(smoothed.iter().copied(), style))
        } else {
            chart.draw_series(
                smoothed
                    .iter()
                    .map(|&p| Circle::new(p, marker, TRAIN_COLOR.filled())),
            )
        };
        series
            .map_err(draw_error)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    if !metric.eval.is_empty() {
        let style = EVAL_COLOR.stroke_width(line_width);
        if metric.eval.len() > 1 {
            chart
                .draw_series(LineSeries::new(metric.eval.iter().copied(), style))
                .map_err(draw_error)?;
        }
        chart
            .draw_series(
                metric
                    .eval
                    .iter()
                    .map(|&p| Circle::new(p, marker, EVAL_COLOR.filled())),
            )
            .map_err(draw_error)?
            .label("eval")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (20, 0)], style)
                    + Circle::new((10, 0), marker, EVAL_COLOR.filled())
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(text(12.0))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

/// One named line of a [`LinePanel`]: `(x, y)` points in x order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A panel of any x/y lines (not a metrics log): e.g. reward against √KL, one line per
/// reward model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// Line colours of [`plot_lines`], in order (matplotlib's tab10), cycled.
pub const LINE_COLORS: [RGBColor; 6] = [
    TRAIN_COLOR,
    EVAL_COLOR,
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Draws `panels` side by side (two columns, as the metrics charts) under `title`, each series
/// a line with markers in its own colour and a legend, and writes the PNG to `png`
/// atomically. An error when no panel has a finite point, or on a drawing failure.
pub fn plot_lines(
    panels: &[LinePanel],
    title: &str,
    png: &Path,
    width: u32,
    height: u32,
) -> Result<PathBuf> {
    check_size(width, height)?;
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    if !panels
        .iter()
        .flat_map(|p| &p.series)
        .any(|s| s.points.iter().any(|p| finite(&p)))
    {
        bail!("{}: nothing to plot (no finite point)", png.display());
    }
    embedded_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&BACKGROUND).map_err(draw_error)?;
        let scale = f64::from(width.min(height)) / 600.0;
        let px = |v: f64| (v * scale).round().max(1.0) as u32;
        let text = |size: f64| (FONT, (size * scale).max(8.0)).into_font().color(&BLACK);
        let body = root.titled(title, text(20.0)).map_err(draw_error)?;
        let cells = body.split_evenly((panels.len().div_ceil(2).max(1), 2.min(panels.len())));
        for (panel, cell) in panels.iter().zip(&cells) {
            let points = || {
                panel
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().filter(finite))
            };
            let (x_range, y_range) = ranges(points().copied());
            let x_span = x_range.end - x_range.start;
            let mut chart = panel_chart(
                cell,
                &panel.title,
                &panel.x_label,
                (x_range, y_range),
                x_span,
                scale,
            )?;
            for (i, series) in panel.series.iter().enumerate() {
                let color = LINE_COLORS[i % LINE_COLORS.len()];
                let style = color.stroke_width(px(2.0));
                let marker = px(3.5);
                let pts: Vec<(f64, f64)> = series.points.iter().filter(finite).copied().collect();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))
                    .map_err(draw_error)?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, marker, color.filled())))
                    .map_err(draw_error)?
                    .label(series.name.as_str())
                    .legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new([(0, 0), (20, 0)], style)
                            + Circle::new((10, 0), marker, color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(text(11.0))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    let bytes = encode_png(&rgb, width, height)?;
    write_bytes_atomically(png, &bytes)?;
    Ok(png.to_path_buf())
}

/// Axis ranges covering `points` with a margin: x from the first to the last step (at least one
/// step wide), y padded by 5% of its span (a flat curve gets a span of 10% of its value, or 1).
fn ranges(
    points: impl Iterator<Item = (f64, f64)>,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let span = y1 - y0;
    let pad = if span > 0.0 {
        0.05 * span
    } else if y0 != 0.0 {
        0.1 * y0.abs()
    } else {
        1.0
    };
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// A tick label for `v` on an axis spanning `span`: scientific for tiny or huge magnitudes
/// (learning rates, example counts), otherwise as many decimals as the span needs.
fn tick_label(v: f64, span: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs().max(span.abs());
    if !(1e-3..1e5).contains(&magnitude) {
        return format!("{v:.1e}");
    }
    let decimals = if span > 0.0 {
        (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    // A value within rounding of 0 (a tick at -1e-17) is "0", not "-0".
    if s == "-0" { "0".into() } else { s }
}

/// The chart's title: "training metrics" and the run directory holding the log, when it has one.
fn chart_title(metrics_jsonl: &Path) -> String {
    match metrics_jsonl
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some(run) => format!("training metrics: {run}"),
        None => "training metrics".into(),
    }
}

/// Encodes an RGB raster as a deflate-compressed 8-bit RGB PNG.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().context("PNG header")?;
    writer.write_image_data(rgb).context("PNG image data")?;
    writer.finish().context("PNG end")?;
    Ok(out)
}

/// Registers DejaVu Sans (embedded) as the `sans-serif` family with plotters, once per process.
fn embedded_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font did not parse"))
    }
}

/// plotters' errors hold the backend's error type; keep their message.
fn draw_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 train steps (loss falling, accuracy rising, a constant lr), 5 evals, a garbage last line.
    fn synthetic_log() -> String {
        let mut s = String::new();
        for step in 1..=50u64 {
            let t = step as f64;
            let wiggle = if step % 2 == 0 { 0.05 } else { -0.05 };
            s += &format!(
                "{{\"kind\":\"train\",\"step\":{step},\"epoch\":0,\"examples\":{},\"elapsed_s\":{},\
                 \"loss\":{},\"accuracy\":{},\"lr\":1e-5,\"grad_norm\":{},\"kl\":null}}\n",
                step * 8,
                t * 0.1,
                0.7 * (-t / 25.0).exp() + wiggle,
                0.5 + 0.4 * (1.0 - (-t / 20.0).exp()),
                1.0 + 0.5 * wiggle
            );
        }
        for step in [10u64, 20, 30, 40, 50] {
            let t = step as f64;
            s += &format!(
                "{{\"kind\":\"eval\",\"step\":{step},\"loss\":{},\"accuracy\":{},\"score\":{}}}\n",
                0.72 * (-t / 30.0).exp(),
                0.5 + 0.35 * (1.0 - (-t / 25.0).exp()),
                0.5 + 0.35 * (1.0 - (-t / 25.0).exp()),
            );
        }
        s += "{\"kind\":\"train\",\"step\":51,\"loss\":0.2"; // killed mid-write
        s
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rm-core-plot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    #[test]
    fn parse_groups_orders_and_skips() {
        let log = parse_metrics(&synthetic_log());
        let names: Vec<&str> = log.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["loss", "accuracy", "score", "lr", "grad_norm"]);
        assert_eq!(log.skipped_lines, 1);
        let loss = &log.metrics[0];
        assert_eq!(loss.train.len(), 50);
        assert_eq!(loss.eval.len(), 5);
        assert_eq!(loss.train[0].0, 1.0);
        assert!((loss.train[0].1 - (0.7 * (-1.0f64 / 25.0).exp() - 0.05)).abs() < 1e-12);
        assert_eq!(loss.eval[4].0, 50.0);
        let score = &log.metrics[2];
        assert!(score.train.is_empty());
        assert_eq!(score.eval.len(), 5);
        // `kl` was null in every row: no panel.
        assert!(log.metrics.iter().all(|m| m.name != "kl"));
    }

    #[test]
    fn parse_sorts_by_step_and_ignores_rows_without_kind_or_step() {
        let log = parse_metrics(
            "{\"kind\":\"train\",\"step\":2,\"loss\":2.0}\n\
             {\"kind\":\"train\",\"step\":1,\"loss\":1.0}\n\
             {\"step\":3,\"loss\":9.0}\n\
             {\"kind\":\"train\",\"step\":-1,\"loss\":9.0}\n\
             {\"kind\":\"other\",\"step\":4,\"loss\":9.0}\n\
             [1,2]\n\n",
        );
        assert_eq!(log.metrics.len(), 1);
        assert_eq!(log.metrics[0].train, [(1.0, 1.0), (2.0, 2.0)]);
        assert_eq!(log.skipped_lines, 3);
    }

    #[test]
    fn smooth_is_a_trailing_mean() {
        let pts: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, (i * i) as f64)).collect();
        let s = smooth(&pts, 3);
        let want = [0.0, 0.5, 5.0 / 3.0, 14.0 / 3.0, 29.0 / 3.0, 50.0 / 3.0];
        for ((x, y), (i, w)) in s.iter().zip(want.iter().enumerate()) {
            assert_eq!(*x, i as f64);
            assert!((y - w).abs() < 1e-12, "{i}: {y} vs {w}");
        }
        assert_eq!(smooth(&pts, 1), pts);
        assert_eq!(smooth(&pts, 0), pts);
    }

    #[test]
    fn tick_labels_fit_the_axis() {
        assert_eq!(tick_label(0.0, 1.0), "0");
        assert_eq!(tick_label(0.25, 0.5), "0.25");
        assert_eq!(tick_label(0.7, 0.5), "0.7");
        assert_eq!(tick_label(40.0, 50.0), "40");
        assert_eq!(tick_label(1e-5, 2e-6), "1.0e-5");
        assert_eq!(tick_label(250000.0, 1e5), "2.5e5");
        assert_eq!(tick_label(-1e-17, 0.8), "0");
    }

    #[test]
    fn plot_metrics_writes_a_small_png_with_both_colours() {
        let dir = temp_dir("chart");
        let jsonl = dir.join("metrics.jsonl");
        std::fs::write(&jsonl, synthetic_log()).unwrap();
        let png_path = dir.join("curves.png");
        let written = plot_metrics_sized(&jsonl, &png_path, 900, 600).unwrap();
        assert_eq!(written, png_path);
        let bytes = std::fs::read(&png_path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() < 200_000, "{} bytes", bytes.len());
        let (info, rgb) = decode(&bytes);
        assert_eq!((info.width, info.height), (900, 600));
        assert_eq!(info.color_type, png::ColorType::Rgb);

        // The loss panel is the top-left cell: count the exact curve colours inside it.
        let count = |color: RGBColor| {
            let mut n = 0;
            for y in 40..300usize {
                for x in 0..450usize {
                    let i = (y * 900 + x) * 3;
                    if rgb[i..i + 3] == [color.0, color.1, color.2] {
                        n += 1;
                    }
                }
            }
            n
        };
        let (train, eval) = (count(TRAIN_COLOR), count(EVAL_COLOR));
        assert!(train > 300, "train pixels in the loss panel: {train}");
        assert!(eval > 100, "eval pixels in the loss panel: {eval}");
        let background = rgb
            .chunks_exact(3)
            .filter(|p| *p == [BACKGROUND.0, BACKGROUND.1, BACKGROUND.2])
            .count();
        assert!(background < 900 * 600, "the chart is blank");
        // Text (black, anti-aliased) exists: the title row has dark pixels.
        let dark_title = (0..900usize * 30)
            .filter(|p| rgb[p * 3..p * 3 + 3].iter().all(|&c| c < 80))
            .count();
        assert!(
            dark_title > 100,
            "dark pixels in the title band: {dark_title}"
        );

        let default = plot_metrics(&jsonl, &dir.join("default.png")).unwrap();
        let (info, _) = decode(&std::fs::read(default).unwrap());
        // 5 panels: 3 rows.
        assert_eq!(
            (info.width, info.height),
            (DEFAULT_WIDTH, default_height(5))
        );
        assert_eq!(default_height(5), 870);
        std::fs::create_dir_all("/tmp/plot-view").unwrap();
        std::fs::copy(&png_path, "/tmp/plot-view/curves.png").unwrap();
        std::fs::copy(dir.join("default.png"), "/tmp/plot-view/default.png").unwrap(); // TEMP
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plot_lines_draws_each_series_in_its_colour_and_refuses_an_empty_chart() {
        let dir = temp_dir("lines");
        let line = |name: &str, slope: f64| Series {
            name: name.into(),
            points: (0..5).map(|i| (i as f64 * 0.3, slope * i as f64)).collect(),
        };
        let panels = [
            LinePanel {
                title: "gold".into(),
                x_label: "sqrt KL".into(),
                series: vec![line("a", 1.0), line("b", -1.0)],
            },
            LinePanel {
                title: "proxy".into(),
                x_label: "sqrt KL".into(),
                series: vec![line("a", 2.0), line("b", 0.5)],
            },
        ];
        let png_path = dir.join("lines.png");
        plot_lines(&panels, "study", &png_path, 900, 450).unwrap();
        let (info, rgb) = decode(&std::fs::read(&png_path).unwrap());
        assert_eq!((info.width, info.height), (900, 450));
        // Both colours are drawn in the left panel (x < 450) and in the right one.
        let count = |color: RGBColor, xs: std::ops::Range<usize>| {
            let mut n = 0;
            for y in 0..450usize {
                for x in xs.clone() {
                    let i = (y * 900 + x) * 3;
                    if rgb[i..i + 3] == [color.0, color.1, color.2] {
                        n += 1;
                    }
                }
            }
            n
        };
        for xs in [0..450, 450..900] {
            for c in &LINE_COLORS[..2] {
                assert!(count(*c, xs.clone()) > 100, "{c:?} in {xs:?}");
            }
            assert_eq!(count(LINE_COLORS[2], xs), 0, "only two series");
        }
        let empty = [LinePanel {
            title: "x".into(),
            x_label: "x".into(),
            series: vec![Series {
                name: "nan".into(),
                points: vec![(f64::NAN, 1.0)],
            }],
        }];
        let e = plot_lines(&empty, "t", &dir.join("e.png"), 900, 450)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to plot") && e.contains("e.png"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_empty_files_are_errors_naming_the_path() {
        let dir = temp_dir("errors");
        let missing = dir.join("no-such-metrics.jsonl");
        let err = plot_metrics(&missing, &dir.join("a.png")).unwrap_err();
        assert!(
            format!("{err:#}").contains("no-such-metrics.jsonl"),
            "{err:#}"
        );

        let empty = dir.join("empty-metrics.jsonl");
        std::fs::write(&empty, "").unwrap();
        let err = plot_metrics(&empty, &dir.join("b.png")).unwrap_err();
        assert!(
            format!("{err:#}").contains("empty-metrics.jsonl"),
            "{err:#}"
        );

        let garbage = dir.join("garbage-metrics.jsonl");
        std::fs::write(&garbage, "{\"kind\":\"tr").unwrap();
        let err = plot_metrics(&garbage, &dir.join("c.png")).unwrap_err();
        assert!(format!("{err:#}").contains("1 unparsable"), "{err:#}");
        assert!(!dir.join("c.png").exists());

        let err = plot_metrics_sized(&empty, &dir.join("d.png"), 10, 10).unwrap_err();
        assert!(
            format!("{err:#}").contains("empty-metrics.jsonl"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn out_of_range_sizes_are_refused() {
        let log = parse_metrics(&synthetic_log());
        let err = render_png(&log, "t", 10, 600).unwrap_err();
        assert!(err.to_string().contains("10x600"), "{err}");
    }
}
