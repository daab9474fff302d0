//! Helpers every source parser shares: CSV tables with line numbers, MERTools list strings, label checks,
//! media patterns and transcript files.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use super::{DatasetFiles, SourceError};
use crate::data::DatasetCard;
use crate::storage::Location;

/// Extensions a `.*` media pattern matches.
pub const MEDIA_EXTENSIONS: [&str; 11] = ["mp4", "avi", "mkv", "mov", "webm", "flv", "wav", "flac", "mp3", "m4a", "ogg"];

/// A CSV file read whole: its header and its records with their 1-based line numbers.
pub struct Table {
    pub file: String,
    pub headers: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

/// Reads a CSV with a header row. A record with another number of fields than the header is an error
/// naming the file and line.
pub fn read_csv(files: &dyn DatasetFiles, rel: &str) -> Result<Table, SourceError> {
    let file = files.describe(rel);
    let bytes = files.read(rel)?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&bytes);
    let mut r = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).flexible(false).from_reader(bytes);
    let headers: Vec<String> = r.headers().map_err(|e| SourceError::row(&file, 1, e.to_string()))?.iter().map(|h| h.trim().to_lowercase()).collect();
    // Line numbers from byte offsets: the csv crate's own line count skips blank lines.
    // A record's position may point at the blank lines before it: skip them.
    let line_of = |pos: Option<&csv::Position>| {
        pos.map(|p| {
            let mut at = (p.byte() as usize).min(bytes.len());
            while at < bytes.len() && (bytes[at] == b'\n' || bytes[at] == b'\r') {
                at += 1;
            }
            bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1
        })
        .unwrap_or(0)
    };
    let mut rows = Vec::new();
    for rec in r.records() {
        match rec {
            Ok(rec) => {
                let line = line_of(rec.position());
                if rec.iter().all(|c| c.is_empty()) {
                    continue;
                }
                rows.push((line, rec.iter().map(str::to_string).collect()));
            }
            Err(e) => {
                let line = line_of(e.position());
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!("{len} fields, expected {expected_len} (header: {})", headers.join(", ")),
                    _ => e.to_string(),
                };
                return Err(SourceError::row(&file, line, message));
            }
        }
    }
    Ok(Table { file, headers, rows })
}

/// [`read_csv`] of a file given by path (command-line inputs rather than a dataset root).
pub fn read_csv_file(path: &Path) -> Result<Table, SourceError> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    read_csv(&super::LocalFiles::new(dir), &name)
}

impl Table {
    /// Index of the first present column among `names`.
    pub fn col(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|n| self.headers.iter().position(|h| h == n))
    }

    /// Like [`Table::col`], or an error (line 1: the header) listing the columns found.
    pub fn require(&self, names: &[&str]) -> Result<usize, SourceError> {
        self.col(names).ok_or_else(|| {
            let want = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or ");
            SourceError::row(&self.file, 1, format!("no column {want} (columns: {})", self.headers.join(", ")))
        })
    }

    pub fn err(&self, line: usize, message: impl Into<String>) -> SourceError {
        SourceError::row(&self.file, line, message)
    }
}

/// A MERTools list string (`"['excited', 'joyful']"`): the words between quotes, lower-cased and trimmed,
/// as MERTools' `string_to_list` (split on `'` / `"`) reads it. `[]`, `['']` or an empty cell is an empty
/// list. Unlike MERTools, text that is not a bracketed list, or an unquoted word between the quotes, is an
/// error rather than a garbage label, and `"it's"` stays one word.
pub fn parse_list_string(s: &str) -> Result<Vec<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let inner = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')).ok_or_else(|| format!("`{t}` is not a list string like ['happy', 'excited']"))?;
    let mut out = Vec::new();
    let mut rest = inner;
    loop {
        let next = rest.find(['\'', '"']).unwrap_or(rest.len());
        let between = &rest[..next];
        if !between.chars().all(|c| c.is_whitespace() || c == ',') {
            return Err(format!("`{t}`: `{}` is not a quoted word (expected a list string like ['happy', 'excited'])", between.trim()));
        }
        let Some(q) = rest[next..].chars().next() else { break };
        let after = &rest[next + 1..];
        let end = after.find(q).ok_or_else(|| format!("`{t}`: unclosed quote"))?;
        let word = after[..end].trim().to_lowercase();
        if !word.is_empty() {
            out.push(word);
        }
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// A text file (a `.txt` list, a JSONL manifest) as UTF-8, a leading BOM dropped; with its name for messages.
pub fn read_text(files: &dyn DatasetFiles, rel: &str) -> Result<(String, String), SourceError> {
    let file = files.describe(rel);
    let text = String::from_utf8(files.read(rel)?).map_err(|e| SourceError::Read { file: file.clone(), message: format!("not UTF-8: {e}") })?;
    let text = text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text);
    Ok((file, text))
}

