//! What `--input` names: a media file, a folder of them, or a recipe (its dataset's samples).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{Location, Storage};

use super::{ExtractError, input_err};
use crate::registry::Registry;

/// One sample to extract: its id (the output key) and media file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    pub id: String,
    pub path: PathBuf,
}

/// Extensions of media files picked up from a folder (video, audio, and images such as OpenFace's .bmp
/// face crops).
pub const MEDIA_EXTENSIONS: [&str; 15] = ["mp4", "avi", "mkv", "mov", "webm", "flv", "wav", "flac", "mp3", "m4a", "ogg", "jpg", "jpeg", "png", "bmp"];

/// Lists the samples of `input`: a `.toml` recipe, a directory (its media files, sorted, not recursive),
/// or a single media file; each may be remote (`s3://`, `http(s)://`: fetched into the read-through cache).
pub fn list_inputs_at(input: &str, storage: &Arc<Storage>, show_progress: bool) -> Result<Vec<InputItem>, ExtractError> {
    let loc = Location::parse(input).map_err(|e| input_err(input, e))?;
    let Location::Local(path) = &loc else { return list_remote(&loc, storage, show_progress) };
    if !path.exists() {
        return Err(input_err(path.display(), "does not exist"));
    }
    if path.extension().is_some_and(|e| e == "toml") {
        return list_recipe(path, storage, show_progress);
    }
    list_local(path)
}

fn is_media(name: &str) -> bool {
    Path::new(name).extension().and_then(|e| e.to_str()).is_some_and(|x| MEDIA_EXTENSIONS.iter().any(|m| x.eq_ignore_ascii_case(m)))
}

/// A remote media file, or the media files directly in a remote folder, fetched in parallel.
fn list_remote(loc: &Location, storage: &Arc<Storage>, show_progress: bool) -> Result<Vec<InputItem>, ExtractError> {
    let name = loc.file_name();
    let locs: Vec<Location> = if is_media(&name) {
        vec![loc.clone()]
    } else {
        let prefix = format!("{}/", loc.to_string().trim_end_matches('/'));
        let entries = storage.list(loc).map_err(|e| input_err(loc, e))?;
        let direct: Vec<Location> = entries
            .into_iter()
            .map(|e| e.location)
            .filter(|l| l.to_string().strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/') && is_media(rest)))
            .collect();
        if direct.is_empty() {
            return Err(input_err(loc, format!("no media files ({}) in this folder", MEDIA_EXTENSIONS.join(", "))));
        }
        direct
    };
    fetch_all(locs, storage, show_progress)
}

/// Makes remote media local (in parallel, with a progress bar); ids are file stems.
fn fetch_all(locs: Vec<Location>, storage: &Arc<Storage>, show_progress: bool) -> Result<Vec<InputItem>, ExtractError> {
    let bar = crate::progress::bar(locs.len() as u64, "fetch", show_progress);
    let results = storage.prefetch(&locs, Some(&bar));
    bar.finish_and_clear();
    locs.iter()
        .zip(results)
        .map(|(l, r)| {
            let path = r.map_err(|e| input_err(l, e))?;
            Ok(InputItem { id: stem(Path::new(&l.file_name())), path })
        })
        .collect()
}

/// A local media file, or the media files of a local folder.
fn list_local(input: &Path) -> Result<Vec<InputItem>, ExtractError> {
    if input.is_dir() {
        return list_dir(input);
    }
    Ok(vec![InputItem { id: stem(input), path: input.to_path_buf() }])
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

fn list_dir(dir: &Path) -> Result<Vec<InputItem>, ExtractError> {
    let entries = std::fs::read_dir(dir).map_err(|e| input_err(dir.display(), e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| MEDIA_EXTENSIONS.iter().any(|m| x.eq_ignore_ascii_case(m))))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(input_err(dir.display(), format!("no media files ({}) in this folder", MEDIA_EXTENSIONS.join(", "))));
    }
    // Ids are file stems, as MERTools names its feature files; two files with one stem would collide.
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let id = stem(&f);
        if let Some(prev) = seen.insert(id.clone(), f.clone()) {
            return Err(input_err(dir.display(), format!("`{}` and `{}` have the same name `{id}`; features are keyed by name, so keep one", prev.display(), f.display())));
        }
        out.push(InputItem { id, path: f });
    }
    Ok(out)
}

fn list_recipe(path: &Path, storage: &Arc<Storage>, show_progress: bool) -> Result<Vec<InputItem>, ExtractError> {
    let loaded = crate::recipe::load_recipe(path, &[]).map_err(|e| input_err(path.display(), e))?;
    let r = &loaded.recipe;
    let start = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let registry = Registry::discover(start).map_err(|e| input_err(path.display(), e))?;
    let (card_path, card) = registry.dataset(&r.data.dataset).map_err(|e| input_err(path.display(), e))?;
    let cache = crate::storage::cache_root(&r.runtime.cache_dir);
    let storage = if r.storage != *storage.config() { Storage::new(r.storage.clone(), &cache).map_err(|e| input_err(path.display(), e))? } else { storage.clone() };
    let root = crate::data::dataset::dataset_root(card, card_path, &r.data.roots).map_err(|e| input_err(path.display(), e))?;
    let samples = crate::data::dataset::load_dataset(card, root.as_ref(), &storage, &r.data.synth, &cache, show_progress).map_err(|e| input_err(path.display(), e))?;
    if samples.iter().any(|s| s.media.is_remote()) {
        let ids: Vec<String> = samples.iter().map(|s| s.id.clone()).collect();
        let fetched = fetch_all(samples.into_iter().map(|s| s.media).collect(), &storage, show_progress)?;
        return Ok(ids.into_iter().zip(fetched).map(|(id, it)| InputItem { id, path: it.path }).collect());
    }
    Ok(samples.into_iter().filter_map(|s| match s.media {
        Location::Local(path) => Some(InputItem { id: s.id, path }),
        _ => None,
    }).collect())
}
