//! A clip's emotion cues as text an LLM reads (`[prompt] cues = true`, `emollama annotate`): the expression
//! timeline of the main face (the face front end and its FER network), the peak frame, and the tone of the
//! voice (plain DSP, [`crate::media::voice`]), from one decoding pass at [`CUE_SAMPLING`]. MERR's
//! annotation pipeline does the same with AU detectors and large captioners; these are the parts a registry
//! package ships.
//!
//! Example ([`ClipCues::describe`]): "Face: sad for the first 2.0 s, then happy until the end (4.8 s);
//! mostly happy (62% of frames); at the peak frame (3.5 s) the face looks happy. Voice: a mid-pitched,
//! animated voice at a moderate pace with a short pause, at a normal level."

use serde::{Deserialize, Serialize};

use crate::media::face::{FaceFrontEnd, Timeline};
use crate::media::voice::VoiceDescriptors;
use crate::media::{AUDIO_SAMPLE_RATE, FrameSampling};

/// Two frames a second (at most 120): a timeline in half-second steps, whatever the model samples.
pub const CUE_SAMPLING: FrameSampling = FrameSampling::Fps { fps: 2.0, max_frames: Some(120) };
/// Changes when what [`extract`] computes changes (cached cues are keyed by it).
pub const CUE_VERSION: &str = "cues-1";
/// The face crops are not used for cues; the smallest the front end makes.
const CROP_SIDE: usize = 48;

/// One segment of the expression timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CueSegment {
    pub label: String,
    pub start_s: f64,
    pub end_s: f64,
    pub mean_prob: f32,
}

/// The face part of the cues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceCues {
    pub frames_total: usize,
    /// Sampled frames where the main face was found and scored.
    pub frames_scored: usize,
    /// "sad for the first 2.0 s, then happy until the end (4.8 s)".
    pub timeline: String,
    pub segments: Vec<CueSegment>,
    /// The most frequent expression over the scored frames (a FER label), and its share.
    pub dominant: Option<String>,
    pub dominant_share: f32,
    /// The runner-up is within 10 points of the dominant expression.
    pub ambiguous: bool,
    /// "happy (62% of frames)" or "sad (50%) or happy (50%), ambiguous".
    pub dominant_text: Option<String>,
    /// The emotion peak frame's time and its most probable expression.
    pub peak_s: Option<f64>,
    pub peak_expression: Option<String>,
    /// Mean FER probabilities over the scored frames, by label.
    pub mean_probs: std::collections::BTreeMap<String, f32>,
}

/// The voice part of the cues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceCues {
    /// "a low, monotone voice at a slow pace with long pauses, quiet", or "silent".
    pub description: String,
    pub has_speech: bool,
    /// `None`: a silent track, or one shorter than an analysis frame.
    pub descriptors: Option<VoiceDescriptors>,
}

/// Every cue of one clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipCues {
    pub duration_s: f64,
    /// `None`: the file has no video stream.
    pub face: Option<FaceCues>,
    /// `None`: no audio stream, or no samples in it.
    pub voice: Option<VoiceCues>,
}

impl ClipCues {
    /// The cues as sentences for a prompt.
    pub fn describe(&self) -> String {
        self.describe_for(&[])
    }

    /// [`Self::describe`] with each expression that a label of `labels` names under another word given that
    /// label too ("fearful (worried)" for the MER classes), so the LLM reads the card's vocabulary.
    pub fn describe_for(&self, labels: &[&str]) -> String {
        let adjective = |label: &str| -> String {
            let adj = adjective(label);
            match super::card::canonical_label(label, labels) {
                Some(card) if !adj.starts_with(card.as_str()) => format!("{adj} ({card})"),
                _ => adj.to_string(),
            }
        };
        let mut parts = Vec::new();
        if let Some(f) = &self.face {
            if f.frames_scored == 0 {
                parts.push("Face: no face is visible.".to_string());
            } else {
                let mut s = format!("Face: {}", f.spoken_timeline(&adjective));
                if let (Some(t), Some(e)) = (f.peak_s, &f.peak_expression) {
                    s += &format!("; at the most expressive moment ({t:.1} s) the face looks {}", adjective(e));
                }
                // The summary last: a small LLM weighs the words nearest the question most.
                if let Some(d) = &f.dominant {
                    let share = (f.dominant_share * 100.0).round();
                    s += &match f.ambiguous {
                        true => format!(". No clear main expression ({} in {share}% of frames)", adjective(d)),
                        false => format!(". Main expression: {} ({share}% of frames)", adjective(d)),
                    };
                }
                parts.push(format!("{s}."));
            }
        }
        if let Some(v) = &self.voice {
            parts.push(format!("Voice: {}.", v.description));
        }
        if parts.is_empty() {
            return "No face or voice cues.".into();
        }
        parts.join(" ")
    }
}

