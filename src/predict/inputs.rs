//! What `predict --input` names, as a list of clips: a media file, a folder of them (not recursive; a
//! `clip.txt` beside `clip.mp4` is its transcript), or a manifest (`.csv` with a `path` column and an
//! optional `transcript` column, or `.jsonl` with `path`/`file` and `transcript` keys; an `id` column or
//! key names the clip, else the file stem). Each may be local or at `s3://` / `http(s)://`. Remote media
//! are not fetched here: a clip that cannot be fetched is that clip's error, not the batch's.

use std::collections::BTreeMap;
use std::path::Path;

use crate::storage::{Location, Storage};

/// One clip to predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    /// The output key besides the fingerprint: a manifest's `id`, else the file stem.
    pub id: String,
    pub media: Location,
    /// What the person says, when the input gives it.
    pub transcript: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("--input `{input}`: {detail}")]
pub struct InputListError {
    pub input: String,
    pub detail: String,
}

fn err(input: impl std::fmt::Display, detail: impl std::fmt::Display) -> InputListError {
    InputListError { input: input.to_string(), detail: detail.to_string() }
}

/// Video and audio extensions picked up from a folder.
pub const MEDIA_EXTENSIONS: [&str; 12] = ["mp4", "avi", "mkv", "mov", "webm", "flv", "m4v", "wav", "flac", "mp3", "m4a", "ogg"];

fn extension(name: &str) -> String {
    Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase()
}

pub fn is_media(name: &str) -> bool {
    MEDIA_EXTENSIONS.contains(&extension(name).as_str())
}

fn stem(name: &str) -> String {
    Path::new(name).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

/// The clips `input` names (see the module docs).
pub fn list_clips(input: &str, storage: &Storage) -> Result<Vec<Clip>, InputListError> {
    let loc = Location::parse(input).map_err(|e| err(input, e))?;
    let name = loc.file_name();
    let ext = extension(&name);
    if ext == "csv" || ext == "jsonl" {
        return read_manifest(&loc, &ext, storage);
    }
    match &loc {
        Location::Local(path) if path.is_dir() => list_local_dir(path),
        Location::Local(path) if !path.exists() => Err(err(input, "does not exist")),
        // A single file, whatever its extension: an unknown one is reported on its own line.
        Location::Local(_) => Ok(vec![Clip { id: stem(&name), media: loc.clone(), transcript: None }]),
        _ if !ext.is_empty() => Ok(vec![Clip { id: stem(&name), media: loc.clone(), transcript: None }]),
        _ => list_remote_dir(&loc, storage),
    }
}

fn list_local_dir(dir: &Path) -> Result<Vec<Clip>, InputListError> {
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir.display(), e))?;
    let mut files: Vec<std::path::PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    let mut clips = Vec::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if !is_media(&name) {
            continue;
        }
        let sidecar = f.with_extension("txt");
        let transcript = match sidecar.is_file() {
            true => Some(std::fs::read_to_string(&sidecar).map_err(|e| err(sidecar.display(), e))?.trim().to_string()),
            false => None,
        };
        clips.push(Clip { id: stem(&name), media: Location::Local(f.clone()), transcript });
    }
    if clips.is_empty() {
        return Err(err(dir.display(), format!("no media files ({}) in this folder", MEDIA_EXTENSIONS.join(", "))));
    }
    unique_ids(clips, &dir.display().to_string())
}

