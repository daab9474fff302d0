//! [affectgpt] MER-Caption / MER-Caption+ (AffectGPT; reference videollama2_mer.md §B.8):
//! - `layout.descriptions` (default `track3_train_mercaptionplus.csv`): `name, reason` → description;
//! - `layout.openset` (default `track2_train_mercaptionplus.csv`, optional): `name, openset` list strings;
//! - `layout.transcripts` (e.g. `subtitle_chieng.csv`: `name, chinese, english`);
//! - media `layout.media`, default `video/{id}.mp4`.
//!
//! Without `layout.splits` every id of the two files is in `train` (descriptions first, in file order).
//! With it, each split file is a CSV with a `name` column (and optionally `discrete`) listing its ids.
//! These sets have no discrete label set: a card may leave `labels` empty.

use std::collections::{HashMap, HashSet};

use super::table::{MediaPattern, Seen, Table, card_label, non_empty, parse_list_string, read_csv, read_transcripts};
use super::{DatasetFiles, SourceError};
use crate::data::{DatasetCard, Sample};

/// `name → value` of a two-column file, in file order, duplicates rejected.
fn by_name(t: &Table, value: usize) -> Result<Vec<(String, usize, String)>, SourceError> {
    let name = t.require(&["name"])?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (line, r) in &t.rows {
        if r[name].is_empty() {
            return Err(t.err(*line, "empty `name`"));
        }
        if !seen.insert(r[name].clone()) {
            return Err(t.err(*line, format!("duplicate name `{}`", r[name])));
        }
        out.push((r[name].clone(), *line, r[value].clone()));
    }
    Ok(out)
}

