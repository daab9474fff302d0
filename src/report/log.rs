//! Reading `log.jsonl`: training and validation points keyed by global step.
//!
//! Lenient on purpose: the report is drawn while a run is still going (after each stage) and over logs of
//! older builds, so unknown fields are ignored, a torn last line is skipped, and missing `kind`,
//! `stage_index` or `global_step` are filled in from the file order.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// One logged optimiser step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPoint {
    pub stage: String,
    /// 0-based position of the stage in the recipe (or in the log, for logs that lack it).
    pub stage_index: usize,
    /// 1-based step within the stage.
    pub step: u64,
    /// 1-based step across the whole run.
    pub global_step: u64,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
}

/// One validation pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationPoint {
    pub stage: String,
    pub stage_index: usize,
    pub step: u64,
    pub global_step: u64,
    /// The metric `value` is (e.g. `weighted_f1`).
    pub metric: String,
    pub value: Option<f64>,
    pub accuracy: Option<f64>,
    /// The best checkpoint so far at this point.
    pub checkpoint: Option<String>,
}

/// A stage as the log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpan {
    pub stage: String,
    pub stage_index: usize,
    pub first_global_step: u64,
    pub last_global_step: u64,
    /// The highest step within the stage that was logged.
    pub last_step: u64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
}

/// Everything the report needs from `log.jsonl`, sorted by global step with one point per step and kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLog {
    pub train: Vec<TrainPoint>,
    pub validation: Vec<ValidationPoint>,
    /// Lines that were not JSON objects of the expected shape (e.g. one torn by a kill).
    pub skipped_lines: usize,
}

impl RunLog {
    /// The stages in order, from the training points.
    pub fn stages(&self) -> Vec<StageSpan> {
        let mut spans: Vec<StageSpan> = Vec::new();
        for p in &self.train {
            match spans.iter_mut().find(|s| s.stage_index == p.stage_index) {
                Some(s) => {
                    s.first_global_step = s.first_global_step.min(p.global_step);
                    s.last_global_step = s.last_global_step.max(p.global_step);
                    s.last_step = s.last_step.max(p.step);
                    s.final_loss = p.loss.or(s.final_loss);
                }
                None => spans.push(StageSpan {
                    stage: p.stage.clone(),
                    stage_index: p.stage_index,
                    first_global_step: p.global_step,
                    last_global_step: p.global_step,
                    last_step: p.step,
                    first_loss: p.loss,
                    final_loss: p.loss,
                }),
            }
        }
        spans.sort_by_key(|s| s.stage_index);
        spans
    }

    /// The best validation point: the first with the highest value, as the trainer picks it (a later
    /// point replaces the best only when strictly better).
    pub fn best_validation(&self) -> Option<&ValidationPoint> {
        let mut best: Option<&ValidationPoint> = None;
        for p in &self.validation {
            let Some(v) = p.value.filter(|v| v.is_finite()) else { continue };
            if best.and_then(|b| b.value).is_none_or(|b| v > b) {
                best = Some(p);
            }
        }
        best
    }
}

/// A log line as written by any version of the trainer; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLine {
    kind: Option<String>,
    stage: Option<String>,
    stage_index: Option<usize>,
    step: Option<u64>,
    global_step: Option<u64>,
    loss: Option<f64>,
    lr: Option<f64>,
    metric: Option<String>,
    value: Option<f64>,
    accuracy: Option<f64>,
    checkpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Train,
    Validation,
}

/// A parsed line with its stage resolved to an index.
struct Line {
    kind: Kind,
    stage_index: usize,
    raw: RawLine,
}

/// Parses the text of a `log.jsonl`. After a resume the same global step is logged again: the last line
/// for each (kind, global step) wins, since it is what the resumed run went on from.
pub fn parse_log(text: &str) -> RunLog {
    let (lines, skipped_lines) = read_lines(text);
    let offsets = stage_offsets(&lines);
    let mut train = BTreeMap::new();
    let mut validation = BTreeMap::new();
    for line in lines {
        let step = line.raw.step.unwrap_or(0);
        let global_step = line.raw.global_step.unwrap_or_else(|| offsets.get(&line.stage_index).copied().unwrap_or(0) + step);
        let stage = line.raw.stage.unwrap_or_else(|| format!("stage {}", line.stage_index + 1));
        match line.kind {
            Kind::Train => {
                let (loss, lr) = (line.raw.loss, line.raw.lr);
                train.insert(global_step, TrainPoint { stage, stage_index: line.stage_index, step, global_step, loss, lr });
            }
            Kind::Validation => {
                let point = ValidationPoint {
                    stage,
                    stage_index: line.stage_index,
                    step,
                    global_step,
                    metric: line.raw.metric.unwrap_or_else(|| "metric".into()),
                    value: line.raw.value,
                    accuracy: line.raw.accuracy,
                    checkpoint: line.raw.checkpoint,
                };
                validation.insert(global_step, point);
            }
        }
    }
    RunLog { train: train.into_values().collect(), validation: validation.into_values().collect(), skipped_lines }
}

