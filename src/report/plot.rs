//! The report's line charts, drawn with plotters into an RGB buffer and encoded as PNG.
//!
//! Text goes through plotters' `ab_glyph` backend, which draws only fonts registered at run time: DejaVu
//! Sans (Debian's `fonts-dejavu-core`) or the file named by `EMOLLAMA_FONT`. That keeps the build free of
//! font-kit and fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::ReportError;
use super::log::{RunLog, ValidationPoint};

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;

/// Where DejaVu Sans is on Debian and Ubuntu.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Environment variable naming another .ttf/.otf file to draw text with.
pub const FONT_ENV: &str = "EMOLLAMA_FONT";

/// The family every chart asks for; the loaded font is registered under it.
const FAMILY: &str = "sans-serif";

/// Colours by stage index (matplotlib's tab10, so the plots read like the usual training curves).
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
const SEPARATOR: RGBColor = RGBColor(170, 170, 170);
const BEST: RGBColor = RGBColor(200, 0, 0);

/// The colour of a stage in every chart.
pub fn stage_color(stage_index: usize) -> RGBColor {
    PALETTE[stage_index % PALETTE.len()]
}

/// The font file to use: `EMOLLAMA_FONT` if set, else DejaVu Sans.
pub fn font_path() -> PathBuf {
    match std::env::var_os(FONT_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(DEFAULT_FONT),
    }
}

/// The font registered with plotters so far (plotters keeps fonts for the whole process).
static REGISTERED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Registers the font once per process; later calls reuse it (a changed `EMOLLAMA_FONT` is not reloaded).
pub fn ensure_font() -> Result<(), ReportError> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if registered.is_some() {
        return Ok(());
    }
    let path = font_path();
    let bytes = load_font(&path)?;
    // plotters wants `'static` font data; this happens once per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| ReportError::FontInvalid { path: path.clone() })?;
    *registered = Some(path);
    Ok(())
}

/// Reads a font file, checking it looks like TrueType/OpenType before it is handed to plotters.
pub fn load_font(path: &Path) -> Result<Vec<u8>, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ReportError::FontMissing { path: path.to_path_buf() },
        _ => ReportError::Read { path: path.to_path_buf(), source },
    })?;
    let magic = bytes.get(..4).unwrap_or_default();
    if ![&[0, 1, 0, 0][..], b"OTTO", b"true", b"ttcf"].contains(&magic) {
        return Err(ReportError::FontInvalid { path: path.to_path_buf() });
    }
    Ok(bytes)
}

/// One coloured line of a chart.
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows.
pub struct Chart {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Global steps where a stage starts (after the first), drawn as vertical lines.
    pub separators: Vec<f64>,
    /// A highlighted point and its legend text.
    pub marker: Option<((f64, f64), String)>,
    /// Draw a dot at every point (sparse series such as validation).
    pub dots: bool,
    pub y_format: Format,
    pub legend: SeriesLabelPosition,
}

/// How the y axis labels numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    /// Decimals enough to tell the ticks of the axis's span apart.
    Fixed,
    /// `2.0e-4`: learning rates.
    Scientific,
}

impl Format {
    fn label(self, v: f64, span: f64) -> String {
        match self {
            Format::Scientific if v == 0.0 => "0".into(),
            Format::Scientific => format!("{v:.1e}"),
            Format::Fixed => {
                // plotters puts about ten ticks over `span`: as many decimals as their spacing needs.
                let decimals = (-(span / 10.0).log10().floor()).clamp(0.0, 6.0) as usize;
                format!("{v:.decimals$}")
            }
        }
    }
}