/// A FER label as the adjective the cue sentences use ("fear" → "fearful").
pub fn adjective(label: &str) -> &str {
    match label {
        "disgust" => "disgusted",
        "fear" => "fearful",
        "surprise" => "surprised",
        other => other,
    }
}

impl FaceCues {
    /// The timeline in words (`adjective` of each label): "sad for the first 2.0 s, then happy until the end
    /// (4.8 s)"; one segment: "happy throughout (4.8 s)".
    pub fn spoken_timeline(&self, adjective: &dyn Fn(&str) -> String) -> String {
        let last = self.segments.len().saturating_sub(1);
        if self.segments.len() <= 1 {
            return self.segments.first().map(|s| format!("{} throughout ({:.1} s)", adjective(&s.label), s.end_s)).unwrap_or_else(|| self.timeline.clone());
        }
        let parts: Vec<String> = self
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| match i {
                0 => format!("{} for the first {:.1} s", adjective(&s.label), s.end_s),
                _ if i == last => format!("then {} until the end ({:.1} s)", adjective(&s.label), s.end_s),
                _ => format!("then {} from {:.1} s to {:.1} s", adjective(&s.label), s.start_s, s.end_s),
            })
            .collect();
        parts.join(", ")
    }
}

/// The cues of the media file at `path` (one decoding pass; the face front end scores expressions).
pub fn extract(path: &std::path::Path, fe: &FaceFrontEnd) -> Result<ClipCues, String> {
    let info = crate::media::probe(path).map_err(|e| format!("not a readable media file: {e}"))?;
    let (face, samples, duration_s) = if info.video_stream.is_some() {
        let (clip, faces) = fe.process_file(path, &CUE_SAMPLING, CROP_SIDE, CROP_SIDE).map_err(|e| format!("decoding: {e}"))?;
        (Some(face_cues(&faces, clip.duration_s)?), clip.audio.samples, clip.duration_s)
    } else {
        let audio = crate::media::decode_audio(path).map_err(|e| format!("decoding the audio: {e}"))?;
        let d = audio.samples.len() as f64 / AUDIO_SAMPLE_RATE as f64;
        (None, audio.samples, info.duration_s.max(d))
    };
    let voice = if samples.is_empty() { None } else { Some(voice_cues(&samples)?) };
    Ok(ClipCues { duration_s, face, voice })
}

fn voice_cues(samples: &[f32]) -> Result<VoiceCues, String> {
    use crate::media::voice::VoiceError;
    let quiet = |description: &str| Ok(VoiceCues { description: description.into(), has_speech: false, descriptors: None });
    match VoiceDescriptors::of(samples, AUDIO_SAMPLE_RATE) {
        Ok(d) => Ok(VoiceCues { description: d.describe(), has_speech: d.has_speech(), descriptors: Some(d) }),
        Err(VoiceError::Silent { .. }) => quiet("silent"),
        Err(VoiceError::TooShort { .. }) => quiet("too short to describe"),
        Err(e) => Err(format!("voice: {e}")),
    }
}

fn face_cues(faces: &crate::media::face::ClipFaces, duration_s: f64) -> Result<FaceCues, String> {
    let t = Timeline::of(faces, Some(duration_s)).map_err(|e| e.to_string())?;
    let summary = super::loader::FaceSummary::of(faces);
    let scored = t.frames_scored > 0;
    Ok(FaceCues {
        frames_total: t.frames_total,
        frames_scored: t.frames_scored,
        timeline: t.describe(),
        segments: t.segments.iter().map(|s| CueSegment { label: s.label.to_string(), start_s: s.start_s, end_s: s.end_s, mean_prob: s.mean_prob }).collect(),
        dominant: t.dominant.map(str::to_string),
        dominant_share: t.dominant_share,
        ambiguous: t.ambiguous,
        dominant_text: t.describe_dominant(),
        peak_s: summary.peak.and_then(|i| summary.frame_times_s.get(i).copied()).filter(|_| scored),
        peak_expression: summary.peak_expression.filter(|_| scored),
        mean_probs: if scored { crate::media::face::FER_LABELS.iter().map(|l| l.to_string()).zip(t.mean_probs).collect() } else { Default::default() },
    })
}

