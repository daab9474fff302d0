//! The run report: `report/loss.png`, `report/lr.png`, `report/validation.png` and `report.html` in a run
//! directory, drawn from `log.jsonl` and (once the run has written it) `metrics.json`.
//!
//! Meant to be called after every stage, so it reads whatever is there: a log still growing or torn by a
//! kill, steps logged twice after a resume, no `metrics.json`, or one without an evaluation.

pub mod confusion;
pub mod evaluation;
pub mod face_sheet;
pub mod html;
pub mod log;
pub mod metrics;
pub mod plot;

use std::path::{Path, PathBuf};

pub use log::{RunLog, StageSpan, TrainPoint, ValidationPoint, parse_log};
pub use metrics::RunMetrics;

use metrics::BestMetrics;

/// Why a report could not be written; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("`{path}` not found: nothing to report. Pass a run directory written by `emollama run` (it writes log.jsonl from the first step)")]
    LogMissing { path: PathBuf },
    #[error("could not read `{path}`: {source}. Check the file's permissions")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not valid JSON ({source}). A run writes it atomically at its end, so it was edited or damaged: restore it, or move it away to report the curves alone")]
    Metrics { path: PathBuf, source: serde_json::Error },
    #[error("font `{path}` not found: the report's plots draw text with DejaVu Sans. Install fonts-dejavu-core (`just setup`), or set {} to a .ttf file", plot::FONT_ENV)]
    FontMissing { path: PathBuf },
    #[error("`{path}` is not a TrueType/OpenType font. Set {} to a .ttf file such as {} (fonts-dejavu-core)", plot::FONT_ENV, plot::DEFAULT_FONT)]
    FontInvalid { path: PathBuf },
    #[error("drawing `{path}` failed: {message}. This is a bug: please report it with the run's log.jsonl")]
    Plot { path: PathBuf, message: String },
    #[error("encoding `{path}` as PNG failed: {source}. This is a bug: please report it with the run's log.jsonl")]
    Png { path: PathBuf, source: png::EncodingError },
    #[error("could not write `{}`: {}. Check that the run directory is writable and the disk is not full", .0.path.display(), .0.source)]
    Write(#[from] crate::storage::WriteError),
    #[error("could not create `{path}`: {source}. Check that the run directory is writable")]
    CreateDir { path: PathBuf, source: std::io::Error },
}

/// The files a report wrote. A chart with nothing to draw (no validation yet) is not written.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub html: PathBuf,
    pub loss: Option<PathBuf>,
    pub lr: Option<PathBuf>,
    pub validation: Option<PathBuf>,
}

impl ReportFiles {
    /// Every path written, charts first.
    pub fn paths(&self) -> Vec<&Path> {
        [&self.loss, &self.lr, &self.validation].into_iter().flatten().map(PathBuf::as_path).chain([self.html.as_path()]).collect()
    }
}

/// Writes `run_dir/report/{loss,lr,validation}.png` and `run_dir/report.html`, each atomically.
pub fn write_report(run_dir: &Path) -> Result<ReportFiles, ReportError> {
    let log = read_log(run_dir)?;
    let metrics = read_metrics(run_dir)?;
    let best = best_point(&log, metrics.as_ref());
    let out_dir = run_dir.join("report");
    std::fs::create_dir_all(&out_dir).map_err(|source| ReportError::CreateDir { path: out_dir.clone(), source })?;

    let loss = write_chart(&out_dir.join("loss.png"), &plot::loss_chart(&log))?;
    let lr = write_chart(&out_dir.join("lr.png"), &plot::lr_chart(&log))?;
    let validation = write_chart(&out_dir.join("validation.png"), &plot::validation_chart(&log, best.as_ref()))?;

    // The final evaluation's confusion matrix as a heat map, once metrics.json has it.
    let confusion = match metrics.as_ref().and_then(|m| m.eval.as_ref()).filter(|e| !e.labels.is_empty() && e.confusion_matrix.len() == e.labels.len()) {
        Some(e) => {
            let matrix: Vec<Vec<usize>> = e.confusion_matrix.iter().map(|r| r.iter().map(|&x| x as usize).collect()).collect();
            let png = confusion::confusion_png(&e.labels, &matrix, "test confusion matrix (rows: true, columns: predicted)")?;
            let path = out_dir.join("confusion.png");
            write_file(&path, &png)?;
            Some(path)
        }
        None => None,
    };
    let mut images = Vec::new();
    for (caption, path) in [("Training loss", &loss), ("Learning rate", &lr), ("Validation", &validation), ("Confusion matrix", &confusion)] {
        if let Some(name) = path.as_deref().and_then(Path::file_name) {
            images.push((caption, format!("report/{}", name.to_string_lossy())));
        }
    }
    let run_name = run_dir.file_name().map_or_else(|| run_dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let recipe = metrics.as_ref().and_then(|m| m.recipe.clone()).or_else(|| recipe_name(run_dir));
    let page = html::Page {
        run_name: &run_name,
        recipe: recipe.as_deref(),
        log: &log,
        metrics: metrics.as_ref(),
        best: metrics.as_ref().and_then(|m| m.best.clone()).or_else(|| best.as_ref().map(best_from_log)),
        images,
        generated: chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
    };
    let html_path = run_dir.join("report.html");
    write_file(&html_path, html::render(&page).as_bytes())?;
    Ok(ReportFiles { html: html_path, loss, lr, validation })
}

/// Reads and parses `run_dir/log.jsonl`.
pub fn read_log(run_dir: &Path) -> Result<RunLog, ReportError> {
    let path = run_dir.join("log.jsonl");
    let text = std::fs::read(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ReportError::LogMissing { path: path.clone() },
        _ => ReportError::Read { path: path.clone(), source },
    })?;
    let log = parse_log(&String::from_utf8_lossy(&text));
    if log.skipped_lines > 0 {
        tracing::warn!(path = %path.display(), lines = log.skipped_lines, "unreadable log lines left out of the report");
    }
    Ok(log)
}

