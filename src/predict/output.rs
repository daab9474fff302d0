//! `predict`'s output: one JSON line per clip, keyed by a fingerprint of the file and the model, and
//! resumable (finished clips are skipped when the same command runs again).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::loader::FaceSummary;

/// Where the transcript in the prompt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptSource {
    /// The input gave it (a manifest column, a sidecar `.txt`).
    Given,
    /// Speech-to-text of the clip's audio.
    Asr,
    /// No transcript in the prompt.
    None,
}

/// Seconds spent per phase of one clip.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClipTimings {
    pub fetch_s: f64,
    pub decode_s: f64,
    pub asr_s: f64,
    /// Face and voice cues (`[prompt] cues`).
    pub cues_s: f64,
    pub encode_s: f64,
    pub scores_s: f64,
    pub generate_s: f64,
    pub total_s: f64,
}

/// One output line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PredictionLine {
    pub id: String,
    /// The input as listed (path or URI).
    pub input: String,
    /// sha256 of the file, the model and the options: what resuming matches on.
    pub key: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The predicted class: named by the reasoning when it was generated and names one, else the
    /// most likely class under `scores`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `reasoning` or `scores`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_from: Option<&'static str>,
    /// A probability per class: the LLM's likelihood of each class word, normalised over the classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<BTreeMap<String, f64>>,
    /// Where `scores` were taken: `reasoning` (where the generated reasoning names its class, given the
    /// prompt and the reasoning before it) or `emotion_prompt` (right after the emotion instruction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores_from: Option<&'static str>,
    /// With `--task both`: the scores after the emotion instruction as well (the direct question).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emotion_prompt_scores: Option<BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The coarse caption (`annotate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    pub transcript_source: Option<TranscriptSource>,
    /// The face and voice cues the prompt described (`[prompt] cues`): the expression timeline, the
    /// dominant expression, the peak frame, the voice measurements and their descriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cues: Option<crate::data::cues::ClipCues>,
    /// The face front end's account (absent without a face front end or without video).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<FaceSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_frame_s: Option<f64>,
    /// The modalities whose tokens the LLM saw (`video`, `audio`).
    pub modalities: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub timings: ClipTimings,
}

#[derive(Debug, thiserror::Error)]
#[error("--out `{path}`: {source}")]
pub struct OutputError {
    pub path: String,
    pub source: std::io::Error,
}

/// Where the lines go: a resumable file, or stdout.
pub struct LineSink {
    file: Option<(PathBuf, std::fs::File)>,
    /// Keys of the lines finished by an earlier invocation.
    done: HashSet<String>,
}

impl LineSink {
    /// Opens `path` for appending after keeping only its finished (`ok`) lines: failed clips are tried
    /// again, a line cut short by a kill is dropped. `None` writes to stdout.
    pub fn open(path: Option<&Path>) -> Result<Self, OutputError> {
        let Some(path) = path else { return Ok(Self { file: None, done: HashSet::new() }) };
        let err = |source| OutputError { path: path.display().to_string(), source };
        let mut kept = Vec::new();
        let mut done = HashSet::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(err)?;
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                if let (Some(true), Some(key)) = (v["ok"].as_bool(), v["key"].as_str())
                    && done.insert(key.to_string())
                {
                    kept.push(line.to_string());
                }
            }
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            crate::storage::write_atomic(path, body.as_bytes()).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        Ok(Self { file: Some((path.to_path_buf(), file)), done })
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    /// Lines kept from an earlier invocation.
    pub fn finished_before(&self) -> usize {
        self.done.len()
    }

    /// Writes one line and flushes it (a kill loses at most the clip in progress).
    pub fn write(&mut self, line: &PredictionLine) -> Result<(), OutputError> {
        let mut text = serde_json::to_string(line).map_err(|e| OutputError { path: "stdout".into(), source: std::io::Error::other(e) })?;
        text.push('\n');
        match &mut self.file {
            Some((path, f)) => f.write_all(text.as_bytes()).and_then(|_| f.flush()).map_err(|source| OutputError { path: path.display().to_string(), source }),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|source| OutputError { path: "stdout".into(), source })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_keeps_finished_lines_and_drops_failed_and_cut_ones() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.jsonl");
        std::fs::write(&path, "{\"key\":\"a\",\"ok\":true}\n{\"key\":\"b\",\"ok\":false}\n{\"key\":\"c\",\"ok\":tr").unwrap();
        let mut sink = LineSink::open(Some(&path)).unwrap();
        assert!(sink.is_done("a") && !sink.is_done("b") && !sink.is_done("c"));
        assert_eq!(sink.finished_before(), 1);
        sink.write(&PredictionLine { key: "b".into(), ok: true, ..Default::default() }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let keys: Vec<String> = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].as_str().unwrap().to_string()).collect();
        assert_eq!(keys, vec!["a", "b"]);
    }
}
