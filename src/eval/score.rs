//! `emollama score`: existing predictions against labels, no model. Both files are MER CSVs (`name,
//! discrete[, valence]` or `name, openset`), or the predictions are emollama's `predictions.jsonl`.
//! Labels without a prediction count as wrong (`<missing>`), predictions without a label are ignored; both
//! are counted in the output.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Value, json};

use super::metrics::{self, classification_report};
use super::openset::{Exact, Grouping, ov_scores};
use crate::data::sources::SourceError;
use crate::data::sources::table::{parse_list_string, read_csv_file};

/// The prediction a label row gets when the predictions file has none.
pub const MISSING: &str = "<missing>";

/// MER's six classes in their fixed order; used when the labels use no other word.
pub const MER6: [&str; 6] = ["neutral", "angry", "happy", "sad", "worried", "surprise"];

/// Every metric `emollama score` computes: the discrete ones, valence MSE and MER2023's overall score,
/// MER-OV set accuracy / recall / average (exact words), and the emotion-wheel F1.
pub const METRICS: [&str; 14] = [
    "accuracy",
    "weighted_f1",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "uar",
    "war",
    "confusion_matrix",
    "valence_mse",
    "mer2023_overall",
    "ov_accuracy",
    "ov_recall",
    "ov_average",
    "ew_f1",
];

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file} line {line}: {message}")]
    Row { file: String, line: usize, message: String },
    /// A CSV row or header that cannot be read (names the file and line).
    #[error(transparent)]
    Table(#[from] SourceError),
    #[error("unknown metric `{0}` (known: {known})", known = METRICS.join(", "))]
    Metric(String),
}

/// One row of a labels or predictions file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub name: String,
    pub discrete: Option<String>,
    pub valence: Option<f64>,
    pub openset: Option<Vec<String>>,
}

/// Reads a MER CSV or a `predictions.jsonl` (by extension).
pub fn read_rows(path: &Path) -> Result<Vec<Row>, ScoreError> {
    let file = path.display().to_string();
    let unreadable = |message: String| ScoreError::File { file: file.clone(), message: format!("{message}; expected a MER CSV (name, discrete, valence) or predictions.jsonl") };
    let row_err = |line: usize, message: String| ScoreError::Row { file: file.clone(), line, message };
    if path.extension().is_some_and(|e| e == "jsonl") {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        let mut out = Vec::new();
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(l).map_err(|e| row_err(i + 1, e.to_string()))?;
            let name = v.get("id").or_else(|| v.get("name")).and_then(Value::as_str).ok_or_else(|| row_err(i + 1, "no `id`".into()))?;
            let discrete = v.get("prediction").or_else(|| v.get("discrete")).and_then(Value::as_str).map(str::to_string);
            let openset = v.get("openset").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(|s| s.trim().to_lowercase()).collect());
            out.push(Row { name: name.to_string(), discrete, valence: v.get("valence").and_then(Value::as_f64), openset });
        }
        return Ok(out);
    }
    let t = read_csv_file(path).map_err(|e| match e {
        SourceError::Read { message, .. } => unreadable(message),
        other => other.into(),
    })?;
    let name = t.require(&["name", "names"])?;
    let (discrete, valence, openset) = (t.col(&["discrete"]), t.col(&["valence"]), t.col(&["openset"]));
    if discrete.is_none() && openset.is_none() {
        return Err(t.err(1, format!("no `discrete` or `openset` column (columns: {})", t.headers.join(", "))).into());
    }
    let mut out = Vec::new();
    for (line, rec) in &t.rows {
        let cell = |c: Option<usize>| c.map(|c| rec[c].as_str()).filter(|s| !s.is_empty());
        let valence = match cell(valence) {
            Some(v) => Some(v.parse::<f64>().map_err(|_| t.err(*line, format!("valence `{v}` is not a number")))?),
            None => None,
        };
        let openset = match cell(openset) {
            Some(s) => Some(parse_list_string(s).map_err(|m| t.err(*line, m))?),
            None => openset.map(|_| Vec::new()),
        };
        out.push(Row { name: rec[name].clone(), discrete: cell(discrete).map(|s| s.to_lowercase()), valence, openset });
    }
    Ok(out)
}

/// Scores `pred` against `labels`; `wanted` empty = every metric the files allow. Returns one JSON object
/// keyed by metric name, plus `n`, `missing`, `extra` and, for the confusion matrix, `labels`.
pub fn score(labels: &[Row], pred: &[Row], wanted: &[String]) -> Result<BTreeMap<String, Value>, ScoreError> {
    score_with(labels, pred, wanted, &Exact)
}

