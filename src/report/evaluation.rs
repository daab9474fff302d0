//! The report of one evaluation (`emollama score --report DIR`): `metrics.json`, `confusion.png`,
//! `per_class.csv` and `index.html` tying them together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ReportError;
use super::confusion::confusion_png;
use super::html::escape;

fn write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    Ok(crate::storage::write_atomic(path, bytes)?)
}

/// Writes the report into `dir` (created); returns the files written.
pub fn write_evaluation_report(dir: &Path, title: &str, scores: &BTreeMap<String, Value>) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir { path: dir.to_path_buf(), source })?;
    let mut files = Vec::new();
    let metrics = dir.join("metrics.json");
    write(&metrics, &serde_json::to_vec_pretty(scores).unwrap_or_default())?;
    files.push(metrics);

    let labels: Vec<String> = scores.get("labels").and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default();
    let matrix: Vec<Vec<usize>> = scores
        .get("confusion_matrix")
        .and_then(Value::as_array)
        .map(|rows| rows.iter().map(|r| r.as_array().map(|c| c.iter().map(|x| x.as_u64().unwrap_or(0) as usize).collect()).unwrap_or_default()).collect())
        .unwrap_or_default();
    let mut h = String::new();
    h.push_str(&format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>{0}</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}</style></head><body><h1>{0}</h1>\n", escape(title)));
    h.push_str("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>\n");
    for (k, v) in scores {
        let shown = match v {
            Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or_default()),
            Value::Number(n) => n.to_string(),
            Value::String(s) => escape(s),
            _ => continue,
        };
        h.push_str(&format!("<tr><td>{}</td><td>{shown}</td></tr>\n", escape(k)));
    }
    h.push_str("</table>\n");
    if let Some(per_class) = scores.get("per_class").and_then(Value::as_array) {
        let mut csv = String::from("label,precision,recall,f1,support\n");
        h.push_str("<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>\n");
        for c in per_class {
            let f = |k: &str| c[k].as_f64().unwrap_or_default();
            let label = c["label"].as_str().unwrap_or_default();
            let support = c["support"].as_u64().unwrap_or_default();
            csv.push_str(&format!("{},{},{},{},{support}\n", if label.contains(',') { format!("\"{label}\"") } else { label.to_string() }, f("precision"), f("recall"), f("f1")));
            h.push_str(&format!("<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{support}</td></tr>\n", escape(label), f("precision"), f("recall"), f("f1")));
        }
        h.push_str("</table>\n");
        let path = dir.join("per_class.csv");
        write(&path, csv.as_bytes())?;
        files.push(path);
    }
    if !labels.is_empty() && matrix.len() == labels.len() {
        let png = confusion_png(&labels, &matrix, "confusion matrix (rows: true, columns: predicted)")?;
        let path = dir.join("confusion.png");
        write(&path, &png)?;
        files.push(path);
        h.push_str("<h2>Confusion matrix</h2><img src=\"confusion.png\" alt=\"confusion matrix\">\n");
    }
    h.push_str("</body></html>\n");
    let html = dir.join("index.html");
    write(&html, h.as_bytes())?;
    files.push(html);
    Ok(files)
}
