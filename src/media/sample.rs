//! Frame sampling: which frames of a video to decode.
//!
//! A sampling turns a duration into *target times*; the frame picked for a target `t` is the
//! frame on screen at `t`: the last decoded frame whose presentation time (`pts - start_time`,
//! seconds) is `<= t`, or the first frame if there is none. The same frame may be picked more
//! than once (short videos).

use serde::{Deserialize, Serialize};

/// Upper bound on the number of frames one sampling may request.
pub const MAX_SAMPLED_FRAMES: usize = 10_000;

/// Slack (seconds) when comparing a frame time with a target time, so that a frame whose
/// time equals the target up to floating-point rounding counts as "on screen" at the target.
pub const TIME_EPSILON: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum FrameSampling {
    /// `n` frames: the midpoints of `n` equal segments of `[0, duration)`.
    Uniform { n: usize },
    /// Only the first frame (target 0.0).
    First,
    /// `t = k / fps` for `k = 0, 1, ..` while `t < duration`, at most `max_frames`.
    Fps {
        fps: f64,
        #[serde(default)]
        max_frames: Option<usize>,
    },
    /// VideoMAE's clip sampling (test mode): the frames split into `segments` equal parts, and
    /// `consecutive` successive frames at the middle of each (8 × 2 = the 16 frames of a VideoMAE clip).
    Segments { segments: usize, consecutive: usize },
    /// VideoLLaMA2's uniform sampling (`mm_utils.frame_sample`, "v1"), on frame indices rather than times:
    /// over the `N` frames, `seg = (N - 1) / n` and frame `i` is `round(seg·(i + 0.5) + 1e-6)` (the
    /// middles of `n` equal segments of `[0, N - 1]`); see [`midpoint_indices`].
    Midpoints { n: usize },
}

/// Frame rate assumed for [`FrameSampling::Segments`] when the stream's is unknown.
pub const DEFAULT_FPS: f64 = 25.0;

impl Default for FrameSampling {
    fn default() -> Self {
        FrameSampling::Uniform { n: 8 }
    }
}