/// Reads `run_dir/metrics.json` if the run has written it.
pub fn read_metrics(run_dir: &Path) -> Result<Option<RunMetrics>, ReportError> {
    let path = run_dir.join("metrics.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReportError::Read { path, source }),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|source| ReportError::Metrics { path, source })?;
    Ok(Some(metrics::from_json(&value)))
}

/// The validation point to mark: the one `metrics.json` names as best, else the log's best.
fn best_point(log: &RunLog, metrics: Option<&RunMetrics>) -> Option<ValidationPoint> {
    let named = metrics.and_then(|m| m.best.as_ref()).and_then(|b| b.global_step);
    let from_metrics = named.and_then(|g| log.validation.iter().find(|p| p.global_step == g));
    from_metrics.or_else(|| log.best_validation()).cloned()
}

fn best_from_log(p: &ValidationPoint) -> BestMetrics {
    BestMetrics {
        stage: Some(p.stage.clone()),
        step: Some(p.step),
        global_step: Some(p.global_step),
        metric: Some(p.metric.clone()),
        value: p.value,
        checkpoint: p.checkpoint.clone(),
    }
}

/// The recipe's `name` from `recipe.resolved.toml`, for runs that have not written `metrics.json`.
fn recipe_name(run_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(run_dir.join("recipe.resolved.toml")).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value.get("name")?.as_str().map(str::to_string)
}

/// Draws and writes one chart; `None` (and nothing written) when it has no points.
fn write_chart(path: &Path, chart: &plot::Chart) -> Result<Option<PathBuf>, ReportError> {
    if !plot::has_points(chart) {
        return Ok(None);
    }
    plot::ensure_font()?;
    let rgb = plot::render(chart).map_err(|message| ReportError::Plot { path: path.to_path_buf(), message })?;
    let png = plot::encode_png(&rgb, plot::WIDTH, plot::HEIGHT).map_err(|source| ReportError::Png { path: path.to_path_buf(), source })?;
    write_file(path, &png)?;
    Ok(Some(path.to_path_buf()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    Ok(crate::storage::write_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_missing_log_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_report(dir.path()).unwrap_err();
        assert!(matches!(err, ReportError::LogMissing { .. }));
        assert!(err.to_string().contains(&dir.path().join("log.jsonl").display().to_string()), "{err}");
    }

    #[test]
    fn report_damaged_metrics_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("metrics.json"), "{\"eval\": ").unwrap();
        let err = write_report(dir.path()).unwrap_err();
        assert!(err.to_string().contains("metrics.json"), "{err}");
    }

    #[test]
    fn report_empty_log_writes_only_the_page() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.jsonl"), "").unwrap();
        let files = write_report(dir.path()).unwrap();
        assert_eq!(files.paths(), [dir.path().join("report.html").as_path()]);
        let html = std::fs::read_to_string(&files.html).unwrap();
        assert!(html.contains("No training steps logged yet"));
    }

    #[test]
    fn report_best_point_prefers_the_one_metrics_names() {
        let log = parse_log(
            r#"{"kind":"validation","stage":"a","step":1,"global_step":1,"value":0.9}
{"kind":"validation","stage":"a","step":2,"global_step":2,"value":0.8}"#,
        );
        assert_eq!(best_point(&log, None).map(|p| p.global_step), Some(1));
        let m = RunMetrics { best: Some(BestMetrics { global_step: Some(2), ..Default::default() }), ..Default::default() };
        assert_eq!(best_point(&log, Some(&m)).map(|p| p.global_step), Some(2));
    }
}
