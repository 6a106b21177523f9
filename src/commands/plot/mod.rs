//! `nabla plot LOG -o curves.png` and `nabla plot boundary FILE --weights W -o boundary.png`:
//! loss and accuracy curves from a `--log` file, and a 2-D model's decision regions with its
//! data on top, as the TensorFlow Playground draws them. PNG or SVG by the output's extension,
//! drawn with `plotters` and an embedded font (DejaVu Sans), so nothing depends on the fonts a
//! machine has. Files are written atomically.
//!
//! This file is long because curves and decision regions share their axes, scales and font;
//! reading a log is [`log`]'s.

pub mod log;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nabla_runtime::data::{Column, Dataset};
use nabla_runtime::train::{self, PredictionKind, Store};
use nabla_runtime::{Elem, files};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use super::session::{Session, WeightsArgs, open};
use super::{Failure, Outcome};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    boundary: Option<Kind>,
    /// A metrics log written by `nabla train --log` (JSON lines).
    log: Option<PathBuf>,
    /// The picture to write: `.png` or `.svg`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Kind {
    /// Decision regions of a model with 2-D input, with its training data on top.
    Boundary(BoundaryArgs),
}

#[derive(clap::Args)]
struct BoundaryArgs {
    #[command(flatten)]
    common: WeightsArgs,
    /// The picture to write: `.png` or `.svg`.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Outcome {
    let (output, figure) = match (args.boundary, args.log) {
        (Some(Kind::Boundary(b)), _) => {
            let mut session = open(&b.common.file, b.common.config.as_deref())?;
            two_d(&session)?;
            let mut store = session.load_weights(&b.common.weights)?;
            let figure = boundary(&mut session, &mut store)?;
            (b.output, figure)
        }
        (None, Some(log)) => {
            let output = args.output.ok_or_else(|| {
                Failure::Message("say where to draw the curves with `-o curves.png`".into())
            })?;
            // Memory is bounded by the lines kept, not by the file: no size limit.
            let (file, _) =
                files::open_limited(&log, "metrics log", u64::MAX).map_err(Failure::Message)?;
            let metrics = log::read(&log, file).map_err(Failure::Message)?;
            (output, curves(&log, metrics)?)
        }
        (None, None) => {
            return Err(Failure::Message(
                "give a metrics log (`nabla plot metrics.jsonl -o curves.png`) or `boundary` (`nabla plot boundary FILE --weights W -o boundary.png`)".into(),
            ));
        }
    };
    files::check_writable(&output, "-o", false).map_err(Failure::Message)?;
    render(&output, &figure).map_err(Failure::Message)?;
    out!("wrote {}", output.display());
    if let Some(note) = figure.left_out() {
        eprintln!("note: left out {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `train --plot DIR`: the curves of `records` and, for a 2-D model, its decision boundary.
/// Returns the files written.
pub fn after_training(
    session: &mut Session,
    store: &Store,
    records: &[Value],
    dir: &Path,
) -> Result<Vec<String>, Failure> {
    let mut written = Vec::new();
    let path = dir.join("curves.png");
    let metrics = log::from_records(&path, records).map_err(Failure::Message)?;
    let figure = curves(&path, metrics)?;
    render(&path, &figure).map_err(Failure::Message)?;
    written.push(path.display().to_string());
    if let Some(note) = figure.left_out() {
        written.push(format!("(left out {note})"));
    }
    if two_d_input(session).is_some() {
        let path = dir.join("boundary.png");
        let mut store = store.clone();
        render(&path, &boundary(session, &mut store)?).map_err(Failure::Message)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

/// What can be drawn.
enum Figure {
    Curves(Curves),
    Boundary(Boundary),
}

impl Figure {
    /// What the figure could not draw, as a sentence part.
    fn left_out(&self) -> Option<&str> {
        match self {
            Figure::Curves(c) => c.left_out.as_deref(),
            Figure::Boundary(_) => None,
        }
    }
}

/// Named points: `(legend name, colour, (epoch, value) points)`.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Metrics per epoch, by series.
struct Curves {
    /// `(title, series)` for loss and, when present, accuracy (percent).
    panels: Vec<(&'static str, Vec<Series>)>,
    /// What could not be drawn, as a sentence part.
    left_out: Option<String>,
}

/// The legend names of [`log::KEYS`]' series in each panel.
const NAMES: [&str; 3] = ["train", "validation", "test"];

/// The accuracy panel's title.
const ACCURACY: &str = "accuracy (%)";

/// The curves of a log's metrics: a loss panel and, when there is accuracy, an accuracy
/// panel; a panel with nothing finite to draw is left out.
fn curves(origin: &Path, metrics: log::Metrics) -> Result<Figure, Failure> {
    let left_out = metrics.left_out_note();
    let [
        loss,
        val_loss,
        test_loss,
        accuracy,
        val_accuracy,
        test_accuracy,
    ] = metrics.points;
    let series = |points: [Vec<(f64, f64)>; 3], scale: f64| -> Vec<Series> {
        points
            .into_iter()
            .zip(NAMES.into_iter().zip(SERIES))
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, (name, colour))| {
                let p = envelope(p)
                    .into_iter()
                    .map(|(e, v)| (e, v * scale))
                    .collect();
                (name, colour, p)
            })
            .collect()
    };
    let panels: Vec<(&'static str, Vec<Series>)> = [
        ("loss", series([loss, val_loss, test_loss], 1.0)),
        (
            ACCURACY,
            series([accuracy, val_accuracy, test_accuracy], 100.0),
        ),
    ]
    .into_iter()
    .filter(|(_, series)| !series.is_empty())
    .collect();
    if panels.is_empty() {
        return Err(Failure::Message(format!(
            "{} has no finished epoch with a finite value to plot{}",
            origin.display(),
            left_out
                .map(|note| format!("; it has only {note}"))
                .unwrap_or_default()
        )));
    }
    Ok(Figure::Curves(Curves { panels, left_out }))
}

/// A 2-D model's predictions on a grid, and its training data.
struct Boundary {
    title: String,
    axes: [String; 2],
    x: Range<f64>,
    y: Range<f64>,
    /// Cells per side.
    cells: usize,
    /// Each cell's colour, row by row from the bottom.
    colours: Vec<RGBColor>,
    /// Data points and their colours.
    points: Vec<((f64, f64), RGBColor)>,
    /// Legend entries.
    legend: Vec<(String, RGBColor)>,
}

/// The model's one input of two values per example, if it has one.
fn two_d_input(session: &Session) -> Option<String> {
    let inputs: Vec<_> = session.info.feeds.iter().filter(|f| !f.target).collect();
    match inputs.as_slice() {
        [only] if only.row_len == 2 => Some(only.name.clone()),
        _ => None,
    }
}

/// The Playground's colours: orange for class 0 (negative), blue for class 1 (positive), then
/// more for more classes.
const PALETTE: [RGBColor; 8] = [
    RGBColor(245, 147, 34),
    RGBColor(8, 119, 189),
    RGBColor(60, 160, 80),
    RGBColor(200, 60, 60),
    RGBColor(140, 90, 180),
    RGBColor(120, 80, 60),
    RGBColor(220, 110, 180),
    RGBColor(110, 110, 110),
];

/// `a` blended towards `b` by `t` in [0, 1].
fn mix(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let c = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(c(a.0, b.0), c(a.1, b.1), c(a.2, b.2))
}

/// A value in [0, 1] as the Playground colours it: orange, white, blue.
fn diverging(t: f64) -> RGBColor {
    if t < 0.5 {
        mix(PALETTE[0], WHITE, t * 2.0)
    } else {
        mix(WHITE, PALETTE[1], (t - 0.5) * 2.0)
    }
}

const GRID: usize = 160;

/// The 2-D input's name, or why there is no boundary to draw.
fn two_d(session: &Session) -> Result<String, Failure> {
    two_d_input(session).ok_or_else(|| {
        Failure::Message(format!(
            "`{}` does not take 2-D input (one input of two values per example), so it has no decision boundary to draw",
            session.loaded.path.display()
        ))
    })
}

fn boundary(session: &mut Session, store: &mut Store) -> Result<Figure, Failure> {
    let input = two_d(session)?;
    let data = session.train_data()?;
    let column = data.column(&input).expect("validated against the model");
    let coords: Vec<(f64, f64)> = column
        .values
        .chunks_exact(2)
        .map(|p| (p[0] as f64, p[1] as f64))
        .collect();
    let span = |axis: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = coords
            .iter()
            .map(axis)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(v), h.max(v))
            });
        let pad = ((hi - lo) * 0.08).max(1e-3);
        lo - pad..hi + pad
    };
    let (x, y) = (span(|p| p.0), span(|p| p.1));
    let centre =
        |r: &Range<f64>, i: usize| r.start + (r.end - r.start) * (i as f64 + 0.5) / GRID as f64;
    let grid: Vec<f32> = (0..GRID * GRID)
        .flat_map(|i| [centre(&x, i % GRID) as f32, centre(&y, i / GRID) as f32])
        .collect();
    let grid = Dataset {
        columns: vec![Column {
            name: input.clone(),
            row_len: 2,
            values: grid,
            source: None,
        }],
        rows: GRID * GRID,
        origin: "the plotting grid".into(),
        vocabulary: None,
    };
    let predictions = train::predict(
        &session.info,
        Elem::F32,
        &mut session.programs,
        store,
        &grid,
        None,
    )
    .map_err(Failure::Message)?;
    let kind = session.info.prediction;
    let target = session
        .info
        .feeds
        .iter()
        .find(|f| f.target)
        .and_then(|f| data.column(&f.name));
    let labels: Vec<f64> = match target {
        Some(t) => t
            .values
            .iter()
            .step_by(t.row_len)
            .map(|&v| v as f64)
            .collect(),
        None => vec![0.0; coords.len()],
    };
    let (colours, point_colour, legend) = colouring(kind, &predictions, &labels);
    let points = coords
        .iter()
        .zip(&labels)
        .map(|(&p, &l)| (p, point_colour(l)))
        .collect();
    Ok(Figure::Boundary(Boundary {
        title: format!(
            "{}: decision regions and training data",
            session.loaded.compiled.model.name
        ),
        axes: [format!("{input}[0]"), format!("{input}[1]")],
        x,
        y,
        cells: GRID,
        colours,
        points,
        legend,
    }))
}

