//! MER2025/2026 emotion-wheel F1 (EW-F1) over open-vocabulary label sets (reference videollama2_mer.md §B.5).
//!
//! A word (lower-cased, trimmed) maps to its base words (`format_mapping`), those to wheel words
//! (`raw_mapping`), and the alphabetically first wheel word the chosen wheel and level knows gives the
//! cluster; words that fail a step are dropped. Per wheel: samples whose mapped truth is empty are skipped,
//! an empty mapped prediction scores 0, precision and recall are sample means and F = 2PR / (P + R); the
//! five wheels are averaged per level, and EW-F1 is the mean of the level-1 and level-2 F.
//! The vocabulary is MERTools' `wheel_mapping` (Apache-2.0), embedded from `assets/emotion-wheel/`.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// The levels a wheel is scored at.
pub const LEVELS: [&str; 2] = ["level1", "level2"];
/// The five wheels.
pub const WHEELS: [&str; 5] = ["wheel1", "wheel2", "wheel3", "wheel4", "wheel5"];

#[derive(Debug, Deserialize)]
pub struct EmotionWheel {
    format_mapping: HashMap<String, Vec<String>>,
    raw_mapping: HashMap<String, Vec<String>>,
    wheel_map_whole: HashMap<String, HashMap<String, HashMap<String, String>>>,
}

/// Mean F1, precision and recall over the five wheels at one level.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LevelScores {
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct WheelScores {
    pub level1: LevelScores,
    pub level2: LevelScores,
    /// Mean of the two levels' F1: the reported EW-F1.
    pub ew_f1: f64,
}

impl EmotionWheel {
    /// The vocabulary shipped with emollama.
    pub fn builtin() -> Result<Self, serde_json::Error> {
        serde_json::from_str(include_str!("../../assets/emotion-wheel/wheel_mapping.json"))
    }

    /// The cluster of `word` in `wheel` at `level`, if every mapping step finds it.
    pub fn cluster(&self, word: &str, wheel: &str, level: &str) -> Option<&str> {
        let map = self.wheel_map_whole.get(wheel)?.get(level)?;
        let bases = self.format_mapping.get(word.trim().to_lowercase().as_str())?;
        let candidates: BTreeSet<&str> = bases.iter().filter_map(|b| self.raw_mapping.get(b)).flatten().map(String::as_str).collect();
        candidates.into_iter().find_map(|w| map.get(w).map(String::as_str))
    }

    fn level(&self, gt: &[Vec<String>], pred: &[Vec<String>], level: &str) -> LevelScores {
        let mut sum = LevelScores { f1: 0.0, precision: 0.0, recall: 0.0 };
        for wheel in WHEELS {
            let clusters = |words: &Vec<String>| -> BTreeSet<&str> { words.iter().filter_map(|w| self.cluster(w, wheel, level)).collect() };
            let (mut p_sum, mut r_sum, mut n) = (0.0, 0.0, 0usize);
            for (g, p) in gt.iter().zip(pred) {
                let gs = clusters(g);
                if gs.is_empty() {
                    continue;
                }
                n += 1;
                let ps = clusters(p);
                if !ps.is_empty() {
                    let inter = gs.intersection(&ps).count() as f64;
                    p_sum += inter / ps.len() as f64;
                    r_sum += inter / gs.len() as f64;
                }
            }
            let (p, r) = if n > 0 { (p_sum / n as f64, r_sum / n as f64) } else { (0.0, 0.0) };
            let f = if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 };
            sum.f1 += f;
            sum.precision += p;
            sum.recall += r;
        }
        let k = WHEELS.len() as f64;
        LevelScores { f1: sum.f1 / k, precision: sum.precision / k, recall: sum.recall / k }
    }

    /// EW-F1 of predicted label sets against ground-truth sets (same order).
    pub fn scores(&self, gt: &[Vec<String>], pred: &[Vec<String>]) -> WheelScores {
        let (level1, level2) = (self.level(gt, pred, LEVELS[0]), self.level(gt, pred, LEVELS[1]));
        WheelScores { level1, level2, ew_f1: (level1.f1 + level2.f1) / 2.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_vocabulary_maps_words_to_clusters() {
        let w = EmotionWheel::builtin().unwrap();
        assert_eq!(w.format_mapping.len(), 7356);
        assert_eq!(w.raw_mapping.len(), 1255);
        assert!(w.cluster(" Happy ", "wheel1", "level1").is_some());
        assert_eq!(w.cluster("blorf", "wheel1", "level1"), None);
        assert_eq!(w.cluster("happy", "wheel9", "level1"), None);
    }
}