pub fn load(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let l = &card.layout;
    let desc_rel = l.descriptions.clone().unwrap_or_else(|| "track3_train_mercaptionplus.csv".into());
    let desc_table = read_csv(files, &desc_rel)?;
    let descriptions = by_name(&desc_table, desc_table.require(&["reason", "description"])?)?;
    // The open-set file is optional unless the card names it.
    let open_rel = l.openset.clone().unwrap_or_else(|| "track2_train_mercaptionplus.csv".into());
    let openset: Vec<(String, usize, Vec<String>)> = if l.openset.is_some() || files.exists(&open_rel)? {
        let t = read_csv(files, &open_rel)?;
        let rows = by_name(&t, t.require(&["openset"])?)?;
        rows.into_iter().map(|(n, line, v)| parse_list_string(&v).map(|w| (n, line, w)).map_err(|m| t.err(line, m))).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let desc_map: HashMap<&str, &str> = descriptions.iter().map(|(n, _, v)| (n.as_str(), v.as_str())).collect();
    let open_map: HashMap<&str, &Vec<String>> = openset.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
    let transcripts = read_transcripts(files, l.transcripts.as_deref())?;
    let media = MediaPattern::new(files, l.media.as_deref().unwrap_or("video/{id}.mp4"));

    // (split, id, file, line, label) in order.
    let mut members: Vec<(String, String, String, usize, Option<String>)> = Vec::new();
    if l.splits.is_empty() {
        let mut ids: Vec<(String, String, usize)> = descriptions.iter().map(|(n, line, _)| (n.clone(), desc_table.file.clone(), *line)).collect();
        let known: HashSet<&str> = desc_map.keys().copied().collect();
        ids.extend(openset.iter().filter(|(n, _, _)| !known.contains(n.as_str())).map(|(n, line, _)| (n.clone(), files.describe(&open_rel), *line)));
        members.extend(ids.into_iter().map(|(id, file, line)| ("train".to_string(), id, file, line, None)));
    } else {
        for (split, rel) in &super::table::ordered_splits(card, &l.splits) {
            let t = read_csv(files, rel)?;
            let name = t.require(&["name"])?;
            let discrete = t.col(&["discrete"]);
            for (line, r) in &t.rows {
                let label = match discrete.map(|c| r[c].as_str()).filter(|d| !d.is_empty()) {
                    Some(d) => Some(card_label(card, d).map_err(|m| t.err(*line, m))?),
                    None => None,
                };
                members.push((split.clone(), r[name].clone(), t.file.clone(), *line, label));
            }
        }
    }
    let mut seen = Seen::default();
    let mut out = Vec::with_capacity(members.len());
    for (split, id, file, line, label) in members {
        seen.check(&split, &id, &file, line)?;
        let loc = media.locate(&id, &split).map_err(|e| SourceError::row(&file, line, e.to_string()))?;
        out.push(Sample {
            description: desc_map.get(id.as_str()).and_then(|d| non_empty(d)),
            openset: open_map.get(id.as_str()).map(|v| (*v).clone()).unwrap_or_default(),
            transcript: transcripts.get(&id).cloned(),
            id,
            split,
            media: loc,
            label,
            reasoning: None,
            valence: None,
            cues: None,
        });
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
    fn descriptions_open_set_labels_and_subtitles() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "track3_train_mercaptionplus.csv", "name,reason\nsample_00000001,\"The woman smiles, and her voice rises: she is delighted.\"\nsample_00000002,A lowered gaze and a flat voice.\n");
        write(d, "track2_train_mercaptionplus.csv", "name,openset\nsample_00000001,\"['delighted', 'Happy']\"\nsample_00000003,\"['calm']\"\n");
        write(d, "subtitle_chieng.csv", "name,chinese,english\nsample_00000002,没事,It's fine.\n");
        let c = card("affectgpt", &[], Layout { transcripts: Some("subtitle_chieng.csv".into()), ..Default::default() });
        let s = load(&c, &LocalFiles::new(d)).unwrap();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["sample_00000001", "sample_00000002", "sample_00000003"]);
        assert_eq!(s[0].description.as_deref(), Some("The woman smiles, and her voice rises: she is delighted."));
        assert_eq!(s[0].openset, vec!["delighted", "happy"]);
        assert_eq!((s[1].transcript.as_deref(), s[1].openset.len()), (Some("It's fine."), 0));
        assert_eq!((s[2].description.as_deref(), s[2].openset.clone()), (None, vec!["calm".to_string()]));
        assert!(s.iter().all(|s| s.split == "train" && s.label.is_none()));
        assert_eq!(s[0].media, Location::Local(d.join("video/sample_00000001.mp4")));
    }

    #[test]
    fn explicit_splits_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "track3_train_mercaptionplus.csv", "name,reason\ns1,r1\ns2,r2\n");
        write(d, "test.csv", "name,discrete\ns2,Sad\n");
        let c = card("affectgpt", &MER6, Layout { splits: [("test".to_string(), "test.csv".to_string())].into_iter().collect(), ..Default::default() });
        let s = load(&c, &LocalFiles::new(d)).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].id.as_str(), s[0].split.as_str(), s[0].label.as_deref(), s[0].description.as_deref()), ("s2", "test", Some("sad"), Some("r2")));
    }

    #[test]
    fn malformed_rows_name_their_file_and_line() {
        let cases = [
            ("name,reason\ns1,r\ns1,again\n", None, "track3_train_mercaptionplus.csv line 3", "duplicate name `s1`"),
            ("name,text\ns1,r\n", None, "track3_train_mercaptionplus.csv line 1", "no column `reason`"),
            ("name,reason\ns1,r\ns2,a,b\n", None, "track3_train_mercaptionplus.csv line 3", "3 fields, expected 2"),
            ("name,reason\ns1,r\n", Some("name,openset\ns1,calm\n"), "track2_train_mercaptionplus.csv line 2", "not a list string"),
            ("name,reason\n../x,r\n", None, "track3_train_mercaptionplus.csv line 2", "cannot name a file"),
        ];
        for (desc, open, at, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "track3_train_mercaptionplus.csv", desc);
            if let Some(o) = open {
                write(dir.path(), "track2_train_mercaptionplus.csv", o);
            }
            let e = load(&card("affectgpt", &[], Layout::default()), &LocalFiles::new(dir.path())).unwrap_err().to_string();
            assert!(e.contains(at) && e.contains(why), "{desc:?}: {e}");
        }
    }
}
