//! [merr] Emotion-LLaMA's MERR files (reference emotion_llama.md §3.1):
//! - split lists (`layout.splits`, default `train = "MERR_fine_grained.txt"`): space-separated
//!   `video_id frame_count label` (`sample_00000003 43 happy`), or the eval lists `*_NCEV.txt` with a valence
//!   column (`samplenew_00006611 125 sad -10`; -10 is a placeholder: no valence);
//! - `layout.annotations` (optional) `{video_id: {...}}`: coarse records `{"caption": ...}` give the
//!   description; fine records (the 8 fields AU_list, visual_prior_list, audio_prior_list, peak_index,
//!   peak_AU_list, pseu_emotion, text, smp_reason_caption) give the reasoning and, through `text`, a
//!   transcript when the transcripts file has none;
//! - `layout.transcripts` (optional): `transcription_en_all.csv`-style `name, sentence` (or `english`);
//! - media `layout.media`, default `video/{id}.mp4`.

use std::collections::HashMap;

use super::table::{MediaPattern, Seen, card_label, non_empty, read_text, read_transcripts};
use super::{DatasetFiles, SourceError};
use crate::data::{DatasetCard, Sample};

/// MERR's training labels in Emotion-LLaMA's `emo2idx` order.
pub const MERR_LABELS: [&str; 9] = ["neutral", "angry", "happy", "sad", "worried", "surprise", "fear", "contempt", "doubt"];

/// A MERR label on MER's six classes: the six map to themselves; fear, contempt and doubt (no MER class)
/// become neutral, as the reference evaluation counts every word outside the six.
pub fn merr_to_mer6(label: &str) -> &'static str {
    match label {
        "angry" => "angry",
        "happy" => "happy",
        "sad" => "sad",
        "worried" => "worried",
        "surprise" => "surprise",
        _ => "neutral",
    }
}

/// What an annotation record gives a sample.
#[derive(Default)]
struct Annotation {
    description: Option<String>,
    reasoning: Option<String>,
    text: Option<String>,
}

const FINE_FIELDS: [&str; 8] = ["AU_list", "visual_prior_list", "audio_prior_list", "peak_index", "peak_AU_list", "pseu_emotion", "text", "smp_reason_caption"];

fn read_annotations(files: &dyn DatasetFiles, rel: &str) -> Result<HashMap<String, Annotation>, SourceError> {
    let file = files.describe(rel);
    let v: serde_json::Value = serde_json::from_slice(&files.read(rel)?).map_err(|e| SourceError::row(&file, e.line(), e.to_string()))?;
    let map = v.as_object().ok_or_else(|| SourceError::Read { file: file.clone(), message: "expected a JSON object {video_id: record}".into() })?;
    let mut out = HashMap::with_capacity(map.len());
    for (id, rec) in map {
        let bad = |why: &str| SourceError::Read { file: file.clone(), message: format!("record `{id}`: {why}") };
        let obj = rec.as_object().ok_or_else(|| bad("not an object"))?;
        let s = |k: &str| obj.get(k).and_then(|x| x.as_str()).and_then(non_empty);
        let a = if obj.contains_key("smp_reason_caption") {
            if let Some(missing) = FINE_FIELDS.iter().find(|f| !obj.contains_key(**f)) {
                return Err(bad(&format!("a fine-grained record without `{missing}`")));
            }
            Annotation { description: s("caption"), reasoning: Some(s("smp_reason_caption").ok_or_else(|| bad("`smp_reason_caption` is not a non-empty string"))?), text: s("text") }
        } else if obj.contains_key("caption") {
            Annotation { description: Some(s("caption").ok_or_else(|| bad("`caption` is not a non-empty string"))?), reasoning: None, text: None }
        } else {
            return Err(bad("neither a coarse record (`caption`) nor a fine-grained one (`smp_reason_caption`, ...)"));
        };
        out.insert(id.clone(), a);
    }
    Ok(out)
}

