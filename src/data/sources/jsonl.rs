//! [jsonl] A manifest with one sample per line (`layout.splits`: split → manifest; default
//! `all = "manifest.jsonl"`, where each line's `split` field, default `train`, decides). Fields: `id`
//! (required), `media` or `file` (required, relative to the root), `split`, `label`, `transcript`,
//! `description`, `reasoning` or `reason`, `valence` (number), `openset` (array of strings); other fields
//! are ignored; blank lines are skipped.

use serde::Deserialize;

use super::table::{Seen, card_label, read_text};
use super::{DatasetFiles, SourceError};
use crate::data::{DatasetCard, Sample};

#[derive(Deserialize)]
struct Line {
    id: String,
    #[serde(alias = "file")]
    media: String,
    split: Option<String>,
    label: Option<String>,
    transcript: Option<String>,
    description: Option<String>,
    #[serde(alias = "reason")]
    reasoning: Option<String>,
    valence: Option<f32>,
    #[serde(default)]
    openset: Vec<String>,
}

pub fn load(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let splits = if card.layout.splits.is_empty() { [("all".to_string(), "manifest.jsonl".to_string())].into_iter().collect() } else { card.layout.splits.clone() };
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for (split_name, rel) in &super::table::ordered_splits(card, &splits) {
        let (file, text) = read_text(files, rel)?;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(raw).map_err(|e| SourceError::row(&file, line, e.to_string()))?;
            if l.id.trim().is_empty() {
                return Err(SourceError::row(&file, line, "empty `id`"));
            }
            let split = if split_name == "all" { l.split.unwrap_or_else(|| "train".into()) } else { split_name.clone() };
            let label = l.label.as_deref().filter(|s| !s.trim().is_empty()).map(|x| card_label(card, x)).transpose().map_err(|m| SourceError::row(&file, line, m))?;
            seen.check(&split, &l.id, &file, line)?;
            let media = files.locate(&l.media).map_err(|e| SourceError::row(&file, line, e.to_string()))?;
            out.push(Sample {
                id: l.id,
                split,
                media,
                transcript: l.transcript,
                label,
                description: l.description,
                reasoning: l.reasoning,
                valence: l.valence,
                openset: l.openset.into_iter().map(|w| w.to_lowercase()).collect(),
                cues: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::card::Layout;
    use crate::data::sources::LocalFiles;
    use crate::data::sources::table::testing::{MER6, card, write};
    use crate::storage::Location;

    #[test]
    fn one_sample_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "manifest.jsonl", "\u{feff}{\"id\":\"c1\",\"media\":\"clips/c1.mp4\",\"split\":\"test\",\"label\":\"Sad\",\"reason\":\"r\",\"valence\":-1.5,\"openset\":[\"Gloomy\"],\"extra\":1}\n\n{\"id\":\"c2\",\"file\":\"c2.wav\"}\n");
        let s = load(&card("jsonl", &MER6, Layout::default()), &LocalFiles::new(d)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].split.as_str(), s[0].label.as_deref(), s[0].reasoning.as_deref(), s[0].valence, s[0].openset.clone()), ("test", Some("sad"), Some("r"), Some(-1.5), vec!["gloomy".to_string()]));
        assert_eq!(s[0].media, Location::Local(d.join("clips/c1.mp4")));
        assert_eq!((s[1].split.as_str(), s[1].label.as_deref()), ("train", None));
    }

    #[test]
    fn bad_lines_name_their_file_and_line() {
        for (text, line, why) in [
            ("{\"id\":\"a\",\"media\":\"a.mp4\"}\n{\"id\":\"b\"}\n", "line 2", "missing field `media`"),
            ("{\"id\":\"a\",\"media\":\"a.mp4\"\n", "line 1", "EOF"),
            ("{\"id\":\"a\",\"media\":\"../a.mp4\"}\n", "line 1", "leaves the dataset root"),
            ("{\"id\":\"a\",\"media\":\"/etc/passwd\"}\n", "line 1", "leaves the dataset root"),
            ("{\"id\":\"a\",\"media\":\"a.mp4\",\"label\":\"joy\"}\n", "line 1", "label `joy`"),
            ("{\"id\":\"a\",\"media\":\"a.mp4\"}\n{\"id\":\"a\",\"media\":\"b.mp4\"}\n", "line 2", "duplicate id `a`"),
            ("{\"id\":\"a\",\"media\":\"a.mp4\",\"valence\":\"high\"}\n", "line 1", "invalid type"),
            ("\n{\"id\":\" \",\"media\":\"a.mp4\"}\n", "line 2", "empty `id`"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "manifest.jsonl", text);
            let e = load(&card("jsonl", &MER6, Layout::default()), &LocalFiles::new(dir.path())).unwrap_err().to_string();
            assert!(e.contains(&format!("manifest.jsonl {line}")) && e.contains(why), "{text:?}: {e}");
        }
    }
}