impl FrameSampling {
    /// Check the parameters: `n >= 1`, `fps` finite and `> 0`, `max_frames >= 1`,
    /// and no more than [`MAX_SAMPLED_FRAMES`] frames for `Uniform`.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            FrameSampling::Uniform { n } | FrameSampling::Midpoints { n } => {
                let mode = if matches!(self, FrameSampling::Uniform { .. }) { "uniform" } else { "midpoints" };
                if n == 0 {
                    return Err(format!("{mode} sampling needs n >= 1 frames (got n = 0)"));
                }
                if n > MAX_SAMPLED_FRAMES {
                    return Err(format!("{mode} sampling of {n} frames exceeds the limit of {MAX_SAMPLED_FRAMES}"));
                }
            }
            FrameSampling::First => {}
            FrameSampling::Segments { segments, consecutive } => {
                if segments == 0 || consecutive == 0 {
                    return Err(format!("segment sampling needs segments >= 1 and consecutive >= 1 (got {segments} x {consecutive})"));
                }
                if segments.saturating_mul(consecutive) > MAX_SAMPLED_FRAMES {
                    return Err(format!("segment sampling of {segments} x {consecutive} frames exceeds the limit of {MAX_SAMPLED_FRAMES}"));
                }
            }
            FrameSampling::Fps { fps, max_frames } => {
                if !fps.is_finite() || fps <= 0.0 {
                    return Err(format!("fps sampling needs a finite fps > 0 (got {fps})"));
                }
                match max_frames {
                    Some(0) => return Err("fps sampling with max_frames = 0 selects no frames".into()),
                    Some(m) if m > MAX_SAMPLED_FRAMES => {
                        return Err(format!("max_frames = {m} exceeds the limit of {MAX_SAMPLED_FRAMES}"));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Target times in seconds from the stream start, ascending.
    ///
    /// * `Uniform { n }`: `(i + 0.5) * duration / n` for `i in 0..n`.
    /// * `First`: `[0.0]`.
    /// * `Fps { fps, max_frames }`: `k / fps` while `< duration`, capped by `max_frames`
    ///   (and by [`MAX_SAMPLED_FRAMES`]); always at least `[0.0]`, so a clip of unknown or zero
    ///   duration still yields its first frame.
    ///
    /// A non-finite or negative duration is treated as 0. Invalid parameters (see
    /// [`validate`](Self::validate)) give an empty list.
    pub fn target_times(&self, duration_s: f64) -> Vec<f64> {
        self.target_times_at(duration_s, DEFAULT_FPS)
    }

    /// As [`Self::target_times`], with the stream's frame rate (only `Segments` and `Midpoints` depend on
    /// it: their targets are the middles of whole frames, `(index + 0.5) / fps`).
    pub fn target_times_at(&self, duration_s: f64, fps: f64) -> Vec<f64> {
        if self.validate().is_err() {
            return Vec::new();
        }
        let d = if duration_s.is_finite() && duration_s > 0.0 { duration_s } else { 0.0 };
        match *self {
            FrameSampling::Uniform { n } => {
                (0..n).map(|i| (i as f64 + 0.5) * d / n as f64).collect()
            }
            FrameSampling::First => vec![0.0],
            FrameSampling::Segments { segments, consecutive } => {
                let fps = if fps.is_finite() && fps > 0.0 { fps } else { DEFAULT_FPS };
                let frames = ((d * fps).floor() as usize).max(1);
                segment_indices(frames, segments, consecutive).into_iter().map(|i| (i as f64 + 0.5) / fps).collect()
            }
            FrameSampling::Midpoints { n } => {
                let fps = if fps.is_finite() && fps > 0.0 { fps } else { DEFAULT_FPS };
                // The frame count (decord's `len`) of a constant-rate stream: duration × rate, rounded so
                // that a duration a hair short of N frames still counts N.
                let frames = ((d * fps).round() as usize).max(1);
                midpoint_indices(frames, n).into_iter().map(|i| (i as f64 + 0.5) / fps).collect()
            }
            FrameSampling::Fps { fps, max_frames } => {
                let cap = max_frames.unwrap_or(MAX_SAMPLED_FRAMES).min(MAX_SAMPLED_FRAMES);
                let mut out = vec![0.0];
                let mut k = 1usize;
                while out.len() < cap {
                    let t = k as f64 / fps;
                    if t >= d {
                        break;
                    }
                    out.push(t);
                    k += 1;
                }
                out
            }
        }
    }

    /// Number of targets before the [`MAX_SAMPLED_FRAMES`] safety cap (`Fps` without
    /// `max_frames` on a long video can exceed it; decoding then fails with `InvalidRequest`).
    pub fn uncapped_count(&self, duration_s: f64) -> usize {
        match *self {
            FrameSampling::Fps { fps, max_frames: None } if fps.is_finite() && fps > 0.0 => {
                let d = if duration_s.is_finite() && duration_s > 0.0 { duration_s } else { 0.0 };
                let n = (d * fps).ceil();
                if n.is_finite() { (n as usize).max(1) } else { usize::MAX }
            }
            _ => self.target_times(duration_s).len(),
        }
    }

    /// Number of frames this sampling yields for a clip of `duration_s` seconds.
    pub fn frame_count(&self, duration_s: f64) -> usize {
        self.target_times(duration_s).len()
    }
}

/// Frame indices of segment sampling over `frames` frames: per segment, `consecutive` frames starting
/// so that they sit at the segment's middle; indices past the end repeat the last frame (short clips).
pub fn segment_indices(frames: usize, segments: usize, consecutive: usize) -> Vec<usize> {
    if frames == 0 {
        return Vec::new();
    }
    let seg = frames as f64 / segments as f64;
    let mut out = Vec::with_capacity(segments * consecutive);
    for s in 0..segments {
        let mid = (s as f64 + 0.5) * seg;
        let start = (mid - consecutive as f64 / 2.0).round().max(0.0) as usize;
        out.extend((0..consecutive).map(|k| (start + k).min(frames - 1)));
    }
    out
}

/// VideoLLaMA2's frame indices (`mm_utils.frame_sample`, mode `uniform`): `seg = (frames - 1) / n`, and
/// index `i` is `np.round((seg·i + seg·(i + 1)) / 2 + 1e-6)`, computed in the same f64 operations (numpy
/// rounds halves to even; the 1e-6 pushes exact halves up first).
pub fn midpoint_indices(frames: usize, n: usize) -> Vec<usize> {
    if frames == 0 {
        return Vec::new();
    }
    let seg = (frames - 1) as f64 / n as f64;
    (0..n)
        .map(|i| {
            let (start, end) = (seg * i as f64, seg * (i + 1) as f64);
            (((start + end) / 2.0 + 1e-6).round_ties_even().max(0.0) as usize).min(frames - 1)
        })
        .collect()
}

/// The reference selection rule on a list of frame times (in decode/presentation order):
/// for each target, the index of the last frame whose time is `<= t` (up to
/// [`TIME_EPSILON`]), else 0.
/// Returns an empty list if there are no frames.
pub fn select_frames(frame_times: &[f64], targets: &[f64]) -> Vec<usize> {
    if frame_times.is_empty() {
        return Vec::new();
    }
    targets
        .iter()
        .map(|&t| frame_times.iter().rposition(|&ft| ft <= t + TIME_EPSILON).unwrap_or(0))
        .collect()
}


/// Which frame the global encoder sees (`model.global_frame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalFrame {
    /// The first sampled frame (Emotion-LLaMA's code).
    #[default]
    First,
    /// The middle sampled frame.
    Middle,
    /// The emotion peak frame, chosen by the face front end (given to the encoders as its own image).
    Peak,
}

impl std::fmt::Display for GlobalFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::First => "first",
            Self::Middle => "middle",
            Self::Peak => "peak",
        })
    }
}