/// Decodes each non-empty line; counts the ones that are not objects of the expected shape. Lines of an
/// unknown `kind` are neither kept nor counted (a newer trainer may log other events).
fn read_lines(text: &str) -> (Vec<Line>, usize) {
    let mut skipped = 0;
    let mut lines = Vec::new();
    // Logs without `stage_index` number stages by first appearance.
    let mut seen_stages: Vec<String> = Vec::new();
    for text in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Ok(raw) = serde_json::from_str::<RawLine>(text) else {
            skipped += 1;
            continue;
        };
        let kind = match raw.kind.as_deref() {
            None | Some("train") => Kind::Train,
            Some("validation") => Kind::Validation,
            Some(_) => continue,
        };
        if raw.step.is_none() && raw.global_step.is_none() {
            skipped += 1;
            continue;
        }
        let name = raw.stage.clone().unwrap_or_default();
        let stage_index = raw.stage_index.unwrap_or_else(|| match seen_stages.iter().position(|s| *s == name) {
            Some(i) => i,
            None => {
                seen_stages.push(name);
                seen_stages.len() - 1
            }
        });
        lines.push(Line { kind, stage_index, raw });
    }
    (lines, skipped)
}

/// The global step before each stage's first step, for lines without `global_step`: the steps of all
/// earlier stages, taken as the highest step logged in each (the trainer always logs a stage's last step).
fn stage_offsets(lines: &[Line]) -> HashMap<usize, u64> {
    let mut last_step: BTreeMap<usize, u64> = BTreeMap::new();
    for line in lines {
        let e = last_step.entry(line.stage_index).or_default();
        *e = (*e).max(line.raw.step.unwrap_or(0));
    }
    let mut offsets = HashMap::new();
    let mut total = 0;
    for (stage, steps) in last_step {
        offsets.insert(stage, total);
        total += steps;
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_log_keeps_the_last_line_per_global_step() {
        let text = r#"{"kind":"train","stage":"a","stage_index":0,"step":1,"global_step":1,"loss":3.0,"lr":0.1}
{"kind":"train","stage":"a","stage_index":0,"step":2,"global_step":2,"loss":2.0,"lr":0.1}
{"kind":"validation","stage":"a","stage_index":0,"step":2,"global_step":2,"metric":"weighted_f1","value":0.5}
{"kind":"train","stage":"a","stage_index":0,"step":2,"global_step":2,"loss":1.5,"lr":0.2}
{"kind":"validation","stage":"a","stage_index":0,"step":2,"global_step":2,"metric":"weighted_f1","value":0.6}
{"kind":"train","stage":"a","stage_index":0,"step":3,"global_step":3,"loss":1.0,"lr":0.2}
"#;
        let log = parse_log(text);
        let steps: Vec<u64> = log.train.iter().map(|p| p.global_step).collect();
        assert_eq!(steps, [1, 2, 3]);
        assert_eq!(log.train[1].loss, Some(1.5));
        assert_eq!(log.train[1].lr, Some(0.2));
        assert_eq!(log.validation.len(), 1);
        assert_eq!(log.validation[0].value, Some(0.6));
        assert_eq!(log.skipped_lines, 0);
    }

    #[test]
    fn report_log_fills_in_kind_stage_index_and_global_step_of_old_logs() {
        // An older log: no kind, stage_index or global_step; stage `b` follows `a`'s 3 steps.
        let text = r#"{"stage":"a","step":1,"loss":4.0,"lr":0.1}
{"stage":"a","step":3,"loss":3.0,"lr":0.1}
{"stage":"b","step":1,"loss":2.0,"lr":0.05}
{"stage":"b","step":2,"loss":1.0,"lr":0.05}
"#;
        let log = parse_log(text);
        let got: Vec<(usize, u64)> = log.train.iter().map(|p| (p.stage_index, p.global_step)).collect();
        assert_eq!(got, [(0, 1), (0, 3), (1, 4), (1, 5)]);
        let stages = log.stages();
        assert_eq!(stages.len(), 2);
        assert_eq!((stages[1].stage.as_str(), stages[1].first_global_step, stages[1].last_global_step), ("b", 4, 5));
        assert_eq!((stages[0].first_loss, stages[0].final_loss), (Some(4.0), Some(3.0)));
    }

    #[test]
    fn report_log_skips_torn_and_foreign_lines() {
        let text = "{\"kind\":\"train\",\"stage\":\"a\",\"step\":1,\"global_step\":1,\"loss\":1.0,\"extra\":{\"x\":[1,2]}}\n\
                    not json\n{\"kind\":\"note\",\"step\":1}\n{\"kind\":\"train\",\"stage\":\"a\",\"step\":2,\"glo";
        let log = parse_log(text);
        assert_eq!(log.train.len(), 1);
        assert_eq!(log.skipped_lines, 2);
    }

    #[test]
    fn report_log_null_values_are_kept_as_missing() {
        // serde_json writes a NaN gradient norm or loss as null.
        let log = parse_log(r#"{"kind":"train","stage":"a","step":1,"global_step":1,"loss":null,"lr":0.1,"grad_norm":null}"#);
        assert_eq!(log.train[0].loss, None);
        assert_eq!(log.train[0].lr, Some(0.1));
    }

    #[test]
    fn report_log_best_validation_is_the_first_maximum() {
        let text = r#"{"kind":"validation","stage":"a","step":1,"global_step":1,"value":0.5}
{"kind":"validation","stage":"a","step":2,"global_step":2,"value":0.7,"checkpoint":"checkpoints/best-000002"}
{"kind":"validation","stage":"a","step":3,"global_step":3,"value":0.7}
{"kind":"validation","stage":"a","step":4,"global_step":4,"value":null}
"#;
        let log = parse_log(text);
        let best = log.best_validation().map(|p| p.global_step);
        assert_eq!(best, Some(2));
    }
}