/// One line of a `.txt` list: (id, frame count, raw label, valence).
pub fn parse_list_line(line: &str) -> Result<(String, u64, String, Option<f32>), String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if !(f.len() == 3 || f.len() == 4) {
        return Err(format!("{} fields, expected `video_id frame_count label [valence]`", f.len()));
    }
    let frames = f[1].parse::<u64>().map_err(|_| format!("frame count `{}` is not a whole number", f[1]))?;
    let valence = match f.get(3) {
        None => None,
        Some(v) => {
            let x: f32 = v.parse().map_err(|_| format!("valence `{v}` is not a number"))?;
            (x != -10.0).then_some(x)
        }
    };
    Ok((f[0].to_string(), frames, f[2].to_string(), valence))
}

/// Samples of one `.txt` list.
pub fn read_list(card: &DatasetCard, files: &dyn DatasetFiles, rel: &str, split: &str, media: &MediaPattern, seen: &mut Seen) -> Result<Vec<Sample>, SourceError> {
    let (file, text) = read_text(files, rel)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (id, _frames, raw, valence) = parse_list_line(line).map_err(|m| SourceError::row(&file, line_no, m))?;
        let label = card_label(card, &raw).map_err(|m| SourceError::row(&file, line_no, m))?;
        seen.check(split, &id, &file, line_no)?;
        let loc = media.locate(&id, split).map_err(|e| SourceError::row(&file, line_no, e.to_string()))?;
        out.push(Sample { id, split: split.to_string(), media: loc, transcript: None, label: Some(label), description: None, reasoning: None, valence, openset: Vec::new(), cues: None });
    }
    Ok(out)
}