/// The card label for a raw label: through `label_map`, lower-cased, and (when the card has labels) one
/// of them.
pub fn card_label(card: &DatasetCard, raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let mapped = card.label_map.get(raw).cloned().unwrap_or_else(|| raw.to_string()).to_lowercase();
    if !card.labels.is_empty() && !card.labels.contains(&mapped) {
        return Err(format!("label `{raw}` is not one of {}; map it with `label_map` in the dataset card", card.labels.join(", ")));
    }
    Ok(mapped)
}

/// A layout's split files in the card's split order, then the others by name.
pub fn ordered_splits(card: &DatasetCard, splits: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = card.splits.iter().filter_map(|s| splits.get(s).map(|f| (s.clone(), f.clone()))).collect();
    out.extend(splits.iter().filter(|(s, _)| !card.splits.contains(s)).map(|(s, f)| (s.clone(), f.clone())));
    out
}

/// Rejects a second sample with the same id in a split.
#[derive(Default)]
pub struct Seen(HashSet<(String, String)>);

impl Seen {
    pub fn check(&mut self, split: &str, id: &str, file: &str, line: usize) -> Result<(), SourceError> {
        if !self.0.insert((split.to_string(), id.to_string())) {
            return Err(SourceError::row(file, line, format!("duplicate id `{id}` in split `{split}`")));
        }
        Ok(())
    }
}

/// A sample's media from a layout pattern (`video/{id}.mp4`, `{split}/{id}.*`). With `.*` the folder is
/// listed once and the media file of that stem taken; when none exists the `.mp4` name is used (a missing
/// file is the run's `on_error` business).
pub struct MediaPattern<'a> {
    files: &'a dyn DatasetFiles,
    pattern: String,
    listings: Mutex<HashMap<String, HashMap<String, String>>>,
}

impl<'a> MediaPattern<'a> {
    pub fn new(files: &'a dyn DatasetFiles, pattern: &str) -> Self {
        MediaPattern { files, pattern: pattern.to_string(), listings: Mutex::new(HashMap::new()) }
    }

    pub fn locate(&self, id: &str, split: &str) -> Result<Location, SourceError> {
        if id.is_empty() || id.contains('/') || id.contains('\\') || id == ".." || id == "." {
            return Err(SourceError::Other(format!("id `{id}` cannot name a file below the dataset root")));
        }
        let rel = self.pattern.replace("{id}", id).replace("{split}", split);
        let Some(stem_rel) = rel.strip_suffix(".*") else { return self.files.locate(&rel) };
        let (dir, _) = stem_rel.rsplit_once('/').unwrap_or(("", stem_rel));
        let mut listings = self.listings.lock().map_err(|_| SourceError::Other("listing lock poisoned".into()))?;
        if !listings.contains_key(dir) {
            let listed = self.files.list(dir).unwrap_or_default();
            let mut by_stem = HashMap::new();
            for f in listed {
                let p = Path::new(&f);
                let in_dir = p.parent().map(|d| d.to_string_lossy().replace('\\', "/")).unwrap_or_default() == dir;
                let is_media = p.extension().and_then(|e| e.to_str()).is_some_and(|e| MEDIA_EXTENSIONS.iter().any(|m| e.eq_ignore_ascii_case(m)));
                if in_dir && is_media && let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    by_stem.entry(stem.to_string()).or_insert(f.clone());
                }
            }
            listings.insert(dir.to_string(), by_stem);
        }
        match listings.get(dir).and_then(|m| m.get(id)) {
            Some(found) => self.files.locate(found),
            None => self.files.locate(&format!("{stem_rel}.mp4")),
        }
    }
}

