//! Recipe locks: `FILE.lock` beside a recipe records the sha256 of every base it extends (local path
//! or remote URI) and of the plugin manifests and dataset cards it names. `run` refuses a recipe whose
//! lock no longer matches (unless `--relock`) and records the lock in `run_info.json`.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LoadedRecipe;
use crate::registry::Registry;

/// Version of the lock file format.
pub const LOCK_VERSION: u32 = 1;

/// One locked file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    /// Bases: the remote URI, or the local path relative to the locked recipe's folder. Manifests and
    /// cards: `llm NAME`, `encoder NAME`, the dataset's name.
    pub name: String,
    /// Manifests and cards: the file, relative to the project root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub sha256: String,
}

/// The contents of `FILE.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeLock {
    pub version: u32,
    /// Every base the recipe extends, directly or through other bases, in merge order.
    #[serde(default, rename = "base")]
    pub bases: Vec<Locked>,
    /// Plugin manifests (LLM, encoders) the resolved recipe names.
    #[serde(default, rename = "manifest")]
    pub manifests: Vec<Locked>,
    /// Dataset cards the resolved recipe names.
    #[serde(default, rename = "dataset_card")]
    pub dataset_cards: Vec<Locked>,
}

/// A lock as a run used it: the lock file (when there is one) and its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockRecord {
    /// `FILE.lock`; `None` when the recipe has no lock file (the entries are then what the run used).
    pub file: Option<PathBuf>,
    pub lock: RecipeLock,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the lock file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not a recipe lock ({message}); rewrite it with `emollama recipe lock {}`", path.display(), recipe.display())]
    Parse { path: PathBuf, recipe: PathBuf, message: String },
    #[error("{}: lock format version {found}, this build reads version {LOCK_VERSION}; rewrite it with `emollama recipe lock {}`", path.display(), recipe.display())]
    Version { path: PathBuf, recipe: PathBuf, found: u32 },
    #[error("cannot hash {} ({what}): {source}", path.display())]
    Hash { path: PathBuf, what: String, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] crate::storage::WriteError),
    #[error("cannot write the lock as TOML: {0}")]
    Serialize(String),
}

/// `recipes/x.toml` → `recipes/x.toml.lock`.
pub fn lock_path(recipe: &Path) -> PathBuf {
    let mut s = recipe.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

fn sha256_file(path: &Path, what: &str) -> Result<String, LockError> {
    crate::storage::cache::sha256_file(path).map_err(|source| LockError::Hash { path: path.to_path_buf(), what: what.to_string(), source })
}

/// The lock of a loaded recipe: its bases (every file read but the top one) and the manifests and
/// dataset cards it names in `registry`. Names the registry does not know are left out (validation
/// reports them).
pub fn compute(loaded: &LoadedRecipe, registry: &Registry) -> Result<RecipeLock, LockError> {
    let top_dir = std::fs::canonicalize(&loaded.path).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let n = loaded.file_records.len();
    let bases = loaded.file_records[..n.saturating_sub(1)]
        .iter()
        .map(|f| Locked {
            name: match &f.local {
                Some(p) => relative_to(p, &top_dir),
                None => f.name.clone(),
            },
            path: None,
            sha256: f.sha256.clone(),
        })
        .collect();

    let r = &loaded.recipe;
    let root = &registry.root;
    let rel = |p: &Path| p.strip_prefix(root).map(|q| q.display().to_string()).unwrap_or_else(|_| p.display().to_string());
    let mut manifests = Vec::new();
    if let Ok((p, _)) = registry.llm(&r.model.llm) {
        manifests.push(Locked { name: format!("llm {}", r.model.llm), path: Some(rel(p)), sha256: sha256_file(p, "LLM manifest")? });
    }
    let mut encoders: Vec<&String> =
        [&r.model.video_encoder, &r.model.audio_encoder, &r.model.global_encoder, &r.model.local_encoder, &r.model.temporal_encoder].into_iter().filter(|n| !n.is_empty()).collect();
    encoders.sort();
    encoders.dedup();
    for name in encoders {
        if let Ok((p, _)) = registry.encoder(name) {
            manifests.push(Locked { name: format!("encoder {name}"), path: Some(rel(p)), sha256: sha256_file(p, "encoder manifest")? });
        }
    }
    let mut datasets: Vec<&String> = std::iter::once(&r.data.dataset)
        .chain(r.data.roots.keys())
        .chain(r.stages.iter().flat_map(|s| s.data.iter().map(|d| &d.dataset)))
        .filter(|n| !n.is_empty())
        .collect();
    datasets.sort();
    datasets.dedup();
    let mut dataset_cards = Vec::new();
    for name in datasets {
        if let Ok((p, _)) = registry.dataset(name) {
            dataset_cards.push(Locked { name: name.clone(), path: Some(rel(p)), sha256: sha256_file(p, "dataset card")? });
        }
    }
    Ok(RecipeLock { version: LOCK_VERSION, bases, manifests, dataset_cards })
}

/// `path` relative to `dir` (both canonical), with `..` where needed.
fn relative_to(path: &Path, dir: &Path) -> String {
    let p: Vec<Component> = path.components().collect();
    let d: Vec<Component> = dir.components().collect();
    let common = p.iter().zip(&d).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return path.display().to_string();
    }
    let mut out = PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out.display().to_string()
}