/// Training loss per stage against the global step.
pub fn loss_chart(log: &RunLog) -> Chart {
    Chart {
        title: "Training loss".into(),
        y_label: "loss".into(),
        series: train_series(log, |p| p.loss),
        separators: separators(log),
        marker: None,
        dots: false,
        y_format: Format::Fixed,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// Learning rate per stage against the global step.
pub fn lr_chart(log: &RunLog) -> Chart {
    Chart {
        title: "Learning rate".into(),
        y_label: "learning rate".into(),
        series: train_series(log, |p| p.lr),
        separators: separators(log),
        marker: None,
        dots: false,
        y_format: Format::Scientific,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// The validation metric per stage, with the best point marked.
pub fn validation_chart(log: &RunLog, best: Option<&ValidationPoint>) -> Chart {
    let metric = log.validation.last().map_or("metric", |p| p.metric.as_str()).to_string();
    let mut series: Vec<Series> = Vec::new();
    for p in &log.validation {
        let Some(v) = p.value.filter(|v| v.is_finite()) else { continue };
        push_point(&mut series, &p.stage, p.stage_index, (p.global_step as f64, v));
    }
    let marker = best.and_then(|b| {
        let v = b.value.filter(|v| v.is_finite())?;
        Some(((b.global_step as f64, v), format!("best {v:.4} at step {}", b.global_step)))
    });
    Chart {
        title: format!("Validation {metric}"),
        y_label: metric,
        series,
        separators: separators(log),
        marker,
        dots: true,
        y_format: Format::Fixed,
        // Metrics mostly rise, leaving the upper left empty.
        legend: SeriesLabelPosition::UpperLeft,
    }
}

/// One series per stage of the finite values `value` picks from each training point.
fn train_series(log: &RunLog, value: impl Fn(&super::log::TrainPoint) -> Option<f64>) -> Vec<Series> {
    let mut series = Vec::new();
    for p in &log.train {
        if let Some(v) = value(p).filter(|v| v.is_finite()) {
            push_point(&mut series, &p.stage, p.stage_index, (p.global_step as f64, v));
        }
    }
    series
}

/// Appends to the stage's series (points arrive sorted by global step, so a stage's points are contiguous).
fn push_point(series: &mut Vec<Series>, stage: &str, stage_index: usize, point: (f64, f64)) {
    let color = stage_color(stage_index);
    match series.last_mut() {
        Some(s) if s.color == color && s.name == stage => s.points.push(point),
        _ => series.push(Series { name: stage.to_string(), color, points: vec![point] }),
    }
}

/// The global step just before each stage after the first starts.
fn separators(log: &RunLog) -> Vec<f64> {
    log.stages().iter().skip(1).map(|s| s.first_global_step as f64 - 0.5).collect()
}

/// Whether the chart has anything to draw.
pub fn has_points(chart: &Chart) -> bool {
    chart.series.iter().any(|s| !s.points.is_empty())
}

/// Draws the chart into an RGB buffer of `WIDTH` x `HEIGHT` pixels.
pub fn render(chart: &Chart) -> Result<Vec<u8>, String> {
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (WIDTH, HEIGHT)).map_err(|e| e.to_string())?;
        let root = backend.into_drawing_area();
        draw(&root, chart).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static, RGBPixel> as DrawingBackend>::ErrorType>>;

fn draw(root: &DrawingArea<BitMapBackend<'_, RGBPixel>, Shift>, chart: &Chart) -> DrawResult {
    root.fill(&WHITE)?;
    let (x_range, y_range) = ranges(chart);
    let (y0, y1) = (y_range.start, y_range.end);
    let span = y1 - y0;
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, (FAMILY, 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(76)
        .build_cartesian_2d(x_range, y_range)?;
    ctx.configure_mesh()
        .x_desc("global step")
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| chart.y_format.label(*v, span))
        .label_style((FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for &x in &chart.separators {
        ctx.draw_series(DashedLineSeries::new([(x, y0), (x, y1)], 6, 4, SEPARATOR.stroke_width(1)))?;
    }
    for s in &chart.series {
        let color = s.color;
        ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if chart.dots || s.points.len() == 1 {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    if let Some((point, text)) = &chart.marker {
        ctx.draw_series(std::iter::once(Circle::new(*point, 8, BEST.stroke_width(2))))?
            .label(text.as_str())
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BEST.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .position(chart.legend.clone())
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

/// Axis ranges covering every point with a margin; never empty, so a single point still gets axes.
fn ranges(chart: &Chart) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = if y_max > y_min { (y_max - y_min) * 0.05 } else { y_max.abs().max(1.0) * 0.05 };
    (0.0..x_max * 1.02, (y_min - pad)..(y_max + pad))
}

/// Encodes an RGB buffer as PNG.
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::log::parse_log;

    #[test]
    fn report_plot_missing_font_names_the_package() {
        let err = load_font(Path::new("/nonexistent/emollama-font.ttf")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/emollama-font.ttf") && msg.contains("fonts-dejavu-core") && msg.contains(FONT_ENV), "{msg}");
    }

    #[test]
    fn report_plot_rejects_a_file_that_is_not_a_font() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("font.ttf");
        std::fs::write(&path, b"<html>").unwrap();
        assert!(matches!(load_font(&path), Err(ReportError::FontInvalid { .. })));
    }

    #[test]
    fn report_plot_series_split_by_stage_and_skip_non_finite() {
        let log = parse_log(
            r#"{"kind":"train","stage":"a","stage_index":0,"step":1,"global_step":1,"loss":2.0,"lr":0.1}
{"kind":"train","stage":"a","stage_index":0,"step":2,"global_step":2,"loss":null,"lr":0.1}
{"kind":"train","stage":"b","stage_index":1,"step":1,"global_step":3,"loss":1.0,"lr":0.01}"#,
        );
        let chart = loss_chart(&log);
        let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(chart.series[0].points, [(1.0, 2.0)]);
        assert_eq!(chart.separators, [2.5]);
        assert_eq!(lr_chart(&log).series[0].points.len(), 2);
    }

    #[test]
    fn report_plot_ranges_are_never_empty() {
        let flat = Chart {
            title: String::new(),
            y_label: String::new(),
            series: vec![Series { name: "a".into(), color: stage_color(0), points: vec![(5.0, 0.0)] }],
            separators: vec![],
            marker: None,
            dots: true,
            y_format: Format::Fixed,
            legend: SeriesLabelPosition::UpperRight,
        };
        let (x, y) = ranges(&flat);
        assert!(x.start < x.end && y.start < y.end, "{x:?} {y:?}");
    }

    #[test]
    fn report_plot_axis_labels_fit_the_span() {
        assert_eq!(Format::Fixed.label(8.0, 8.5), "8.0");
        assert_eq!(Format::Fixed.label(0.25, 0.8), "0.25");
        assert_eq!(Format::Fixed.label(0.984, 0.02), "0.984");
        assert_eq!(Format::Fixed.label(500.0, 1000.0), "500");
        assert_eq!(Format::Scientific.label(2e-4, 1e-3), "2.0e-4");
        assert_eq!(Format::Scientific.label(0.0, 1e-3), "0");
    }

    #[test]
    fn report_plot_png_round_trips() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect();
        let bytes = encode_png(&rgb, 4, 3).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut out = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut out).unwrap();
        assert_eq!((info.width, info.height), (4, 3));
        assert_eq!(&out[..info.buffer_size()], &rgb[..]);
    }
}