type PointColour = Box<dyn Fn(f64) -> RGBColor>;

/// Cell colours for `predictions`, the colour of a data point with label `l`, and the legend.
fn colouring(
    kind: PredictionKind,
    predictions: &[Vec<f64>],
    labels: &[f64],
) -> (Vec<RGBColor>, PointColour, Vec<(String, RGBColor)>) {
    let pale = |c: RGBColor, confidence: f64| mix(WHITE, c, 0.25 + 0.45 * confidence);
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let binary_legend = || {
        vec![
            ("class 0".to_string(), PALETTE[0]),
            ("class 1".to_string(), PALETTE[1]),
        ]
    };
    match kind {
        PredictionKind::Classes => {
            let classes = predictions.first().map_or(1, Vec::len);
            let colour = |c: usize| PALETTE[c % PALETTE.len()];
            let cells = predictions
                .iter()
                .map(|logits| {
                    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = logits.iter().map(|l| (l - top).exp()).sum();
                    let best = kind.class_of(logits.len(), |i| logits[i]).unwrap_or(0);
                    let confidence =
                        (1.0 / sum - 1.0 / classes as f64) / (1.0 - 1.0 / classes as f64);
                    pale(colour(best), confidence)
                })
                .collect();
            let legend = (0..classes.min(PALETTE.len()))
                .map(|c| (format!("class {c}"), colour(c)))
                .collect();
            (cells, Box::new(move |l| colour(l as usize)), legend)
        }
        PredictionKind::Logit | PredictionKind::Probability => {
            let p = move |v: f64| {
                if kind == PredictionKind::Logit {
                    sigmoid(v)
                } else {
                    v
                }
            };
            let cells = predictions
                .iter()
                .map(|v| pale(diverging(p(v[0])), 1.0))
                .collect();
            (
                cells,
                Box::new(|l| PALETTE[usize::from(l > 0.5)]),
                binary_legend(),
            )
        }
        PredictionKind::Regression => {
            let values = predictions
                .iter()
                .map(|v| v[0])
                .chain(labels.iter().copied());
            let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(v), h.max(v))
            });
            let scale = move |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            let cells = predictions
                .iter()
                .map(|v| pale(diverging(scale(v[0])), 1.0))
                .collect();
            let legend = vec![
                (format!("{lo:.3}"), PALETTE[0]),
                (format!("{hi:.3}"), PALETTE[1]),
            ];
            (cells, Box::new(move |l| diverging(scale(l))), legend)
        }
    }
}

