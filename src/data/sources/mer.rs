//! [mer2023] and [mer2024]: the MER challenge releases (reference videollama2_mer.md §B.1, B.2, B.4).
//!
//! A split file is read by its kind:
//! - a label CSV `name, discrete[, valence]` (valence in [-5, 5]; MER2023's `train/test1/test2-label.csv`,
//!   `test3-label.csv` without valence; MER2024's `label-disdim.csv`);
//! - an open-vocabulary CSV `name, openset` with list strings (`"['excited', 'joyful']"`: the MER-OV track),
//!   which fills `openset` and leaves the discrete label empty;
//! - a `.txt` NCE / NCEV list (`name count label [valence]`, Emotion-LLaMA's evaluation lists).
//!
//! Defaults: mer2023 splits train/test1/test2/test3 → `<split>-label.csv`, media `{split}/{id}.*`;
//! mer2024 split train → `label-disdim.csv`, media `video-labeled/{id}.*`, transcripts
//! `label-transcription.csv` when the card names it.

use std::collections::BTreeMap;

use super::merr::read_list;
use super::table::{MediaPattern, Seen, card_label, parse_list_string, read_csv, read_transcripts};
use super::{DatasetFiles, SourceError};
use crate::data::{DatasetCard, Sample};

/// Valence range of the MER2023 annotations.
const VALENCE: std::ops::RangeInclusive<f32> = -5.0..=5.0;

fn read_split(card: &DatasetCard, files: &dyn DatasetFiles, rel: &str, split: &str, media: &MediaPattern, seen: &mut Seen) -> Result<Vec<Sample>, SourceError> {
    if rel.ends_with(".txt") {
        return read_list(card, files, rel, split, media, seen);
    }
    let t = read_csv(files, rel)?;
    let name = t.require(&["name"])?;
    let openset = t.col(&["openset"]);
    let discrete = if openset.is_some() { t.col(&["discrete"]) } else { Some(t.require(&["discrete"])?) };
    let valence = t.col(&["valence"]);
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, r) in &t.rows {
        let id = r[name].clone();
        if id.is_empty() {
            return Err(t.err(*line, "empty `name`"));
        }
        seen.check(split, &id, &t.file, *line)?;
        let label = match discrete.map(|c| r[c].as_str()).filter(|d| !d.is_empty()) {
            Some(d) => Some(card_label(card, d).map_err(|m| t.err(*line, m))?),
            None if openset.is_some() => None,
            None => return Err(t.err(*line, "empty `discrete` label")),
        };
        let valence = match valence.map(|c| r[c].as_str()).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => {
                let x: f32 = v.parse().map_err(|_| t.err(*line, format!("valence `{v}` is not a number")))?;
                if !VALENCE.contains(&x) {
                    return Err(t.err(*line, format!("valence {x} is outside [-5, 5]")));
                }
                Some(x)
            }
        };
        let openset = match openset {
            Some(c) => parse_list_string(&r[c]).map_err(|m| t.err(*line, m))?,
            None => Vec::new(),
        };
        let loc = media.locate(&id, split).map_err(|e| t.err(*line, e.to_string()))?;
        out.push(Sample { id, split: split.to_string(), media: loc, transcript: None, label, description: None, reasoning: None, valence, openset, cues: None });
    }
    Ok(out)
}

fn load_with(card: &DatasetCard, files: &dyn DatasetFiles, default_splits: BTreeMap<String, String>, default_media: &str) -> Result<Vec<Sample>, SourceError> {
    let l = &card.layout;
    let splits = if l.splits.is_empty() { default_splits } else { l.splits.clone() };
    let media = MediaPattern::new(files, l.media.as_deref().unwrap_or(default_media));
    let transcripts = read_transcripts(files, l.transcripts.as_deref())?;
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for (split, rel) in &super::table::ordered_splits(card, &splits) {
        for mut s in read_split(card, files, rel, split, &media, &mut seen)? {
            s.transcript = transcripts.get(&s.id).cloned();
            out.push(s);
        }
    }
    Ok(out)
}

pub fn load_mer2023(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let splits = ["train", "test1", "test2", "test3"].iter().map(|s| (s.to_string(), format!("{s}-label.csv"))).collect();
    load_with(card, files, splits, "{split}/{id}.*")
}

