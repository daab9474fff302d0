//! The expression timeline of a clip: per sampled frame the expression scorer's most probable label,
//! smoothed, merged into timed segments ("sad for the first 2.0 s, then happy until the end (4.8 s)"),
//! and the dominant expression with its share of the frames.
//!
//! * **Labels.** Each frame's argmax over [`FER_LABELS`]; a frame without a scored face is "no face".
//! * **Smoothing.** A centred majority vote over 3 frames (a frame keeps its own label on a tie), which
//!   removes one-frame flicker between two stable expressions.
//! * **Segments.** Runs of equal labels. Frame `i` stands for the time from the midpoint with the frame
//!   before to the midpoint with the frame after; the first segment starts at 0 and the last ends at the
//!   clip's duration (or half a frame spacing after the last frame when unknown).
//! * **Absorption.** A segment shorter than [`MIN_SEGMENT_S`] or of a single frame (while there is more
//!   than one segment) is merged into a neighbour, shortest first: into the neighbour whose label the
//!   scorer found more probable over the short segment's frames (a "no face" neighbour only when it is
//!   the only one). Neighbours left with the same label fuse.
//! * **Dominant.** The most frequent raw (unsmoothed) label among the frames with a face, with its share;
//!   *ambiguous* when the runner-up's share is within [`AMBIGUITY_MARGIN`].

use serde::Serialize;

use super::ClipFaces;
use super::expression::FER_LABELS;

/// Segments shorter than this (seconds) are absorbed by a neighbour.
pub const MIN_SEGMENT_S: f64 = 0.5;
/// Dominant and runner-up shares closer than this make the dominant expression ambiguous.
pub const AMBIGUITY_MARGIN: f32 = 0.10;
/// The label of frames without a scored face.
pub const NO_FACE: &str = "no face";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimelineError {
    #[error("expression timeline: no frames")]
    Empty,
    #[error("expression timeline: {times} frame times but {probs} probability rows")]
    Length { times: usize, probs: usize },
    #[error("expression timeline: frame times must be finite and increasing (frame {index}: {time} s)")]
    Times { index: usize, time: f64 },
}

/// A stretch of the clip with one expression.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// A [`FER_LABELS`] label, or [`NO_FACE`].
    pub label: &'static str,
    pub start_s: f64,
    pub end_s: f64,
    /// Sampled frames in the segment.
    pub frames: usize,
    /// Mean probability of `label` over the segment's frames (0 for "no face").
    pub mean_prob: f32,
}

/// The expression timeline of one clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub segments: Vec<Segment>,
    pub duration_s: f64,
    /// Frames with a scored face.
    pub frames_scored: usize,
    pub frames_total: usize,
    /// The most frequent label among the scored frames (`None`: no frame has a face).
    pub dominant: Option<&'static str>,
    /// Its share of the scored frames.
    pub dominant_share: f32,
    /// The second most frequent label and its share.
    pub runner_up: Option<(&'static str, f32)>,
    /// The top two shares are within [`AMBIGUITY_MARGIN`].
    pub ambiguous: bool,
    /// Mean probabilities over the scored frames, [`FER_LABELS`] order.
    pub mean_probs: [f32; 7],
}

impl Timeline {
    /// The timeline of the face front end's result (`duration_s`: the clip's, if known).
    pub fn of(faces: &ClipFaces, duration_s: Option<f64>) -> Result<Self, TimelineError> {
        let times: Vec<f64> = faces.frames.iter().map(|f| f.timestamp_s).collect();
        let probs: Vec<Option<[f32; 7]>> = faces.frames.iter().map(|f| f.expression).collect();
        Self::build(&times, &probs, duration_s)
    }

