//! [dfew] DFEW (Jiang et al., ACM MM 2020): 7 classes and a 5-fold split.
//! - split files (`layout.splits`; default `train1..5` / `test1..5` →
//!   `EmoLabel_DataSplit/{train,test}(single-labeled)/set_{k}.csv`), header `video_name,label`;
//!   `video_name` is the clip number (`1` → id `00001`), `label` 1..7 = happy, sad, neutral, angry,
//!   surprise, disgust, fear (through `card.label_map` when the card gives one);
//! - media `layout.media`, default `Clip/original/{id}.*` (assumed: DFEW ships the original clips and frame
//!   folders; point the pattern at your copy's clips).

use std::collections::BTreeMap;

use super::table::{MediaPattern, Seen, card_label, read_csv};
use super::{DatasetFiles, SourceError};
use crate::data::{DatasetCard, Sample};

/// DFEW's classes in label-number order (1..7).
pub const DFEW_LABELS: [&str; 7] = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"];

pub fn default_splits() -> BTreeMap<String, String> {
    (1..=5)
        .flat_map(|k| [(format!("train{k}"), format!("EmoLabel_DataSplit/train(single-labeled)/set_{k}.csv")), (format!("test{k}"), format!("EmoLabel_DataSplit/test(single-labeled)/set_{k}.csv"))])
        .collect()
}

pub fn load(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let l = &card.layout;
    let splits = if l.splits.is_empty() { default_splits() } else { l.splits.clone() };
    let media = MediaPattern::new(files, l.media.as_deref().unwrap_or("Clip/original/{id}.*"));
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for (split, rel) in &super::table::ordered_splits(card, &splits) {
        let t = read_csv(files, rel)?;
        let name = t.require(&["video_name"])?;
        let label = t.require(&["label"])?;
        for (line, r) in &t.rows {
            let n: u32 = r[name].parse().map_err(|_| t.err(*line, format!("video_name `{}` is not a clip number", r[name])))?;
            let id = format!("{n:05}");
            let raw = r[label].as_str();
            let mapped = if card.label_map.is_empty() {
                let k: usize = raw.parse().map_err(|_| t.err(*line, format!("label `{raw}` is not a number 1..7")))?;
                DFEW_LABELS.get(k.wrapping_sub(1)).ok_or_else(|| t.err(*line, format!("label {k} is outside 1..7")))?.to_string()
            } else {
                raw.to_string()
            };
            let lab = card_label(card, &mapped).map_err(|m| t.err(*line, m))?;
            seen.check(split, &id, &t.file, *line)?;
            let loc = media.locate(&id, split).map_err(|e| t.err(*line, e.to_string()))?;
            out.push(Sample { id, split: split.clone(), media: loc, transcript: None, label: Some(lab), description: None, reasoning: None, valence: None, openset: Vec::new(), cues: None });
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

    fn write_folds(d: &std::path::Path) {
        for k in 1..=5 {
            write(d, &format!("EmoLabel_DataSplit/train(single-labeled)/set_{k}.csv"), &format!("video_name,label\n{},1\n{},7\n", k, 10 + k));
            write(d, &format!("EmoLabel_DataSplit/test(single-labeled)/set_{k}.csv"), &format!("video_name,label\n{},3\n", 100 + k));
        }
    }

    #[test]
    fn five_folds_with_numbered_labels() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_folds(d);
        write(d, "Clip/original/00001.mp4", "x");
        let c = card("dfew", &DFEW_LABELS, Layout::default());
        let s = load(&c, &LocalFiles::new(d)).unwrap();
        assert_eq!(s.len(), 15);
        let tr1: Vec<(&str, &str)> = s.iter().filter(|s| s.split == "train1").map(|s| (s.id.as_str(), s.label.as_deref().unwrap())).collect();
        assert_eq!(tr1, vec![("00001", "happy"), ("00011", "fear")]);
        assert_eq!(s.iter().find(|s| s.split == "test5").map(|s| (s.id.as_str(), s.label.as_deref())), Some(("00105", Some("neutral"))));
        assert_eq!(s.iter().find(|s| s.id == "00001").map(|s| s.media.clone()), Some(Location::Local(d.join("Clip/original/00001.mp4"))));
    }

    #[test]
    fn label_map_from_the_card() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "s.csv", "video_name,label\n7,2\n");
        let mut c = card("dfew", &["sad", "other"], Layout { splits: [("test1".to_string(), "s.csv".to_string())].into_iter().collect(), ..Default::default() });
        c.label_map = [("2".to_string(), "sad".to_string())].into_iter().collect();
        let s = load(&c, &LocalFiles::new(dir.path())).unwrap();
        assert_eq!((s[0].id.as_str(), s[0].label.as_deref()), ("00007", Some("sad")));
    }

    #[test]
    fn malformed_rows_name_their_file_and_line() {
        for (csv, line, why) in [
            ("video_name,label\n1,8\n", "line 2", "outside 1..7"),
            ("video_name,label\nclip1,1\n", "line 2", "not a clip number"),
            ("video_name,label\n1,happy\n", "line 2", "not a number 1..7"),
            ("video_name,label\n1,1\n1,2\n", "line 3", "duplicate id `00001`"),
            ("name,label\n1,1\n", "line 1", "no column `video_name`"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "f.csv", csv);
            let c = card("dfew", &DFEW_LABELS, Layout { splits: [("train1".to_string(), "f.csv".to_string())].into_iter().collect(), ..Default::default() });
            let e = load(&c, &LocalFiles::new(dir.path())).unwrap_err().to_string();
            assert!(e.contains(&format!("f.csv {line}")) && e.contains(why), "{csv:?}: {e}");
        }
    }
}