/// The lock file of `recipe`, if there is one.
pub fn read(recipe: &Path) -> Result<Option<RecipeLock>, LockError> {
    let path = lock_path(recipe);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LockError::Read { path, source }),
    };
    // The version first, so a newer format gets the version message rather than a parse error.
    let version = toml::from_str::<toml::Table>(&text).ok().and_then(|t| t.get("version").and_then(|v| v.as_integer()));
    if let Some(v) = version
        && v != LOCK_VERSION as i64
    {
        return Err(LockError::Version { path, recipe: recipe.to_path_buf(), found: v.clamp(0, u32::MAX as i64) as u32 });
    }
    toml::from_str(&text).map(Some).map_err(|e| LockError::Parse { path, recipe: recipe.to_path_buf(), message: e.message().to_string() })
}

/// Writes `lock` to `FILE.lock` (atomically) and returns its path.
pub fn write(recipe: &Path, lock: &RecipeLock) -> Result<PathBuf, LockError> {
    let path = lock_path(recipe);
    let body = toml::to_string_pretty(lock).map_err(|e| LockError::Serialize(e.to_string()))?;
    let text = format!(
        "# Written by `emollama recipe lock {}`: the sha256 of every base, manifest and dataset card the recipe\n# uses. `emollama run` refuses the recipe when they no longer match (`--relock` rewrites this file).\n{body}",
        recipe.display()
    );
    crate::storage::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// What differs between the lock file and the recipe now, one line each; empty when they match.
pub fn differences(locked: &RecipeLock, now: &RecipeLock) -> Vec<String> {
    let mut out = Vec::new();
    let groups = [("base", &locked.bases, &now.bases), ("manifest", &locked.manifests, &now.manifests), ("dataset card", &locked.dataset_cards, &now.dataset_cards)];
    for (kind, old, new) in groups {
        for o in old.iter() {
            match new.iter().find(|n| n.name == o.name) {
                Some(n) if n.sha256 != o.sha256 => out.push(format!("{kind} {}: sha256 {} in the lock, {} now", o.name, o.sha256, n.sha256)),
                Some(_) => {}
                None => out.push(format!("{kind} {}: in the lock, no longer used", o.name)),
            }
        }
        for n in new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)) {
            out.push(format!("{kind} {}: used now (sha256 {}), not in the lock", n.name, n.sha256));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, sha: &str) -> Locked {
        Locked { name: name.into(), path: None, sha256: sha.into() }
    }

    #[test]
    fn differences_name_each_change() {
        let old = RecipeLock { version: 1, bases: vec![l("s3://t/base.toml", "aa"), l("../base/x.toml", "bb")], manifests: vec![l("llm tiny", "cc")], dataset_cards: vec![] };
        assert!(differences(&old, &old).is_empty());
        let mut new = old.clone();
        new.bases[0].sha256 = "ff".into();
        new.bases.pop();
        new.dataset_cards.push(l("synth", "dd"));
        let d = differences(&old, &new);
        assert_eq!(
            d,
            vec![
                "base s3://t/base.toml: sha256 aa in the lock, ff now".to_string(),
                "base ../base/x.toml: in the lock, no longer used".to_string(),
                "dataset card synth: used now (sha256 dd), not in the lock".to_string(),
            ]
        );
    }

    #[test]
    fn paths_relative_to_the_recipe() {
        assert_eq!(relative_to(Path::new("/r/recipes/base/tiny.toml"), Path::new("/r/recipes")), "base/tiny.toml");
        assert_eq!(relative_to(Path::new("/r/shared/b.toml"), Path::new("/r/recipes/exp")), "../../shared/b.toml");
        assert_eq!(lock_path(Path::new("recipes/q.toml")), PathBuf::from("recipes/q.toml.lock"));
    }
}