/// [`score`] with a synonym grouping for the MER-OV scores (e.g. a judge's, see `judge::JudgeGrouping`).
pub fn score_with(labels: &[Row], pred: &[Row], wanted: &[String], grouping: &dyn Grouping) -> Result<BTreeMap<String, Value>, ScoreError> {
    for w in wanted {
        if !METRICS.contains(&w.as_str()) {
            return Err(ScoreError::Metric(w.clone()));
        }
    }
    let want = |m: &str| wanted.is_empty() || wanted.iter().any(|w| w == m);
    let by_name: HashMap<&str, &Row> = pred.iter().map(|r| (r.name.as_str(), r)).collect();
    let label_names: std::collections::HashSet<&str> = labels.iter().map(|r| r.name.as_str()).collect();
    let mut out = BTreeMap::new();
    let missing = labels.iter().filter(|r| !by_name.contains_key(r.name.as_str())).count();
    out.insert("n".into(), json!(labels.len()));
    out.insert("missing".into(), json!(missing));
    out.insert("extra".into(), json!(pred.iter().filter(|r| !label_names.contains(r.name.as_str())).count()));

    let discrete: Vec<&Row> = labels.iter().filter(|r| r.discrete.is_some()).collect();
    if !discrete.is_empty() {
        let truth: Vec<String> = discrete.iter().filter_map(|r| r.discrete.clone()).collect();
        let guess: Vec<String> = discrete.iter().map(|r| by_name.get(r.name.as_str()).and_then(|p| p.discrete.clone()).unwrap_or_else(|| MISSING.into())).collect();
        let order: Vec<&str> = if truth.iter().all(|t| MER6.contains(&t.as_str())) { MER6.to_vec() } else { Vec::new() };
        let rep = classification_report(&truth, &guess, &order);
        for (k, v) in [
            ("accuracy", rep.accuracy),
            ("weighted_f1", rep.weighted_f1),
            ("macro_f1", rep.macro_f1),
            ("weighted_precision", rep.weighted_precision),
            ("weighted_recall", rep.weighted_recall),
            ("uar", rep.uar),
            ("war", rep.war),
        ] {
            if want(k) {
                out.insert(k.into(), json!(v));
            }
        }
        if want("confusion_matrix") {
            out.insert("confusion_matrix".into(), json!(rep.confusion_matrix));
            out.insert("labels".into(), json!(rep.labels));
            out.insert("per_class".into(), json!(rep.per_class));
        }
        // Valence: every labelled valence needs a predicted one, else it is not scored (and said so).
        let pairs: Vec<(f64, Option<f64>)> = discrete.iter().filter_map(|r| r.valence.map(|v| (v, by_name.get(r.name.as_str()).and_then(|p| p.valence)))).collect();
        if !pairs.is_empty() && (want("valence_mse") || want("mer2023_overall")) {
            let unpredicted = pairs.iter().filter(|(_, p)| p.is_none()).count();
            if unpredicted == 0 {
                let (t, p): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(t, p)| (*t, p.unwrap_or_default())).unzip();
                let mse = metrics::valence_mse(&t, &p);
                if want("valence_mse") {
                    out.insert("valence_mse".into(), json!(mse));
                }
                if want("mer2023_overall") {
                    out.insert("mer2023_overall".into(), json!(metrics::mer2023_overall(rep.weighted_f1, mse)));
                }
            } else {
                out.insert("valence_unpredicted".into(), json!(unpredicted));
            }
        }
    }
    let ov: Vec<&Row> = labels.iter().filter(|r| r.openset.as_ref().is_some_and(|s| !s.is_empty())).collect();
    if !ov.is_empty() && (want("ov_accuracy") || want("ov_recall") || want("ov_average")) {
        let gt: Vec<Vec<String>> = ov.iter().filter_map(|r| r.openset.clone()).collect();
        let p: Vec<Vec<String>> = ov.iter().map(|r| by_name.get(r.name.as_str()).and_then(|p| p.openset.clone()).unwrap_or_default()).collect();
        let s = ov_scores(&gt, &p, grouping);
        for (k, v) in [("ov_accuracy", s.ov_accuracy), ("ov_recall", s.ov_recall), ("ov_average", s.ov_average)] {
            if want(k) {
                out.insert(k.into(), json!(v));
            }
        }
    }
    if !ov.is_empty() && want("ew_f1") {
        let gt: Vec<Vec<String>> = ov.iter().filter_map(|r| r.openset.clone()).collect();
        let p: Vec<Vec<String>> = ov.iter().map(|r| by_name.get(r.name.as_str()).and_then(|p| p.openset.clone()).unwrap_or_default()).collect();
        let wheel = super::wheel::EmotionWheel::builtin().map_err(|e| ScoreError::File { file: "assets/emotion-wheel/wheel_mapping.json".into(), message: e.to_string() })?;
        let s = wheel.scores(&gt, &p);
        out.insert("ew_f1".into(), json!(s.ew_f1));
        out.insert("ew_level1".into(), json!(s.level1));
        out.insert("ew_level2".into(), json!(s.level2));
    }
    Ok(out)
}