fn list_remote_dir(loc: &Location, storage: &Storage) -> Result<Vec<Clip>, InputListError> {
    let prefix = format!("{}/", loc.to_string().trim_end_matches('/'));
    let entries = storage.list(loc).map_err(|e| err(loc, e))?;
    let clips: Vec<Clip> = entries
        .into_iter()
        .map(|e| e.location)
        .filter(|l| l.to_string().strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/') && is_media(rest)))
        .map(|l| Clip { id: stem(&l.file_name()), media: l, transcript: None })
        .collect();
    if clips.is_empty() {
        return Err(err(loc, format!("no media files ({}) in this folder", MEDIA_EXTENSIONS.join(", "))));
    }
    unique_ids(clips, &loc.to_string())
}

/// Two clips with one id would share an output line: refuse, naming both.
fn unique_ids(clips: Vec<Clip>, input: &str) -> Result<Vec<Clip>, InputListError> {
    let mut seen: BTreeMap<&str, &Location> = BTreeMap::new();
    for c in &clips {
        if let Some(prev) = seen.insert(&c.id, &c.media) {
            return Err(err(input, format!("`{prev}` and `{}` have the same id `{}`; give them distinct ids (a manifest's `id` column)", c.media, c.id)));
        }
    }
    Ok(clips)
}

/// One manifest row before its path is resolved.
struct Row {
    id: Option<String>,
    path: String,
    transcript: Option<String>,
}

fn read_manifest(loc: &Location, ext: &str, storage: &Storage) -> Result<Vec<Clip>, InputListError> {
    let bytes = storage.read(loc).map_err(|e| err(loc, e))?;
    let text = String::from_utf8(bytes).map_err(|_| err(loc, "not UTF-8 text"))?;
    let rows = if ext == "csv" { csv_rows(&text, loc)? } else { jsonl_rows(&text, loc)? };
    if rows.is_empty() {
        return Err(err(loc, "the manifest lists no clips"));
    }
    let clips = rows
        .into_iter()
        .map(|r| {
            let media = resolve(loc, &r.path).map_err(|e| err(loc, format!("path `{}`: {e}", r.path)))?;
            let id = r.id.filter(|i| !i.is_empty()).unwrap_or_else(|| stem(&media.file_name()));
            let transcript = r.transcript.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
            Ok(Clip { id, media, transcript })
        })
        .collect::<Result<Vec<_>, _>>()?;
    unique_ids(clips, &loc.to_string())
}

/// A manifest row's path: a URI or an absolute local path as given; a relative one below the
/// manifest's folder (a remote manifest's relative paths cannot leave it).
fn resolve(manifest: &Location, path: &str) -> Result<Location, String> {
    if path.contains("://") {
        return Location::parse(path).map_err(|e| e.to_string());
    }
    match manifest {
        Location::Local(m) => {
            let p = Path::new(path);
            Ok(Location::Local(if p.is_absolute() { p.to_path_buf() } else { m.parent().unwrap_or(Path::new(".")).join(p) }))
        }
        remote => {
            let s = remote.to_string();
            let parent = s.rsplit_once('/').map(|(a, _)| a).unwrap_or(&s);
            Location::parse(parent).and_then(|p| p.join(path)).map_err(|e| e.to_string())
        }
    }
}

fn csv_rows(text: &str, loc: &Location) -> Result<Vec<Row>, InputListError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| err(loc, e))?.clone();
    let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim().to_ascii_lowercase().as_str()));
    let path_col = col(&["path", "file", "video", "media"])
        .ok_or_else(|| err(loc, format!("no `path` column (columns: {}); the header is `path[,transcript][,id]`", headers.iter().collect::<Vec<_>>().join(", "))))?;
    let (transcript_col, id_col) = (col(&["transcript", "sentence", "text"]), col(&["id", "name"]));
    let mut rows = Vec::new();
    for (k, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| err(loc, format!("row {}: {e}", k + 2)))?;
        let path = rec.get(path_col).unwrap_or_default().trim().to_string();
        if path.is_empty() {
            return Err(err(loc, format!("row {}: empty path", k + 2)));
        }
        rows.push(Row { id: id_col.and_then(|c| rec.get(c)).map(|s| s.trim().to_string()), path, transcript: transcript_col.and_then(|c| rec.get(c)).map(str::to_string) });
    }
    Ok(rows)
}

fn jsonl_rows(text: &str, loc: &Location) -> Result<Vec<Row>, InputListError> {
    let mut rows = Vec::new();
    for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(loc, format!("line {}: {e}", k + 1)))?;
        let s = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
        let path = s("path").or_else(|| s("file")).ok_or_else(|| err(loc, format!("line {}: no `path` (or `file`) key", k + 1)))?;
        rows.push(Row { id: s("id"), path, transcript: s("transcript") });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &Path) -> std::sync::Arc<Storage> {
        Storage::new(Default::default(), dir).unwrap()
    }

    #[test]
    fn folders_take_media_files_and_their_sidecar_transcripts() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b.mp4", "a.wav", "notes.md", "a.txt"] {
            std::fs::write(d.path().join(f), if f == "a.txt" { " hello there \n" } else { "" }).unwrap();
        }
        let clips = list_clips(d.path().to_str().unwrap(), &storage(d.path())).unwrap();
        let got: Vec<(&str, Option<&str>)> = clips.iter().map(|c| (c.id.as_str(), c.transcript.as_deref())).collect();
        assert_eq!(got, vec![("a", Some("hello there")), ("b", None)]);
    }

    #[test]
    fn manifests_resolve_paths_against_their_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("m.csv"), "path,transcript\nclips/x.mp4,\"hi, you\"\n/abs/y.wav,\n").unwrap();
        let clips = list_clips(d.path().join("m.csv").to_str().unwrap(), &storage(d.path())).unwrap();
        assert_eq!(clips[0], Clip { id: "x".into(), media: Location::Local(d.path().join("clips/x.mp4")), transcript: Some("hi, you".into()) });
        assert_eq!(clips[1].media, Location::Local("/abs/y.wav".into()));
        assert_eq!(clips[1].transcript, None);
        std::fs::write(d.path().join("m.jsonl"), "{\"id\":\"s1\",\"file\":\"c/s1.mp4\",\"transcript\":\"yes\"}\n\n").unwrap();
        let clips = list_clips(d.path().join("m.jsonl").to_str().unwrap(), &storage(d.path())).unwrap();
        assert_eq!((clips[0].id.as_str(), clips[0].transcript.as_deref()), ("s1", Some("yes")));
        // Remote manifests cannot reach outside their folder.
        let remote = Location::parse("s3://b/data/m.csv").unwrap();
        assert_eq!(resolve(&remote, "c/x.mp4").unwrap().to_string(), "s3://b/data/c/x.mp4");
        assert!(resolve(&remote, "../x.mp4").is_err());
    }

    #[test]
    fn bad_manifests_and_duplicate_ids_are_errors_naming_the_input() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("m.csv"), "video_file,label\nx.mp4,happy\n").unwrap();
        let e = list_clips(d.path().join("m.csv").to_str().unwrap(), &storage(d.path())).unwrap_err().to_string();
        assert!(e.contains("m.csv") && e.contains("no `path` column"), "{e}");
        std::fs::write(d.path().join("d.csv"), "path\na/x.mp4\nb/x.mp4\n").unwrap();
        let e = list_clips(d.path().join("d.csv").to_str().unwrap(), &storage(d.path())).unwrap_err().to_string();
        assert!(e.contains("same id `x`"), "{e}");
        let e = list_clips(d.path().join("nope").to_str().unwrap(), &storage(d.path())).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
