//! MER-OV (MER2024) set-level scores: per sample `acc = |G∩P| / |P|`, `recall = |G∩P| / |G|` (an empty
//! prediction scores 0, 0), averaged over samples; the reported score is their mean. Synonyms are merged
//! first by a [`Grouping`] (the reference asks GPT-3.5 to group the union of both sets; every word then
//! stands for the first word of its group).

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

/// Maps the words of one sample (ground truth ∪ prediction) to group representatives.
pub trait Grouping {
    fn group(&self, words: &[String]) -> HashMap<String, String>;
}

/// Every word is its own group (exact match after lower-casing and trimming).
pub struct Exact;

impl Grouping for Exact {
    fn group(&self, words: &[String]) -> HashMap<String, String> {
        words.iter().map(|w| (w.clone(), w.clone())).collect()
    }
}

/// Groups given as lists of synonyms (e.g. a judge's reply or the reference's `openset-synonym` file):
/// each word maps to the first word of its group; words in no group stand for themselves.
pub struct Synonyms(pub Vec<Vec<String>>);

impl Grouping for Synonyms {
    fn group(&self, words: &[String]) -> HashMap<String, String> {
        let mut rep: HashMap<String, String> = HashMap::new();
        for g in &self.0 {
            if let Some(first) = g.first() {
                for w in g {
                    rep.entry(norm(w)).or_insert_with(|| norm(first));
                }
            }
        }
        words.iter().map(|w| (w.clone(), rep.get(w).cloned().unwrap_or_else(|| w.clone()))).collect()
    }
}

fn norm(w: &str) -> String {
    w.trim().to_lowercase()
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct OvScores {
    pub ov_accuracy: f64,
    pub ov_recall: f64,
    pub ov_average: f64,
}

/// Scores predicted label sets against ground-truth sets (same order).
pub fn ov_scores(gt: &[Vec<String>], pred: &[Vec<String>], grouping: &dyn Grouping) -> OvScores {
    let n = gt.len().min(pred.len());
    if n == 0 {
        return OvScores { ov_accuracy: 0.0, ov_recall: 0.0, ov_average: 0.0 };
    }
    let (mut acc, mut rec) = (0.0, 0.0);
    for (g, p) in gt.iter().zip(pred).take(n) {
        let words: Vec<String> = g.iter().chain(p).map(|w| norm(w)).collect::<BTreeSet<_>>().into_iter().collect();
        let map = grouping.group(&words);
        let to_set = |v: &Vec<String>| -> BTreeSet<String> { v.iter().map(|w| norm(w)).map(|w| map.get(&w).cloned().unwrap_or(w)).collect() };
        let (gs, ps) = (to_set(g), to_set(p));
        if ps.is_empty() {
            continue;
        }
        let inter = gs.intersection(&ps).count() as f64;
        acc += inter / ps.len() as f64;
        if !gs.is_empty() {
            rec += inter / gs.len() as f64;
        }
    }
    let (a, r) = (acc / n as f64, rec / n as f64);
    OvScores { ov_accuracy: a, ov_recall: r, ov_average: (a + r) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn synonym_groups_merge_before_counting() {
        let gt = vec![v(&["happy", "excited"]), v(&["sad"])];
        let pred = vec![v(&["Joyful"]), v(&[])];
        assert_eq!(ov_scores(&gt, &pred, &Exact).ov_accuracy, 0.0);
        let g = Synonyms(vec![v(&["happy", "joyful"])]);
        let s = ov_scores(&gt, &pred, &g);
        assert_eq!((s.ov_accuracy, s.ov_recall), (0.5, 0.25));
    }
}