impl GlobalFrame {
    /// `model.global_frame`: `first`, `middle` or `peak`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "first" => Some(Self::First),
            "middle" => Some(Self::Middle),
            "peak" => Some(Self::Peak),
            _ => None,
        }
    }

    /// Which of `n` sampled frames; `peak` is the front end's (`None`: not known, the middle is used).
    pub fn index(self, n: usize, peak: Option<usize>) -> usize {
        match self {
            Self::First => 0,
            Self::Middle => n / 2,
            Self::Peak => peak.unwrap_or(n / 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_midpoints() {
        let t = FrameSampling::Uniform { n: 4 }.target_times(2.0);
        assert_eq!(t, vec![0.25, 0.75, 1.25, 1.75]);
    }

    #[test]
    fn segments_take_consecutive_frames_at_segment_middles() {
        // 160 frames, 8 segments of 20: pairs centred on frames 10, 30, ..., 150.
        let idx = segment_indices(160, 8, 2);
        assert_eq!(idx, vec![9, 10, 29, 30, 49, 50, 69, 70, 89, 90, 109, 110, 129, 130, 149, 150]);
        // A clip shorter than 16 frames repeats frames instead of failing.
        let short = segment_indices(5, 8, 2);
        assert_eq!(short.len(), 16);
        assert!(short.iter().all(|&i| i < 5));
        // Targets are frame middles at the stream's rate: 4 s at 25 fps = 100 frames.
        let t = FrameSampling::Segments { segments: 2, consecutive: 2 }.target_times_at(4.0, 25.0);
        assert_eq!(t, vec![24.5 / 25.0, 25.5 / 25.0, 74.5 / 25.0, 75.5 / 25.0]);
        assert!(FrameSampling::Segments { segments: 0, consecutive: 2 }.validate().is_err());
    }

    #[test]
    fn midpoints_are_videollama2_frame_indices() {
        // numpy: np.round(np.array([(seg*i + seg*(i+1))/2 for i in range(16)]) + 1e-6).astype(int).
        assert_eq!(midpoint_indices(100, 16), vec![3, 9, 15, 22, 28, 34, 40, 46, 53, 59, 65, 71, 77, 84, 90, 96]);
        // seg = 1: every middle is an exact half, which the 1e-6 rounds up (numpy alone would go to even).
        assert_eq!(midpoint_indices(17, 16), (1..=16).collect::<Vec<_>>());
        // Short clips repeat frames; one frame is all zeros; none gives none.
        assert_eq!(midpoint_indices(5, 16), vec![0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4]);
        assert_eq!(midpoint_indices(1, 4), vec![0; 4]);
        assert!(midpoint_indices(0, 4).is_empty());
        // Targets: the middles of those frames, at the stream's rate (4 s at 25 fps = 100 frames).
        let t = FrameSampling::Midpoints { n: 16 }.target_times_at(4.0, 25.0);
        assert_eq!(t.len(), 16);
        assert_eq!(t[0], 3.5 / 25.0);
        assert_eq!(t[15], 96.5 / 25.0);
        assert!(FrameSampling::Midpoints { n: 0 }.validate().is_err());
        let s: FrameSampling = serde_json::from_str(r#"{"mode":"midpoints","n":16}"#).expect("serde");
        assert_eq!(s, FrameSampling::Midpoints { n: 16 });
    }

    #[test]
    fn first_and_fps() {
        assert_eq!(FrameSampling::First.target_times(3.0), vec![0.0]);
        let t = FrameSampling::Fps { fps: 2.0, max_frames: None }.target_times(2.0);
        assert_eq!(t, vec![0.0, 0.5, 1.0, 1.5]);
        let t = FrameSampling::Fps { fps: 2.0, max_frames: Some(3) }.target_times(10.0);
        assert_eq!(t, vec![0.0, 0.5, 1.0]);
        assert_eq!(FrameSampling::Fps { fps: 2.0, max_frames: None }.target_times(0.0), vec![0.0]);
        let long = FrameSampling::Fps { fps: 25.0, max_frames: None };
        assert_eq!(long.uncapped_count(600.0), 15_000);
        assert_eq!(long.target_times(600.0).len(), MAX_SAMPLED_FRAMES);
    }

    #[test]
    fn invalid_requests() {
        assert!(FrameSampling::Uniform { n: 0 }.validate().is_err());
        assert!(FrameSampling::Fps { fps: 0.0, max_frames: None }.validate().is_err());
        assert!(FrameSampling::Fps { fps: f64::NAN, max_frames: None }.validate().is_err());
        assert!(FrameSampling::Fps { fps: 1.0, max_frames: Some(0) }.validate().is_err());
        assert!(FrameSampling::Uniform { n: 0 }.target_times(1.0).is_empty());
        // Degenerate durations never panic.
        assert_eq!(FrameSampling::Uniform { n: 2 }.target_times(f64::NAN), vec![0.0, 0.0]);
    }

    #[test]
    fn serde_round_trip() {
        let s: FrameSampling = serde_json::from_str(r#"{"mode":"uniform","n":8}"#).unwrap();
        assert_eq!(s, FrameSampling::Uniform { n: 8 });
        let s: FrameSampling = serde_json::from_str(r#"{"mode":"fps","fps":2.5}"#).unwrap();
        assert_eq!(s, FrameSampling::Fps { fps: 2.5, max_frames: None });
        let s: FrameSampling = serde_json::from_str(r#"{"mode":"first"}"#).unwrap();
        assert_eq!(s, FrameSampling::First);
        assert!(serde_json::from_str::<FrameSampling>(r#"{"mode":"uniform","n":8,"x":1}"#).is_err());
        let j = serde_json::to_string(&FrameSampling::Fps { fps: 1.0, max_frames: Some(4) }).unwrap();
        assert_eq!(j, r#"{"mode":"fps","fps":1.0,"max_frames":4}"#);
    }

    #[test]
    fn selection_rule() {
        let frames = [0.0, 0.1, 0.2, 0.3];
        assert_eq!(select_frames(&frames, &[0.0, 0.15, 0.2, 5.0]), vec![0, 1, 2, 3]);
        assert_eq!(select_frames(&[0.5, 0.6], &[0.1]), vec![0]);
        assert!(select_frames(&[], &[0.1]).is_empty());
        // rounding noise does not flip a pick
        assert_eq!(select_frames(&[0.0, 0.30000000000000004], &[0.3]), vec![1]);
    }
}