/// Registers the embedded font under the family name the figures use, once.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

/// Draws `figure` into `path` (PNG or SVG by extension), atomically.
fn render(path: &Path, figure: &Figure) -> Result<(), String> {
    register_font();
    let size = match figure {
        Figure::Curves(c) if c.panels.len() == 2 => (1200, 480),
        Figure::Curves(_) => (700, 480),
        Figure::Boundary(_) => (760, 640),
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match extension.as_deref() {
        Some("png") => {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                draw(&root, figure)?;
                root.present().map_err(|e| e.to_string())?;
            }
            encode_png(&rgb, size)?
        }
        Some("svg") => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw(&root, figure)?;
                root.present().map_err(|e| e.to_string())?;
            }
            svg.into_bytes()
        }
        _ => {
            return Err(format!(
                "cannot tell the picture format of `{}`: name it `.png` or `.svg`",
                path.display()
            ));
        }
    };
    files::write_atomically(path, &bytes)
}

fn encode_png(rgb: &[u8], (width, height): (u32, u32)) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Series colours: train, validation, test.
const SERIES: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    match figure {
        Figure::Curves(c) => {
            let areas = root.split_evenly((1, c.panels.len()));
            for (area, (title, series)) in areas.iter().zip(&c.panels) {
                panel(area, title, series).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Figure::Boundary(b) => regions(root, b).map_err(|e| e.to_string()),
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// One panel of curves against epochs, with labelled axes and a legend.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
) -> DrawResult<DB> {
    let all = || series.iter().flat_map(|(_, _, p)| p.iter());
    let last = all().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = value_range(all().map(|p| p.1));
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-6);
    let x = if last <= 1.0 { 0.5..1.5 } else { 1.0..last };
    // Percentages never go past 100; leave only room for the markers.
    let top = if title == ACCURACY && hi <= 100.0 {
        (hi + pad).min(100.5)
    } else {
        hi + pad
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, lo - pad..top)?;
    let integer = |v: &f64| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(title)
        .x_label_formatter(&integer)
        // Long runs' epoch numbers are wide: fewer labels, so that they never overlap.
        .x_labels(if last >= 1e4 {
            5
        } else {
            last.min(10.0) as usize + 1
        })
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for &(name, colour, ref points) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                // Thick lines are polygons that plotters does not clip to the chart: a dense
                // zig-zag of thousands of them spills over the axes.
                colour.stroke_width(if points.len() <= 200 { 2 } else { 1 }),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2))
            });
        if points.len() <= 60 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    let corner = if title == "loss" {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::LowerRight
    };
    chart
        .configure_series_labels()
        .position(corner)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
}