/// `name → English transcript` from a transcripts CSV (`name` + `english` / `sentence_en` / `sentence`);
/// empty when the file does not exist (with a warning).
pub fn read_transcripts(files: &dyn DatasetFiles, rel: Option<&str>) -> Result<HashMap<String, String>, SourceError> {
    let Some(rel) = rel else { return Ok(HashMap::new()) };
    // Transcripts are optional: without the file the samples simply have none.
    if !files.exists(rel)? {
        tracing::warn!(file = %files.describe(rel), "no transcripts file; samples have no transcript");
        return Ok(HashMap::new());
    }
    let t = read_csv(files, rel)?;
    let name = t.require(&["name"])?;
    let text = t.require(&["english", "sentence_en", "sentence"])?;
    Ok(t.rows.iter().filter(|(_, r)| !r[text].is_empty()).map(|(_, r)| (r[name].clone(), r[text].clone())).collect())
}

/// Text or None when empty.
pub fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::data::card::Layout;

    /// A card for tests.
    pub fn card(source: &str, labels: &[&str], layout: Layout) -> DatasetCard {
        DatasetCard {
            name: format!("{source}-test"),
            source: source.into(),
            description: String::new(),
            root: String::new(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            label_map: Default::default(),
            splits: vec!["train".into()],
            layout,
            num_samples: Default::default(),
            licence: String::new(),
            citation: String::new(),
        }
    }

    pub fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub const MER6: [&str; 6] = ["neutral", "angry", "happy", "sad", "worried", "surprise"];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sources::LocalFiles;

    #[test]
    fn list_strings_as_mertools_reads_them() {
        assert_eq!(parse_list_string("['Excited', 'joyful', \"happy\"]").unwrap(), vec!["excited", "joyful", "happy"]);
        assert_eq!(parse_list_string("[]").unwrap(), Vec::<String>::new());
        assert_eq!(parse_list_string("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_list_string(" [''] ").unwrap(), Vec::<String>::new());
        assert_eq!(parse_list_string("[\"it's\", ' calm ']").unwrap(), vec!["it's", "calm"]);
        assert!(parse_list_string("happy, sad").is_err());
        assert!(parse_list_string("[happy, sad]").unwrap_err().contains("`happy, sad` is not a quoted word"));
        assert!(parse_list_string("['happy' and 'sad']").is_err());
        assert!(parse_list_string("['happy").is_err());
    }

    #[test]
    fn csv_rows_keep_their_line_numbers_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        testing::write(dir.path(), "l.csv", "\u{feff}name,discrete\nsample_1,happy\n\n\"sample_2\",\"sad, really\"\nsample_3\n");
        let files = LocalFiles::new(dir.path());
        let e = read_csv(&files, "l.csv").err().unwrap().to_string();
        assert!(e.contains("l.csv line 5") && e.contains("1 fields, expected 2"), "{e}");
        testing::write(dir.path(), "l.csv", "\u{feff}Name,discrete\nsample_1,happy\n\n\"sample_2\",\"sad, really\"\n");
        let t = read_csv(&files, "l.csv").unwrap();
        assert_eq!(t.headers, vec!["name", "discrete"]);
        assert_eq!(t.rows, vec![(2, vec!["sample_1".to_string(), "happy".to_string()]), (4, vec!["sample_2".to_string(), "sad, really".to_string()])]);
        assert!(t.require(&["valence"]).unwrap_err().to_string().contains("l.csv line 1: no column `valence` (columns: name, discrete)"));
    }

    #[test]
    fn media_patterns_resolve_extensions_once_and_reject_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        testing::write(dir.path(), "test1/sample_1.avi", "x");
        testing::write(dir.path(), "test1/sample_2.mp4", "x");
        testing::write(dir.path(), "test1/sample_2.txt", "x");
        let files = LocalFiles::new(dir.path());
        let m = MediaPattern::new(&files, "{split}/{id}.*");
        assert_eq!(m.locate("sample_1", "test1").unwrap(), Location::Local(dir.path().join("test1/sample_1.avi")));
        assert_eq!(m.locate("sample_2", "test1").unwrap(), Location::Local(dir.path().join("test1/sample_2.mp4")));
        assert_eq!(m.locate("sample_9", "test1").unwrap(), Location::Local(dir.path().join("test1/sample_9.mp4")));
        assert!(m.locate("../x", "test1").is_err());
        let fixed = MediaPattern::new(&files, "video/{id}.mp4");
        assert_eq!(fixed.locate("a", "train").unwrap(), Location::Local(dir.path().join("video/a.mp4")));
    }
}