pub fn load(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let l = &card.layout;
    let splits = if l.splits.is_empty() { [("train".to_string(), "MERR_fine_grained.txt".to_string())].into_iter().collect() } else { l.splits.clone() };
    let media = MediaPattern::new(files, l.media.as_deref().unwrap_or("video/{id}.mp4"));
    let annotations = match &l.annotations {
        Some(rel) => read_annotations(files, rel)?,
        None => HashMap::new(),
    };
    let transcripts = read_transcripts(files, l.transcripts.as_deref())?;
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for (split, rel) in &super::table::ordered_splits(card, &splits) {
        for mut s in read_list(card, files, rel, split, &media, &mut seen)? {
            if let Some(a) = annotations.get(&s.id) {
                s.description = a.description.clone();
                s.reasoning = a.reasoning.clone();
                s.transcript = a.text.clone();
            }
            if let Some(t) = transcripts.get(&s.id) {
                s.transcript = Some(t.clone());
            }
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::card::Layout;
    use crate::data::sources::LocalFiles;
    use crate::data::sources::table::testing::{card, write};
    use crate::storage::Location;

    fn fine_record(label: &str, reason: &str) -> String {
        format!(
            r#"{{"AU_list": ["AU05","AU26"], "visual_prior_list": ["Eyes widened"], "audio_prior_list": "speaks with a loud voice.", "peak_index": "0", "peak_AU_list": ["AU05"], "pseu_emotion": "{label}", "text": "Invented words.", "smp_reason_caption": "{reason}"}}"#
        )
    }

    fn layout(list: &str, annotations: &str) -> Layout {
        Layout {
            splits: [("train".to_string(), list.to_string()), ("test3".to_string(), "relative_test3_NCEV.txt".to_string())].into_iter().collect(),
            annotations: Some(annotations.into()),
            transcripts: Some("transcription_en_all.csv".into()),
            ..Default::default()
        }
    }

    #[test]
    fn reads_fine_lists_records_transcripts_and_eval_lists() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "MERR_fine_grained.txt", "\u{feff}sample_00000001 43 surprise\r\nsamplenew_00000002 120 doubt\r\n\r\n");
        write(d, "MERR_fine_grained.json", &format!("{{\"sample_00000001\": {}, \"samplenew_00000002\": {}}}", fine_record("surprise", "Eyes wide: surprise."), fine_record("doubt", "A frown of doubt.")));
        write(d, "transcription_en_all.csv", "name,sentence\nsample_00000001,\"Oh, my.\"\n");
        write(d, "relative_test3_NCEV.txt", "samplenew_00000003 125 sad -10\nsamplenew_00000004 80 happy 2.5\n");
        let c = card("merr", &MERR_LABELS, layout("MERR_fine_grained.txt", "MERR_fine_grained.json"));
        let s = load(&c, &LocalFiles::new(d)).unwrap();
        assert_eq!(s.len(), 4);
        let a = s.iter().find(|s| s.id == "sample_00000001").unwrap();
        assert_eq!((a.split.as_str(), a.label.as_deref(), a.transcript.as_deref(), a.reasoning.as_deref()), ("train", Some("surprise"), Some("Oh, my."), Some("Eyes wide: surprise.")));
        assert_eq!(a.media, Location::Local(d.join("video/sample_00000001.mp4")));
        let b = s.iter().find(|s| s.id == "samplenew_00000002").unwrap();
        assert_eq!((b.label.as_deref(), b.transcript.as_deref()), (Some("doubt"), Some("Invented words.")));
        let t: Vec<(&str, Option<f32>)> = s.iter().filter(|s| s.split == "test3").map(|s| (s.id.as_str(), s.valence)).collect();
        assert_eq!(t, vec![("samplenew_00000003", None), ("samplenew_00000004", Some(2.5))]);
    }

    #[test]
    fn coarse_captions_become_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "MERR_coarse_grained.txt", "sample_00000007 30 angry\n");
        write(dir.path(), "MERR_coarse_grained.json", r#"{"sample_00000007": {"caption": "Brows lowered; a sharp voice."}}"#);
        write(dir.path(), "relative_test3_NCEV.txt", "");
        write(dir.path(), "transcription_en_all.csv", "name,sentence\n");
        let c = card("merr", &MERR_LABELS, layout("MERR_coarse_grained.txt", "MERR_coarse_grained.json"));
        let s = load(&c, &LocalFiles::new(dir.path())).unwrap();
        assert_eq!((s[0].description.as_deref(), s[0].reasoning.as_deref()), (Some("Brows lowered; a sharp voice."), None));
    }

    #[test]
    fn malformed_rows_name_their_file_and_line() {
        let cases = [
            ("sample_1 43\n", "line 1", "2 fields"),
            ("sample_1 43 happy\nsample_2 many sad\n", "line 2", "frame count `many`"),
            ("sample_1 43 happy\n\nsample_2 4 bored\n", "line 3", "label `bored` is not one of"),
            ("sample_1 43 happy\nsample_1 44 sad\n", "line 2", "duplicate id `sample_1`"),
            ("../../etc/passwd 4 sad\n", "line 1", "cannot name a file"),
            ("sample_1 4 sad x\n", "line 1", "valence `x`"),
        ];
        for (list, line, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "list.txt", list);
            let c = card("merr", &MERR_LABELS, Layout { splits: [("train".to_string(), "list.txt".to_string())].into_iter().collect(), ..Default::default() });
            let e = load(&c, &LocalFiles::new(dir.path())).unwrap_err().to_string();
            assert!(e.contains(&format!("list.txt {line}")) && e.contains(why), "{list:?}: {e}");
        }
        // A record that is neither coarse nor fine, and a fine record missing a field.
        for (json, why) in [(r#"{"s": {"label": "x"}}"#, "neither a coarse record"), (r#"{"s": {"smp_reason_caption": "r"}}"#, "without `AU_list`")] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "list.txt", "s 3 sad\n");
            write(dir.path(), "a.json", json);
            let c = card("merr", &MERR_LABELS, Layout { splits: [("train".to_string(), "list.txt".to_string())].into_iter().collect(), annotations: Some("a.json".into()), ..Default::default() });
            let e = load(&c, &LocalFiles::new(dir.path())).unwrap_err().to_string();
            assert!(e.contains("a.json") && e.contains("record `s`") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn merr_labels_map_onto_the_six_mer_classes() {
        let mapped: Vec<&str> = MERR_LABELS.iter().map(|l| merr_to_mer6(l)).collect();
        assert_eq!(mapped, vec!["neutral", "angry", "happy", "sad", "worried", "surprise", "neutral", "neutral", "neutral"]);
    }
}
