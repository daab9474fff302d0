//! [folder] A directory of media files (recursively; `layout.media` names a sub-folder, default the root;
//! a pattern like `videos/{id}.*` is read as its folder `videos`), each a sample whose id is its file stem,
//! all in the card's first split (default `test`). Labels and transcripts come from an optional CSV:
//! `layout.splits.<split>` or `labels.csv` at the root, columns `name` (the stem; `a.mp4` also accepted) and
//! `label` (or `discrete`), optionally `transcript`; files without a row are unlabelled, a row without a file
//! is an error (it is most likely a typo).

use std::collections::HashMap;
use std::path::Path;

use super::table::{MEDIA_EXTENSIONS, card_label, non_empty, read_csv};
use super::{DatasetFiles, SourceError};
use crate::data::{DatasetCard, Sample};

pub fn load(card: &DatasetCard, files: &dyn DatasetFiles) -> Result<Vec<Sample>, SourceError> {
    let split = card.splits.first().cloned().unwrap_or_else(|| "test".into());
    // Only the folder part of a pattern counts: ids are the stems found there.
    let media = card.layout.media.clone().unwrap_or_default();
    let dir = match media.find('{') {
        Some(at) => media[..at].rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default(),
        None => media,
    };
    let mut by_id: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, String> = HashMap::new();
    for rel in files.list(dir.trim_matches('/'))? {
        let p = Path::new(&rel);
        let is_media = p.extension().and_then(|e| e.to_str()).is_some_and(|e| MEDIA_EXTENSIONS.iter().any(|m| e.eq_ignore_ascii_case(m)));
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()).filter(|_| is_media) else { continue };
        if let Some(prev) = index.insert(stem.to_string(), rel.clone()) {
            return Err(SourceError::Other(format!("{} and {} have the same name `{stem}`; ids are file names, so keep one", files.describe(&prev), files.describe(&rel))));
        }
        by_id.push((stem.to_string(), rel));
    }
    let labels_rel = card.layout.splits.get(&split).cloned().or_else(|| files.exists("labels.csv").ok().filter(|e| *e).map(|_| "labels.csv".to_string()));
    let mut rows: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    if let Some(rel) = labels_rel {
        let t = read_csv(files, &rel)?;
        let name = t.require(&["name"])?;
        let label = t.require(&["label", "discrete"])?;
        let transcript = t.col(&["transcript", "english", "sentence"]);
        for (line, r) in &t.rows {
            let id = media_stem(&r[name]);
            if !index.contains_key(id) {
                return Err(t.err(*line, format!("no media file named `{}` in the folder", r[name])));
            }
            let lab = match non_empty(&r[label]) {
                Some(l) => Some(card_label(card, &l).map_err(|m| t.err(*line, m))?),
                None => None,
            };
            if rows.insert(id.to_string(), (lab, transcript.and_then(|c| non_empty(&r[c])))).is_some() {
                return Err(t.err(*line, format!("duplicate name `{}`", r[name])));
            }
        }
    }
    by_id
        .into_iter()
        .map(|(id, rel)| {
            let (label, transcript) = rows.remove(&id).unwrap_or_default();
            Ok(Sample { media: files.locate(&rel)?, id, split: split.clone(), transcript, label, description: None, reasoning: None, valence: None, openset: Vec::new(), cues: None })
        })
        .collect()
}

/// A label row's `name` as an id: `clip.mp4` names the file of stem `clip`.
fn media_stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if MEDIA_EXTENSIONS.iter().any(|m| ext.eq_ignore_ascii_case(m)) => stem,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::card::Layout;
    use crate::data::sources::LocalFiles;
    use crate::data::sources::table::testing::{MER6, card, write};
    use crate::storage::Location;

    #[test]
    fn videos_with_an_optional_labels_csv() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.mp4", "x");
        write(d, "sub/b.MOV", "x");
        write(d, "notes.txt", "x");
        write(d, "labels.csv", "name,label,transcript\na,Happy,\"Hi, you.\"\n");
        let mut c = card("folder", &MER6, Layout::default());
        c.splits = vec!["test".into()];
        let s = load(&c, &LocalFiles::new(d)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].id.as_str(), s[0].label.as_deref(), s[0].transcript.as_deref(), s[0].split.as_str()), ("a", Some("happy"), Some("Hi, you."), "test"));
        assert_eq!((s[1].id.as_str(), s[1].label.as_deref()), ("b", None));
        assert_eq!(s[1].media, Location::Local(d.join("sub/b.MOV")));
    }

    #[test]
    fn a_split_csv_in_a_sub_folder_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "videos/c1.webm", "x");
        write(d, "videos/c2.wav", "x");
        write(d, "other/c3.mp4", "x");
        write(d, "eval.csv", "name,discrete\nc1.webm,angry\nc2,\n");
        let mut c = card("folder", &MER6, Layout { media: Some("videos/{id}.*".into()), splits: [("eval".to_string(), "eval.csv".to_string())].into_iter().collect(), ..Default::default() });
        c.splits = vec!["eval".into()];
        let s = load(&c, &LocalFiles::new(d)).unwrap();
        let got: Vec<(&str, &str, Option<&str>)> = s.iter().map(|s| (s.id.as_str(), s.split.as_str(), s.label.as_deref())).collect();
        assert_eq!(got, vec![("c1", "eval", Some("angry")), ("c2", "eval", None)]);
        assert_eq!(s[0].media, Location::Local(d.join("videos/c1.webm")));
    }

    #[test]
    fn bad_rows_and_clashing_names() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.mp4", "x");
        write(dir.path(), "labels.csv", "name,label\na,sad\nghost,sad\n");
        let e = load(&card("folder", &MER6, Layout::default()), &LocalFiles::new(dir.path())).unwrap_err().to_string();
        assert!(e.contains("labels.csv line 3") && e.contains("no media file named `ghost`"), "{e}");
        write(dir.path(), "labels.csv", "name,label\na,bored\n");
        let e = load(&card("folder", &MER6, Layout::default()), &LocalFiles::new(dir.path())).unwrap_err().to_string();
        assert!(e.contains("labels.csv line 2") && e.contains("label `bored`"), "{e}");
        write(dir.path(), "x/a.wav", "x");
        let e = load(&card("folder", &MER6, Layout::default()), &LocalFiles::new(dir.path())).unwrap_err().to_string();
        assert!(e.contains("the same name `a`"), "{e}");
    }
}