pub fn load_mer2024(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let splits = [("train".to_string(), "label-disdim.csv".to_string())].into_iter().collect();
    load_with(card, files, splits, "video-labeled/{id}.*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::card::Layout;
    use crate::data::sources::LocalFiles;
    use crate::data::sources::table::testing::{MER6, card, write};
    use crate::storage::Location;

    #[test]
    fn mer2023_release_layout() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "train-label.csv", "name,discrete,valence\nsample_00000001,happy,1.25\nsample_00000002,worried,-2.0\n");
        write(d, "test1-label.csv", "name,discrete,valence\nsample_00000003,sad,-4.75\n");
        write(d, "test2-label.csv", "name,discrete,valence\nsample_00000004,angry,0\n");
        write(d, "test3-label.csv", "name,discrete\nsamplenew_00000005,surprise\n");
        write(d, "train/sample_00000001.avi", "x");
        write(d, "transcription-engchi-polish.csv", "name,chinese,english\nsample_00000001,你好,\"Hello, there.\"\n");
        let mut c = card("mer2023", &MER6, Layout { transcripts: Some("transcription-engchi-polish.csv".into()), ..Default::default() });
        c.splits = vec!["train".into(), "test1".into(), "test2".into(), "test3".into()];
        let s = load_mer2023(&c, &LocalFiles::new(d)).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!((s[0].id.as_str(), s[0].label.as_deref(), s[0].valence, s[0].transcript.as_deref()), ("sample_00000001", Some("happy"), Some(1.25), Some("Hello, there.")));
        assert_eq!(s[0].media, Location::Local(d.join("train/sample_00000001.avi")));
        assert_eq!(s[1].media, Location::Local(d.join("train/sample_00000002.mp4")), "missing media keep the .mp4 name");
        let t3 = s.iter().find(|s| s.split == "test3").unwrap();
        assert_eq!((t3.label.as_deref(), t3.valence), (Some("surprise"), None));
    }

    #[test]
    fn mer2024_labels_noise_lists_and_open_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "label-disdim.csv", "name,discrete\nsample_00000001,neutral\n");
        write(d, "relative_test_noise_NCE.txt", "sample_00000009 70 sad\n");
        write(d, "check-openset.csv", "name,openset\nsample_00000010,\"['Excited', 'joyful', 'happy']\"\nsample_00000011,[]\n");
        let layout = Layout {
            splits: [("train", "label-disdim.csv"), ("noise", "relative_test_noise_NCE.txt"), ("ov", "check-openset.csv")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            ..Default::default()
        };
        let s = load_mer2024(&card("mer2024", &MER6, layout), &LocalFiles::new(d)).unwrap();
        let by = |id: &str| s.iter().find(|s| s.id == id).unwrap();
        assert_eq!(by("sample_00000001").media, Location::Local(d.join("video-labeled/sample_00000001.mp4")));
        assert_eq!((by("sample_00000009").split.as_str(), by("sample_00000009").label.as_deref()), ("noise", Some("sad")));
        let ov = by("sample_00000010");
        assert_eq!((ov.split.as_str(), ov.label.as_deref(), ov.openset.clone()), ("ov", None, vec!["excited".to_string(), "joyful".into(), "happy".into()]));
        assert!(by("sample_00000011").openset.is_empty());
    }

    #[test]
    fn malformed_rows_name_their_file_and_line() {
        let cases = [
            ("name,discrete,valence\ns1,happy,1\ns2,sad\n", "line 3", "2 fields, expected 3"),
            ("name,discrete,valence\ns1,happy,7.5\n", "line 2", "outside [-5, 5]"),
            ("name,discrete,valence\ns1,happy,high\n", "line 2", "valence `high`"),
            ("name,discrete,valence\ns1,joy,1\n", "line 2", "label `joy` is not one of"),
            ("name,discrete,valence\ns1,,1\n", "line 2", "empty `discrete`"),
            ("name,valence\ns1,1\n", "line 1", "no column `discrete`"),
            ("name,discrete\ns1,sad\ns1,happy\n", "line 3", "duplicate id `s1`"),
            ("name,discrete\n../s1,sad\n", "line 2", "cannot name a file"),
            ("name,openset\ns1,happy and sad\n", "line 2", "not a list string"),
        ];
        for (csv, line, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "labels.csv", csv);
            let c = card("mer2023", &MER6, Layout { splits: [("test1".to_string(), "labels.csv".to_string())].into_iter().collect(), ..Default::default() });
            let e = load_mer2023(&c, &LocalFiles::new(dir.path())).unwrap_err().to_string();
            assert!(e.contains(&format!("labels.csv {line}")) && e.contains(why), "{csv:?}: {e}");
        }
    }
}
