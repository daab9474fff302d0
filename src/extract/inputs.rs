//! What `--input` names: a media file, a folder of them, or a recipe (its dataset's samples).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
/// or a single media file.
pub fn list_inputs(input: &Path, show_progress: bool) -> Result<Vec<InputItem>, ExtractError> {
    if !input.exists() {
        return Err(input_err(input.display(), "does not exist"));
    }
    if input.is_dir() {
        return list_dir(input);
    }
    if input.extension().is_some_and(|e| e == "toml") {
        return list_recipe(input, show_progress);
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

fn list_recipe(path: &Path, show_progress: bool) -> Result<Vec<InputItem>, ExtractError> {
    let loaded = crate::recipe::load_recipe(path, &[]).map_err(|e| input_err(path.display(), e))?;
    let r = &loaded.recipe;
    let start = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let registry = Registry::discover(start).map_err(|e| input_err(path.display(), e))?;
    let (_, card) = registry.dataset(&r.data.dataset).map_err(|e| input_err(path.display(), e))?;
    let cache = crate::run::cache_root(&r.runtime.cache_dir);
    let samples = crate::data::source::load_samples(card, &r.data.synth, &cache, show_progress).map_err(|e| input_err(path.display(), e))?;
    Ok(samples.into_iter().map(|s| InputItem { id: s.id, path: s.media }).collect())
}
