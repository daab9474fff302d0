//! Reading `metrics.json` leniently: each section that is missing, null or of an unexpected shape is
//! treated as absent, so a report can still be drawn from the rest.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The parts of `metrics.json` the report shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMetrics {
    pub recipe: Option<String>,
    pub stages: Vec<StageMetrics>,
    pub eval: Option<EvalMetrics>,
    pub best: Option<BestMetrics>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StageMetrics {
    pub name: String,
    pub steps: Option<u64>,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub seconds: Option<f64>,
    pub checkpoint: Option<String>,
    pub stopped_early: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct EvalMetrics {
    pub split: Option<String>,
    pub task: Option<String>,
    pub unparsed: Option<u64>,
    pub n: Option<u64>,
    pub accuracy: Option<f64>,
    pub weighted_f1: Option<f64>,
    pub macro_f1: Option<f64>,
    pub weighted_precision: Option<f64>,
    pub weighted_recall: Option<f64>,
    pub labels: Vec<String>,
    /// Rows: true label; columns: predicted label.
    pub confusion_matrix: Vec<Vec<u64>>,
    pub per_class: Vec<ClassMetrics>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub support: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BestMetrics {
    pub stage: Option<String>,
    pub step: Option<u64>,
    pub global_step: Option<u64>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub checkpoint: Option<String>,
}

/// Reads the sections of a parsed `metrics.json`.
pub fn from_json(v: &serde_json::Value) -> RunMetrics {
    RunMetrics {
        recipe: v.get("recipe").and_then(|r| r.as_str()).map(str::to_string),
        stages: section(v, "stages").unwrap_or_default(),
        eval: section(v, "eval"),
        best: section(v, "best"),
    }
}

fn section<T: DeserializeOwned>(v: &serde_json::Value, key: &str) -> Option<T> {
    let s = v.get(key).filter(|s| !s.is_null())?;
    match serde_json::from_value(s.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(section = key, error = %e, "metrics.json: section has an unexpected shape; left out of the report");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_metrics_tolerates_missing_null_and_odd_sections() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"recipe":"r.toml","stages":[{"name":"a","steps":3,"extra":1}],"eval":null,"best":"odd","more":{}}"#,
        )
        .unwrap();
        let m = from_json(&v);
        assert_eq!(m.recipe.as_deref(), Some("r.toml"));
        assert_eq!(m.stages[0].steps, Some(3));
        assert!(m.eval.is_none() && m.best.is_none());
        assert_eq!(from_json(&serde_json::json!({})), RunMetrics::default());
    }
}
