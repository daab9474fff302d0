//! Classification metrics with scikit-learn's definitions (zero_division = 0).

use serde::Serialize;

/// Metrics a recipe's evaluation reports (`eval.metrics`).
pub const NAMES: [&str; 8] = ["accuracy", "weighted_f1", "macro_f1", "weighted_precision", "weighted_recall", "uar", "war", "confusion_matrix"];

/// Per-class precision / recall / F1 and support.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub n: usize,
    pub accuracy: f64,
    pub weighted_f1: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    /// Unweighted average recall (DFEW): mean recall over the classes present in the truth
    /// (sklearn's `balanced_accuracy_score`).
    pub uar: f64,
    /// Weighted average recall (DFEW): the accuracy.
    pub war: f64,
    /// Rows: true label, columns: predicted label, both in `labels` order.
    pub labels: Vec<String>,
    pub confusion_matrix: Vec<Vec<usize>>,
    pub per_class: Vec<ClassScore>,
}

/// Scores `pred` against `truth`. `labels` orders the matrix; labels seen in the data but missing from
/// `labels` are appended (sorted), as sklearn does with the union of labels.
pub fn classification_report(truth: &[String], pred: &[String], labels: &[&str]) -> Report {
    let mut order: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    let mut extra: Vec<String> = truth.iter().chain(pred).filter(|l| !order.contains(l)).cloned().collect();
    extra.sort();
    extra.dedup();
    order.extend(extra);
    let k = order.len();
    let idx = |l: &String| order.iter().position(|o| o == l).unwrap_or(0);
    let mut cm = vec![vec![0usize; k]; k];
    for (t, p) in truth.iter().zip(pred) {
        cm[idx(t)][idx(p)] += 1;
    }
    let n = truth.len().min(pred.len());
    let correct: usize = (0..k).map(|i| cm[i][i]).sum();
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let per_class: Vec<ClassScore> = (0..k)
        .map(|i| {
            let tp = cm[i][i] as f64;
            let support: usize = cm[i].iter().sum();
            let predicted: usize = (0..k).map(|r| cm[r][i]).sum();
            let precision = div(tp, predicted as f64);
            let recall = div(tp, support as f64);
            ClassScore { label: order[i].clone(), precision, recall, f1: div(2.0 * precision * recall, precision + recall), support }
        })
        .collect();
    // sklearn's macro average runs over labels present in truth or prediction.
    let present: Vec<&ClassScore> =
        per_class.iter().enumerate().filter(|(i, c)| c.support > 0 || (0..k).any(|r| cm[r][*i] > 0)).map(|(_, c)| c).collect();
    let weighted = |f: fn(&ClassScore) -> f64| div(per_class.iter().map(|c| f(c) * c.support as f64).sum(), n as f64);
    let in_truth: Vec<&ClassScore> = per_class.iter().filter(|c| c.support > 0).collect();
    let accuracy = div(correct as f64, n as f64);
    Report {
        n,
        accuracy,
        weighted_f1: weighted(|c| c.f1),
        macro_f1: div(present.iter().map(|c| c.f1).sum(), present.len() as f64),
        weighted_precision: weighted(|c| c.precision),
        weighted_recall: weighted(|c| c.recall),
        uar: div(in_truth.iter().map(|c| c.recall).sum(), in_truth.len() as f64),
        war: accuracy,
        labels: order,
        confusion_matrix: cm,
        per_class,
    }
}

/// Mean squared error of the valence predictions.
pub fn valence_mse(truth: &[f64], pred: &[f64]) -> f64 {
    let n = truth.len().min(pred.len());
    if n == 0 {
        return 0.0;
    }
    truth.iter().zip(pred).map(|(t, p)| (t - p) * (t - p)).sum::<f64>() / n as f64
}

/// MER2023's combined score for MER-MULTI / MER-NOISE: `WAF − 0.25 · valence MSE` (`overall_metric`).
pub fn mer2023_overall(weighted_f1: f64, valence_mse: f64) -> f64 {
    weighted_f1 - 0.25 * valence_mse
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn matches_sklearn_on_a_hand_checked_case() {
        // sklearn: f1_score(y, p, average='weighted') = 0.5 ; macro = 0.4444...; accuracy = 0.5
        let y = s(&["a", "a", "b", "b", "c", "c"]);
        let p = s(&["a", "b", "b", "b", "a", "c"]);
        let r = classification_report(&y, &p, &["a", "b", "c"]);
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // per class: a P=1/2 R=1/2 F=1/2; b P=2/3 R=1 F=0.8; c P=1 R=1/2 F=2/3
        assert!((r.weighted_f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((r.macro_f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((r.weighted_precision - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(r.confusion_matrix, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
    }

    #[test]
    fn unseen_prediction_labels_extend_the_matrix_and_count_as_errors() {
        let r = classification_report(&s(&["a", "b"]), &s(&["a", "zzz"]), &["a", "b"]);
        assert_eq!(r.labels, s(&["a", "b", "zzz"]));
        assert!((r.accuracy - 0.5).abs() < 1e-12);
        assert!((r.weighted_f1 - 0.5).abs() < 1e-12);
    }
}