    /// The timeline of per-frame probabilities (`None`: no face in that frame) at `times_s`.
    pub fn build(times_s: &[f64], probs: &[Option<[f32; 7]>], duration_s: Option<f64>) -> Result<Self, TimelineError> {
        if times_s.len() != probs.len() {
            return Err(TimelineError::Length { times: times_s.len(), probs: probs.len() });
        }
        if times_s.is_empty() {
            return Err(TimelineError::Empty);
        }
        for (i, &t) in times_s.iter().enumerate() {
            if !t.is_finite() || t < 0.0 || (i > 0 && t <= times_s[i - 1]) {
                return Err(TimelineError::Times { index: i, time: t });
            }
        }
        let n = times_s.len();
        let raw: Vec<Option<usize>> = probs.iter().map(|p| p.as_ref().map(argmax)).collect();

        // Frame i's stretch of time: between the midpoints with its neighbours.
        let spacing = if n > 1 { (times_s[n - 1] - times_s[0]) / (n - 1) as f64 } else { 2.0 * times_s[0] };
        let end = duration_s.filter(|d| d.is_finite() && *d > times_s[n - 1]).unwrap_or(times_s[n - 1] + spacing / 2.0);
        let bounds: Vec<f64> = (0..=n).map(|i| if i == 0 { 0.0 } else if i == n { end } else { (times_s[i - 1] + times_s[i]) / 2.0 }).collect();

        let smooth: Vec<Option<usize>> = (0..n)
            .map(|i| {
                let (a, b) = (raw[i.saturating_sub(1)], raw[(i + 1).min(n - 1)]);
                if i > 0 && i + 1 < n && a == b && a != raw[i] { a } else { raw[i] }
            })
            .collect();

        // Runs of equal labels as frame ranges.
        let mut runs: Vec<(Option<usize>, std::ops::Range<usize>)> = Vec::new();
        for (i, &l) in smooth.iter().enumerate() {
            match runs.last_mut() {
                Some((label, r)) if *label == l => r.end = i + 1,
                _ => runs.push((l, i..i + 1)),
            }
        }
        let secs = |r: &std::ops::Range<usize>| bounds[r.end] - bounds[r.start];
        // Mean probability of `label` over frames `r` (no face: -1, so it never wins a contest).
        let support = |label: Option<usize>, r: &std::ops::Range<usize>| -> f32 {
            let Some(k) = label else { return -1.0 };
            let v: Vec<f32> = r.clone().filter_map(|i| probs[i].map(|p| p[k])).collect();
            if v.is_empty() { 0.0 } else { v.iter().sum::<f32>() / v.len() as f32 }
        };
        loop {
            let short = runs.iter().enumerate().filter(|(_, (_, r))| r.len() == 1 || secs(r) < MIN_SEGMENT_S).min_by(|a, b| secs(&a.1.1).total_cmp(&secs(&b.1.1))).map(|(i, _)| i);
            let Some(i) = short.filter(|_| runs.len() > 1) else { break };
            let r = runs[i].1.clone();
            let left = i.checked_sub(1).map(|j| support(runs[j].0, &r));
            let right = runs.get(i + 1).map(|(l, _)| support(*l, &r));
            let into = match (left, right) {
                (Some(a), Some(b)) => if b > a { i + 1 } else { i - 1 },
                (Some(_), None) => i - 1,
                _ => i + 1,
            };
            let (lo, hi) = (i.min(into), i.max(into));
            let label = runs[into].0;
            let merged = runs[lo].1.start..runs[hi].1.end;
            runs.splice(lo..=hi, [(label, merged)]);
            // Fuse equal neighbours left behind.
            let mut fused: Vec<(Option<usize>, std::ops::Range<usize>)> = Vec::new();
            for (l, r) in runs.drain(..) {
                match fused.last_mut() {
                    Some((pl, pr)) if *pl == l => pr.end = r.end,
                    _ => fused.push((l, r)),
                }
            }
            runs = fused;
        }
        let segments = runs
            .iter()
            .map(|(l, r)| Segment { label: l.map_or(NO_FACE, |k| FER_LABELS[k]), start_s: bounds[r.start], end_s: bounds[r.end], frames: r.len(), mean_prob: support(*l, r).max(0.0) })
            .collect();

        let scored: Vec<usize> = raw.iter().flatten().copied().collect();
        let mut counts = [0usize; 7];
        scored.iter().for_each(|&k| counts[k] += 1);
        let mut order: Vec<usize> = (0..7).filter(|&k| counts[k] > 0).collect();
        // Most frequent first; ties by the higher mean probability.
        let mut mean_probs = [0f32; 7];
        for p in probs.iter().flatten() {
            mean_probs.iter_mut().zip(p).for_each(|(m, v)| *m += v / scored.len() as f32);
        }
        order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(mean_probs[b].total_cmp(&mean_probs[a])));
        let share = |k: usize| counts[k] as f32 / scored.len().max(1) as f32;
        let dominant = order.first().map(|&k| FER_LABELS[k]);
        let dominant_share = order.first().map_or(0.0, |&k| share(k));
        let runner_up = order.get(1).map(|&k| (FER_LABELS[k], share(k)));
        Ok(Self {
            segments,
            duration_s: end,
            frames_scored: scored.len(),
            frames_total: n,
            dominant,
            dominant_share,
            ambiguous: runner_up.is_some_and(|(_, s)| dominant_share - s <= AMBIGUITY_MARGIN),
            runner_up,
            mean_probs,
        })
    }

    /// "sad for the first 2.0 s, then happy until the end (4.8 s)"; one segment: "happy throughout
    /// (4.8 s)".
    pub fn describe(&self) -> String {
        let last = self.segments.len().saturating_sub(1);
        if self.segments.len() == 1 {
            return format!("{} throughout ({:.1} s)", self.segments[0].label, self.duration_s);
        }
        self.segments
            .iter()
            .enumerate()
            .map(|(i, s)| match i {
                0 => format!("{} for the first {:.1} s", s.label, s.end_s),
                _ if i == last => format!("then {} until the end ({:.1} s)", s.label, s.end_s),
                _ => format!("then {} from {:.1} s to {:.1} s", s.label, s.start_s, s.end_s),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// "happy (62% of frames)" or "sad (50%) or happy (50%), ambiguous"; `None` without a face.
    pub fn describe_dominant(&self) -> Option<String> {
        let d = self.dominant?;
        let pct = |s: f32| (s * 100.0).round();
        Some(match (self.ambiguous, self.runner_up) {
            (true, Some((r, s))) => format!("{d} ({}% of frames) or {r} ({}%), ambiguous", pct(self.dominant_share), pct(s)),
            _ => format!("{d} ({}% of frames)", pct(self.dominant_share)),
        })
    }
}

fn argmax(p: &[f32; 7]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probability row with `p` on `label` and the rest spread evenly.
    fn row(label: &str, p: f32) -> Option<[f32; 7]> {
        let k = FER_LABELS.iter().position(|l| *l == label).expect("label");
        let mut r = [(1.0 - p) / 6.0; 7];
        r[k] = p;
        Some(r)
    }

    fn times(n: usize, fps: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 + 0.5) / fps).collect()
    }

    #[test]
    fn timeline_two_segments_are_described() {
        // 10 frames over 5 s: 4 sad, then 6 happy.
        let probs: Vec<_> = (0..10).map(|i| if i < 4 { row("sad", 0.7) } else { row("happy", 0.8) }).collect();
        let t = Timeline::build(&times(10, 2.0), &probs, Some(5.0)).expect("timeline");
        assert_eq!(t.segments.len(), 2, "{t:?}");
        assert_eq!((t.segments[0].label, t.segments[1].label), ("sad", "happy"));
        assert!((t.segments[0].end_s - 2.0).abs() < 1e-9);
        assert_eq!(t.describe(), "sad for the first 2.0 s, then happy until the end (5.0 s)");
        assert_eq!(t.dominant, Some("happy"));
        assert!((t.dominant_share - 0.6).abs() < 1e-6);
        assert!(!t.ambiguous, "60% vs 40% is not within 10 points");
        assert!((t.segments[1].mean_prob - 0.8).abs() < 1e-6);
    }

    #[test]
    fn timeline_flicker_is_absorbed() {
        // Neutral throughout, with single-frame flicker to angry and a two-frame (0.2 s) blip of fear.
        let mut probs: Vec<_> = (0..30).map(|_| row("neutral", 0.6)).collect();
        probs[5] = row("angry", 0.5);
        probs[17] = row("fear", 0.45);
        probs[18] = row("fear", 0.45);
        let t = Timeline::build(&times(30, 10.0), &probs, None).expect("timeline");
        assert_eq!(t.segments.len(), 1, "{t:?}");
        assert_eq!(t.describe(), "neutral throughout (3.0 s)");
        assert_eq!(t.dominant, Some("neutral"));
        assert!((t.dominant_share - 27.0 / 30.0).abs() < 1e-6);
    }

    #[test]
    fn timeline_short_middle_segment_goes_to_the_more_probable_neighbour() {
        // sad (1 s) | surprise (0.3 s, 3 frames) | happy (1 s); the surprise frames lean to happy.
        let mut probs: Vec<_> = (0..23).map(|i| if i < 10 { row("sad", 0.7) } else { row("happy", 0.7) }).collect();
        for p in probs.iter_mut().skip(10).take(3) {
            let mut r = [0.02f32; 7];
            r[5] = 0.5; // surprise
            r[3] = 0.3; // happy
            r[4] = 0.08; // sad
            *p = Some(r);
        }
        let t = Timeline::build(&times(23, 10.0), &probs, Some(2.3)).expect("timeline");
        let labels: Vec<&str> = t.segments.iter().map(|s| s.label).collect();
        assert_eq!(labels, ["sad", "happy"], "{t:?}");
        assert!((t.segments[0].end_s - 1.0).abs() < 1e-9);
        assert_eq!(t.segments[1].frames, 13);
    }

    #[test]
    fn timeline_three_segments_and_ambiguity() {
        let probs: Vec<_> = (0..12).map(|i| if i < 5 { row("sad", 0.6) } else if i < 7 { row("neutral", 0.6) } else { row("happy", 0.6) }).collect();
        let t = Timeline::build(&times(12, 2.0), &probs, Some(6.0)).expect("timeline");
        assert_eq!(t.describe(), "sad for the first 2.5 s, then neutral from 2.5 s to 3.5 s, then happy until the end (6.0 s)");
        // 5 sad vs 5 happy: a tie.
        assert!(t.ambiguous);
        assert_eq!(t.describe_dominant().expect("dominant").split(' ').next_back(), Some("ambiguous"));
    }

    #[test]
    fn timeline_frames_without_a_face() {
        let probs: Vec<_> = (0..8).map(|i| if i < 4 { None } else { row("happy", 0.9) }).collect();
        let t = Timeline::build(&times(8, 2.0), &probs, None).expect("timeline");
        assert_eq!(t.describe(), "no face for the first 2.0 s, then happy until the end (4.0 s)");
        assert_eq!((t.frames_scored, t.dominant, t.dominant_share), (4, Some("happy"), 1.0));
        let none = Timeline::build(&times(3, 2.0), &[None, None, None], None).expect("timeline");
        assert_eq!(none.dominant, None);
        assert_eq!(none.describe_dominant(), None);
        assert_eq!(none.describe(), "no face throughout (1.5 s)");
    }

    #[test]
    fn timeline_bad_input_is_an_error() {
        assert_eq!(Timeline::build(&[], &[], None), Err(TimelineError::Empty));
        assert!(matches!(Timeline::build(&[0.1], &[], None), Err(TimelineError::Length { times: 1, probs: 0 })));
        assert!(matches!(Timeline::build(&[0.5, 0.2], &[None, None], None), Err(TimelineError::Times { index: 1, .. })));
        assert!(matches!(Timeline::build(&[f64::NAN], &[None], None), Err(TimelineError::Times { index: 0, .. })));
    }
}