/// The most points a curve is drawn with: two per pixel column of a panel.
const MAX_POINTS: usize = 1024;

/// `points` (in epoch order) reduced to at most [`MAX_POINTS`]: the lowest and highest point
/// of each run of consecutive points, in order, so that the drawn line keeps every extreme a
/// pixel column would show. Drawing millions of epochs point by point took minutes.
fn envelope(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let per_bucket = points.len().div_ceil(MAX_POINTS / 2);
    let mut out = Vec::with_capacity(MAX_POINTS);
    for bucket in points.chunks(per_bucket) {
        let by_value = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let low = bucket.iter().min_by(by_value).expect("a bucket has points");
        let high = bucket.iter().max_by(by_value).expect("a bucket has points");
        match low.0 <= high.0 {
            true => out.extend([*low, *high]),
            false => out.extend([*high, *low]),
        }
    }
    out
}

/// The largest finite values a curve's axis shows: beyond them the axis arithmetic (the span,
/// its padding and tick steps) would overflow. Larger values are drawn at the edge.
const AXIS_LIMIT: f64 = 1e300;

/// The lowest and highest of `values` (finite, at least one), within [`AXIS_LIMIT`].
fn value_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    (
        lo.clamp(-AXIS_LIMIT, AXIS_LIMIT),
        hi.clamp(-AXIS_LIMIT, AXIS_LIMIT),
    )
}

/// Decision regions as coloured cells and the data as outlined dots, with the legend in a strip
/// of its own at the right so that it never hides a point.
fn regions<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, b: &Boundary) -> DrawResult<DB> {
    let (width, _) = root.dim_in_pixel();
    let (plot, strip) = root.split_horizontally(width.saturating_sub(LEGEND_WIDTH));
    let mut chart = ChartBuilder::on(&plot)
        .caption(&b.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(b.x.clone(), b.y.clone())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(b.axes[0].as_str())
        .y_desc(b.axes[1].as_str())
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .draw()?;
    let step = |r: &Range<f64>| (r.end - r.start) / b.cells as f64;
    let (dx, dy) = (step(&b.x), step(&b.y));
    chart.draw_series(b.colours.iter().enumerate().map(|(i, &c)| {
        let (col, row) = ((i % b.cells) as f64, (i / b.cells) as f64);
        let corner = (b.x.start + col * dx, b.y.start + row * dy);
        Rectangle::new([corner, (corner.0 + dx, corner.1 + dy)], c.filled())
    }))?;
    let radius = if b.points.len() > 500 { 3 } else { 5 };
    chart.draw_series(
        b.points
            .iter()
            .map(|&(p, c)| Circle::new(p, radius, c.filled())),
    )?;
    chart.draw_series(
        b.points
            .iter()
            .map(|&(p, _)| Circle::new(p, radius, RGBColor(40, 40, 40).stroke_width(1))),
    )?;
    let font = ("sans-serif", 16).into_font();
    for (i, (name, colour)) in b.legend.iter().enumerate() {
        let y = 70 + 28 * i as i32;
        strip.draw(&Circle::new((16, y), 7, colour.filled()))?;
        strip.draw(&Text::new(name.as_str(), (30, y - 9), font.clone()))?;
    }
    Ok(())
}

/// Pixels to the right of a decision-boundary plot for its legend.
const LEGEND_WIDTH: u32 = 110;