/// Cues on disk, keyed by [`CUE_VERSION`], the face options and the file's content.
pub struct CueCache {
    store: super::transcript_cache::TranscriptCache,
    settings: String,
}

impl CueCache {
    pub fn new(cache_root: &std::path::Path, fe: &FaceFrontEnd) -> Self {
        let settings = serde_json::to_string(fe.options()).unwrap_or_default();
        Self { store: super::transcript_cache::TranscriptCache::named(cache_root, "cues"), settings }
    }

    /// The cues of `path` (whose content hashes to `media_hash`), from the cache or extracted and stored.
    pub fn get_or_extract(&self, path: &std::path::Path, media_hash: &str, fe: &FaceFrontEnd) -> Result<ClipCues, String> {
        let key = format!("{CUE_VERSION}|{}|{media_hash}", self.settings);
        if let Some(c) = self.store.get(&key).and_then(|t| serde_json::from_str(&t).ok()) {
            return Ok(c);
        }
        let cues = extract(path, fe)?;
        if let Ok(text) = serde_json::to_string(&cues) {
            self.store.put(&key, &text);
        }
        Ok(cues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_read_as_sentences() {
        let seg = |label: &str, start_s: f64, end_s: f64| CueSegment { label: label.into(), start_s, end_s, mean_prob: 0.8 };
        let face = FaceCues {
            frames_total: 10,
            frames_scored: 10,
            timeline: "sad for the first 2.0 s, then fear from 2.0 s to 3.0 s, then happy until the end (4.8 s)".into(),
            segments: vec![seg("sad", 0.0, 2.0), seg("fear", 2.0, 3.0), seg("happy", 3.0, 4.8)],
            dominant: Some("happy".into()),
            dominant_share: 0.6,
            ambiguous: false,
            dominant_text: Some("happy (60% of frames)".into()),
            peak_s: Some(3.5),
            peak_expression: Some("surprise".into()),
            mean_probs: Default::default(),
        };
        let c = ClipCues { duration_s: 4.8, face: Some(face.clone()), voice: None };
        assert_eq!(
            c.describe(),
            "Face: sad for the first 2.0 s, then fearful from 2.0 s to 3.0 s, then happy until the end (4.8 s); at the most expressive moment (3.5 s) the face looks surprised. Main expression: happy (60% of frames)."
        );
        // In the MER classes' words: fear is worried (the label extraction's synonym table).
        let mer = ["neutral", "angry", "happy", "sad", "worried", "surprise"];
        assert_eq!(
            c.describe_for(&mer),
            "Face: sad for the first 2.0 s, then fearful (worried) from 2.0 s to 3.0 s, then happy until the end (4.8 s); at the most expressive moment (3.5 s) the face looks surprised. Main expression: happy (60% of frames)."
        );
        let one = ClipCues { duration_s: 4.8, face: Some(FaceCues { segments: vec![seg("happy", 0.0, 4.8)], peak_s: None, ..face.clone() }), voice: None };
        assert_eq!(one.describe(), "Face: happy throughout (4.8 s). Main expression: happy (60% of frames).");
        let unclear = ClipCues { duration_s: 4.8, face: Some(FaceCues { ambiguous: true, peak_s: None, ..face.clone() }), voice: None };
        assert!(unclear.describe().ends_with("then happy until the end (4.8 s). No clear main expression (happy in 60% of frames)."), "{}", unclear.describe());
        let none = ClipCues { duration_s: 1.0, face: Some(FaceCues { frames_scored: 0, ..face }), voice: None };
        assert_eq!(none.describe(), "Face: no face is visible.");
        let silent = VoiceCues { description: "silent".into(), has_speech: false, descriptors: None };
        assert_eq!(ClipCues { duration_s: 1.0, face: None, voice: Some(silent) }.describe(), "Voice: silent.");
        assert_eq!(ClipCues { duration_s: 1.0, face: None, voice: None }.describe(), "No face or voice cues.");
    }
}
