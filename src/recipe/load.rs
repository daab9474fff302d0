//! Loading a recipe: `extends` resolution, environment and `--set` overrides, strict extraction
//! into [`Recipe`] with errors that point at the file, line and key at fault.
//!
//! Precedence, lowest to highest: serde defaults < base files (in `extends` order, depth first) <
//! the file itself < environment variables (`EMOLLAMA_A__B=value`) < `--set a.b=value`.
//!
//! Merging is figment's: tables merge key by key, arrays (including `[[stage]]`) are replaced as a
//! whole. One addition: a table holding a `mode` key selects a variant of a tagged enum (e.g.
//! `data.frames = { mode = "first" }`), so it replaces the lower layers' table instead of merging
//! into it (merging `{ mode = "first" }` over `{ mode = "fps", fps = 2.0 }` would leave a stray
//! `fps`).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::error::{KeyError, RecipeError};
use super::remote::MAX_RECIPE_BYTES;
use super::schema::Recipe;
use super::suggest::suggest;

/// Prefix of environment variables that override recipe keys.
pub const ENV_PREFIX: &str = "EMOLLAMA_";
/// Separator of key segments in environment variable names (`EMOLLAMA_RUNTIME__THREADS`).
pub const ENV_SEPARATOR: &str = "__";
/// Key naming the variant of an internally tagged enum table; such tables replace instead of merge.
const TAG_KEY: &str = "mode";
/// Upper bound on the errors collected from one load.
const MAX_ERRORS: usize = 64;

/// A recipe with all `extends`, environment and `--set` overrides applied.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    /// The resolved recipe (its `extends` is empty: bases are merged in).
    pub recipe: Recipe,
    /// The top recipe file, as given.
    pub path: PathBuf,
    /// Every recipe file read, in merge order: bases first, the top file last. Each file appears
    /// once, even if reached through several parents.
    pub files: Vec<PathBuf>,
    /// What was read of each file in `files` (same order): content hash, pin, remote or local.
    pub file_records: Vec<FileRecord>,
    /// The lock this recipe was checked against (set by `run`; recorded in `run_info.json`).
    pub lock: Option<super::lock::LockRecord>,
    /// Text and parsed data of each file in `files` (for locating keys in later errors).
    sources: Vec<SourceFile>,
    /// Keys set by environment variables and `--set`, in increasing priority.
    overrides: Vec<Override>,
}

/// One recipe file read while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// The path (lexically normalised) or remote URI, as shown in errors.
    pub name: String,
    /// The canonical local path; `None` for a remote base.
    pub local: Option<PathBuf>,
    /// sha256 of the file's bytes, lower-case hex.
    pub sha256: String,
    /// The `sha256` pin of the `extends` entry that named it, if any.
    pub pin: Option<String>,
    /// The file whose `extends` named it first (`None` for the top file).
    pub named_by: Option<String>,
    /// Read from the local cache because its server could not be reached.
    pub from_cache: bool,
}

impl FileRecord {
    pub fn is_remote(&self) -> bool {
        self.local.is_none()
    }
}

impl LoadedRecipe {
    /// The fully resolved recipe as TOML; loading this text again gives an equal [`Recipe`].
    pub fn to_toml(&self) -> Result<String, RecipeError> {
        toml::to_string_pretty(&self.recipe).map_err(|e| RecipeError::Serialize { message: e.to_string() })
    }

    /// Where the value of `key_path` (`model.llm`, `stage[1].lr`) came from: the `--set` argument or
    /// environment variable that set it last, else `file:line` of the last recipe file that sets it
    /// (the file alone when the line cannot be found), else `default`.
    pub fn origin_of(&self, key_path: &str) -> String {
        let segs = parse_key_path(key_path);
        if let Some(ov) = self.overrides.iter().rev().find(|ov| is_prefix(&ov.path, &segs)) {
            return ov.origin.clone();
        }
        for src in self.sources.iter().rev() {
            if covers(&src.dict, &segs) {
                return match find_line_in(&scan_entries(&src.text), &segs) {
                    Some(line) => format!("{}:{line}", src.path.display()),
                    None => src.path.display().to_string(),
                };
            }
        }
        "default".to_string()
    }

    /// Remote bases read without a `sha256` pin whose content may change (an `hf://` base at a commit
    /// cannot).
    pub fn unpinned_remote(&self) -> impl Iterator<Item = &FileRecord> {
        self.file_records.iter().filter(|f| f.is_remote() && f.pin.is_none() && !super::remote::is_immutable_uri(&f.name))
    }
}

#[derive(Debug, Clone)]
struct SourceFile {
    /// Path for display (lexically normalised).
    path: PathBuf,
    text: String,
    /// Parsed contents, `extends` included.
    dict: Dict,
}

#[derive(Debug, Clone)]
struct Override {
    path: Vec<Seg>,
    origin: String,
}

/// Load a recipe, with environment overrides taken from the process environment.
///
/// See [`load_recipe_with_env`] for the rules.
pub fn load_recipe(path: &Path, sets: &[String]) -> Result<LoadedRecipe, RecipeError> {
    // `std::env::vars()` panics on non-UTF-8 entries; take what is readable.
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            starts_with_ci(&k, ENV_PREFIX).then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect();
    load_recipe_with_env(path, sets, &env)
}

/// Load the recipe at `path`, apply the environment variables in `env` (only those named
/// `EMOLLAMA_...` are looked at) and the `--set` arguments in `sets`.
///
/// * `extends = ["../base/x.toml"]` in any file: paths are relative to the naming file; bases are
///   merged depth first, before the file itself, later bases over earlier ones. A file reached
///   twice (diamond) is merged once, at its first position. Cycles and missing files are errors.
/// * Environment: `EMOLLAMA_A__B=value` sets key `a.b` (the name after the prefix is lower-cased,
///   `__` separates key segments, single `_` stays part of a key: `EMOLLAMA_RUNTIME__RUNS_DIR`).
///   Values are parsed as figment parses environment values (`2`, `1e-3`, `true`, `[1, 2]`,
///   `{mode = "first"}`, anything else is a string). Arrays cannot be indexed: `EMOLLAMA_STAGE__LR`
///   would replace the whole `[[stage]]` array with a table and fails; edit the file instead. A
///   variable without `__` whose name is not a top-level recipe key (e.g. `EMOLLAMA_CACHE`, used by
///   the cache) is not a recipe override and is ignored; one with `__` must name a valid key.
/// * `--set a.b=value`: the value is parsed as a TOML value when it is one (`1e-3`, `true`,
///   `[1,2]`, `"str"`, `{mode="first"}`), else taken as a plain string (`--set runtime.device=cuda:0`).
///   Applied last, in order. Arrays of tables cannot be indexed.
/// * Unknown keys, wrong types and unknown enum values are errors ([`RecipeError::Invalid`]),
///   all that can be found, each naming the file and line (or variable / argument), the key path,
///   what was expected and the closest valid name.
pub fn load_recipe_with_env(
    path: &Path,
    sets: &[String],
    env: &[(String, String)],
) -> Result<LoadedRecipe, RecipeError> {
    let set_args = sets.iter().map(|a| parse_set(a)).collect::<Result<Vec<_>, _>>()?;
    let storage_sets: Vec<(Vec<Seg>, Value)> =
        set_args.iter().filter(|(_, segs, _)| matches!(segs.first(), Some(Seg::Key(k)) if k == "storage")).map(|(_, s, v)| (s.clone(), v.clone())).collect();
    let (sources, file_records) = resolve_files(path, storage_sets)?;
    tracing::debug!(files = ?sources.iter().map(|s| &s.path).collect::<Vec<_>>(), "recipe files");

    let mut errors: Vec<(usize, KeyError)> = Vec::new();
    let mut layers: Vec<Layer> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut dict = s.dict.clone();
            dict.remove("extends");
            Layer { origin: Origin::File(i), dict }
        })
        .collect();

    let env_vars = parse_env(env, &mut |e| errors.push((sources.len(), e)));
    let mut overrides = Vec::new();
    for (name, segs, value) in env_vars {
        overrides.push(Override { path: segs.clone(), origin: format!("environment variable {name}") });
        layers.push(Layer { origin: Origin::Env(name), dict: nest(&segs, value) });
    }
    for (arg, segs, value) in set_args {
        overrides.push(Override { path: segs.clone(), origin: format!("--set {arg}") });
        layers.push(Layer { origin: Origin::Set(arg), dict: nest(&segs, value) });
    }
    apply_tagged_replacement(&mut layers);

    let mut recipe = None;
    for _ in 0..MAX_ERRORS {
        let figment = build_figment(&layers, &sources);
        match figment.extract::<Recipe>() {
            Ok(r) => {
                recipe = Some(r);
                break;
            }
            Err(err) => {
                let merged = figment.find_value("").ok();
                let mut progressed = false;
                for e in err {
                    let (layer, segs, key_error) = describe(&e, &layers, &sources, merged.as_ref());
                    for l in layers.iter_mut() {
                        progressed |= remove_at(&mut l.dict, &segs);
                    }
                    if !errors.iter().any(|(_, k)| *k == key_error) {
                        errors.push((layer, key_error));
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
    }

    match recipe {
        Some(recipe) if errors.is_empty() => Ok(LoadedRecipe {
            recipe,
            path: path.to_path_buf(),
            files: sources.iter().map(|s| s.path.clone()).collect(),
            file_records,
            lock: None,
            sources,
            overrides,
        }),
        _ => {
            // Files in merge order, then environment, then --set; by line within a file.
            errors.sort_by_key(|(layer, e)| (*layer, e.line.unwrap_or(0)));
            let errors: Vec<KeyError> = errors.into_iter().map(|(_, e)| e).collect();
            if errors.is_empty() {
                // Extraction kept failing without a describable error; should not happen.
                return Err(RecipeError::Invalid {
                    errors: vec![KeyError {
                        file: Some(path.to_path_buf()),
                        origin: path.display().to_string(),
                        line: None,
                        key_path: String::new(),
                        message: "the recipe could not be read into the schema".into(),
                        suggestion: None,
                        help: None,
                    }],
                });
            }
            Err(RecipeError::Invalid { errors })
        }
    }
}

/// A [`RecipeError`] for a value that loaded but is not acceptable (e.g. an unknown registry name
/// at `model.llm`), pointing at the place that set `key_path`: the highest-priority `--set`
/// argument or environment variable that set it ([`RecipeError::Invalid`] with one [`KeyError`]),
/// else the last recipe file that sets it, with the line ([`RecipeError::Validation`]); a key set
/// nowhere (a default) names the top file without a line.
pub fn validation_error(loaded: &LoadedRecipe, key_path: &str, message: String) -> RecipeError {
    let segs = parse_key_path(key_path);
    for ov in loaded.overrides.iter().rev() {
        if is_prefix(&ov.path, &segs) || is_prefix(&segs, &ov.path) {
            return RecipeError::Invalid {
                errors: vec![KeyError {
                    file: None,
                    origin: ov.origin.clone(),
                    line: None,
                    key_path: key_path.to_string(),
                    message,
                    suggestion: None,
                    help: None,
                }],
            };
        }
    }
    for src in loaded.sources.iter().rev() {
        if covers(&src.dict, &segs) {
            return RecipeError::Validation {
                file: src.path.clone(),
                key_path: key_path.to_string(),
                line: find_key_line(&src.text, key_path),
                message,
            };
        }
    }
    RecipeError::Validation { file: loaded.path.clone(), key_path: key_path.to_string(), line: None, message }
}

/// The 1-based line of `key_path` (`model.llm`, `stage[1].lr`, `stage.lr` = in any `[[stage]]`)
/// in TOML text: the `key =` line, or the table header (`[model]`, the n-th `[[stage]]`) for a
/// table. A key not written in the text gives the line of its nearest written ancestor (a key
/// inside an inline table gives the line of that table); `None` when no ancestor is written.
///
/// This is a line scanner, not a parser: it follows table headers, dotted and quoted keys, and
/// skips multi-line strings and arrays, so it also works on files with later syntax errors.
pub fn find_key_line(file_text: &str, key_path: &str) -> Option<usize> {
    let target = parse_key_path(key_path);
    if target.is_empty() {
        return None;
    }
    find_line_in(&scan_entries(file_text), &target)
}

// ---------------------------------------------------------------------------------------------
// Files and `extends`

struct Resolver {
    /// (canonical path or URI, display) of the files on the current `extends` chain.
    stack: Vec<(PathBuf, PathBuf)>,
    done: HashSet<PathBuf>,
    out: Vec<SourceFile>,
    records: Vec<FileRecord>,
    /// `--set storage.*` arguments: they apply to reading remote bases too.
    storage_sets: Vec<(Vec<Seg>, Value)>,
    /// Made when the first remote base is met, from the top file's `[storage]` and `runtime.cache_dir`.
    fetcher: Option<super::remote::Fetcher>,
}

/// The file an `extends` entry was read from, and what it asked for.
struct Via<'a> {
    from: &'a Path,
    line: Option<usize>,
    entry: &'a str,
    pin: Option<&'a str>,
}

/// A recipe file to read.
enum Target {
    Local(PathBuf),
    Remote(super::remote::RemoteRef),
}

fn resolve_files(top: &Path, storage_sets: Vec<(Vec<Seg>, Value)>) -> Result<(Vec<SourceFile>, Vec<FileRecord>), RecipeError> {
    let mut r = Resolver { stack: Vec::new(), done: HashSet::new(), out: Vec::new(), records: Vec::new(), storage_sets, fetcher: None };
    r.visit(Target::Local(top.to_path_buf()), None)?;
    Ok((r.out, r.records))
}

impl Resolver {
    /// `via`: the file naming `target` in its `extends`, the line of that key and the entry.
    fn visit(&mut self, target: Target, via: Option<Via>) -> Result<(), RecipeError> {
        let extends_err = |message: String| match &via {
            Some(v) => RecipeError::Extends { from: v.from.to_path_buf(), line: v.line, entry: v.entry.to_string(), message },
            None => RecipeError::Extends { from: PathBuf::from("recipe"), line: None, entry: String::new(), message },
        };
        let (canonical, display, is_remote) = match &target {
            Target::Local(io_path) => {
                let display = normalize(io_path);
                match std::fs::canonicalize(io_path) {
                    Ok(c) => (c, display, false),
                    Err(e) => {
                        return Err(match &via {
                            Some(v) if e.kind() == std::io::ErrorKind::NotFound => {
                                RecipeError::ExtendsMissing { from: v.from.to_path_buf(), line: v.line, missing: display }
                            }
                            _ => RecipeError::Io { path: display, source: e },
                        });
                    }
                }
            }
            Target::Remote(r) => (PathBuf::from(r.uri()), PathBuf::from(r.uri()), true),
        };
        if let Some(pos) = self.stack.iter().position(|(c, _)| *c == canonical) {
            let mut chain: Vec<PathBuf> = self.stack[pos..].iter().map(|(_, d)| d.clone()).collect();
            chain.push(display);
            return Err(RecipeError::ExtendsCycle { chain });
        }
        if self.done.contains(&canonical) {
            // Reached again (diamond): a pin on this path must match too.
            let read = self.records.iter().find(|f| f.local.as_ref() == Some(&canonical) || (f.is_remote() && Path::new(&f.name) == canonical));
            if let (Some(v), Some(f)) = (&via, read)
                && let Some(p) = v.pin
                && !p.eq_ignore_ascii_case(&f.sha256)
            {
                return Err(RecipeError::PinMismatch { from: v.from.to_path_buf(), line: v.line, uri: f.name.clone(), pinned: p.to_ascii_lowercase(), actual: f.sha256.clone() });
            }
            return Ok(());
        }
        let (text, sha256, from_cache) = match &target {
            Target::Local(io_path) => {
                let text = read_recipe_file(io_path).map_err(|e| RecipeError::Io { path: display.clone(), source: e })?;
                let sha = super::remote::sha256_hex(text.as_bytes());
                (text, sha, false)
            }
            Target::Remote(r) => {
                tracing::debug!(uri = %r.uri(), "reading remote recipe base");
                let pin = via.as_ref().and_then(|v| v.pin);
                let fetched = self.fetcher_mut().fetch(r, pin).map_err(|m| extends_err(format!("{}: {m}", r.uri())))?;
                if fetched.from_cache {
                    tracing::warn!(uri = %r.uri(), sha256 = fetched.sha256, "remote base read from the local cache (server unreachable)");
                }
                (fetched.text, fetched.sha256, fetched.from_cache)
            }
        };
        let pin = match via.as_ref().and_then(|v| v.pin) {
            Some(p) => {
                let p = p.to_ascii_lowercase();
                if p != sha256 {
                    let v = via.as_ref().map(|v| (v.from.to_path_buf(), v.line)).unwrap_or_default();
                    return Err(RecipeError::PinMismatch { from: v.0, line: v.1, uri: display.display().to_string(), pinned: p, actual: sha256 });
                }
                Some(p)
            }
            None => None,
        };
        let dict = parse_toml(&display, &text)?;
        if self.stack.is_empty() && self.fetcher.is_none() {
            self.fetcher = Some(self.make_fetcher(&dict));
        }
        let extends = extends_of(&dict, &display, &text)?;
        if !extends.is_empty() {
            let line = find_key_line(&text, "extends");
            self.stack.push((canonical.clone(), display.clone()));
            for (entry, entry_pin) in &extends {
                let next_via = Via { from: &display, line, entry, pin: entry_pin.as_deref() };
                let next = match &target {
                    Target::Remote(r) => r.resolve(entry).map(Target::Remote),
                    Target::Local(io_path) => local_entry(io_path, entry),
                };
                let next = next.map_err(|message| RecipeError::Extends { from: display.clone(), line, entry: entry.clone(), message })?;
                self.visit(next, Some(next_via))?;
            }
            self.stack.pop();
        }
        self.done.insert(canonical.clone());
        self.records.push(FileRecord {
            name: display.display().to_string(),
            local: (!is_remote).then_some(canonical),
            sha256,
            pin,
            named_by: via.as_ref().map(|v| v.from.display().to_string()),
            from_cache,
        });
        self.out.push(SourceFile { path: display, text, dict });
        Ok(())
    }

    fn fetcher_mut(&mut self) -> &mut super::remote::Fetcher {
        self.fetcher.get_or_insert_with(|| super::remote::Fetcher::new(Default::default(), crate::storage::cache_root("")))
    }

    /// Remote bases are read with the top file's `[storage]` settings (and `--set storage.*`), cached
    /// under its `runtime.cache_dir`. A bad value there falls back to the defaults here; the full load
    /// reports it.
    fn make_fetcher(&self, top: &Dict) -> super::remote::Fetcher {
        let mut layer = Dict::new();
        for key in ["storage", "runtime"] {
            if let Some(v) = top.get(key) {
                layer.insert(key.to_string(), v.clone());
            }
        }
        let mut fig = Figment::from(LayerProvider { name: "top recipe".into(), file: None, dict: layer });
        for (segs, v) in &self.storage_sets {
            fig = fig.merge(LayerProvider { name: "--set".into(), file: None, dict: nest(segs, v.clone()) });
        }
        let cfg = fig.extract_inner::<crate::storage::StorageConfig>("storage").unwrap_or_default();
        let cache_dir = fig.extract_inner::<String>("runtime.cache_dir").unwrap_or_default();
        super::remote::Fetcher::new(cfg, crate::storage::cache_root(&cache_dir))
    }
}

/// The base named by `entry` in the local file `io_path`: a remote URI, `file://PATH`, or a path
/// relative to the file's folder.
fn local_entry(io_path: &Path, entry: &str) -> Result<Target, String> {
    if super::remote::is_remote_uri(entry) {
        return super::remote::RemoteRef::parse(entry).map(Target::Remote);
    }
    if let Some(p) = entry.strip_prefix("file://") {
        return Ok(Target::Local(PathBuf::from(p)));
    }
    if let Some((scheme, _)) = entry.split_once("://") {
        return Err(format!("unsupported scheme `{scheme}` (use a relative path, s3://, http(s):// or hf://)"));
    }
    let dir = io_path.parent().unwrap_or(Path::new(""));
    Ok(Target::Local(dir.join(entry)))
}

fn parse_toml(path: &Path, text: &str) -> Result<Dict, RecipeError> {
    toml::from_str::<Dict>(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        RecipeError::Syntax { path: path.to_path_buf(), line, col, message: e.message().trim().to_string() }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The entries of `extends`: `"path"`, `"s3://..."`, or `{ uri = "...", sha256 = "..." }` (pinned).
fn extends_of(dict: &Dict, path: &Path, text: &str) -> Result<Vec<(String, Option<String>)>, RecipeError> {
    let bad = |message: String, help: Option<String>| RecipeError::Invalid {
        errors: vec![KeyError {
            file: Some(path.to_path_buf()),
            origin: path.display().to_string(),
            line: find_key_line(text, "extends"),
            key_path: "extends".into(),
            message,
            suggestion: None,
            help,
        }],
    };
    let expected = |found: &Value| format!("expected an array of file paths, URIs or {{ uri = \"...\", sha256 = \"...\" }} tables, found {}", value_kind(found));
    let item = |v: &Value| -> Result<(String, Option<String>), RecipeError> {
        match v {
            Value::String(_, s) => Ok((s.clone(), None)),
            Value::Dict(_, d) => {
                if let Some(k) = d.keys().find(|k| !["uri", "sha256"].contains(&k.as_str())) {
                    return Err(bad(format!("unknown key `{k}` in an `extends` entry"), Some("valid keys: uri, sha256".into())));
                }
                let uri = match d.get("uri") {
                    Some(Value::String(_, s)) => s.clone(),
                    _ => return Err(bad("an `extends` table needs `uri = \"...\"` (a path or URI)".into(), None)),
                };
                let sha = match d.get("sha256") {
                    None => None,
                    Some(Value::String(_, s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Some(s.to_ascii_lowercase()),
                    Some(other) => {
                        return Err(bad(
                            format!("the pin of `{uri}` is not a sha256 (64 hex digits): {other:?}"),
                            Some("`emollama recipe check` prints the pin of each unpinned remote base".into()),
                        ));
                    }
                };
                Ok((uri, sha))
            }
            other => Err(bad(expected(other), None)),
        }
    };
    match dict.get("extends") {
        None => Ok(Vec::new()),
        Some(Value::Array(_, items)) => items.iter().map(item).collect(),
        Some(v @ Value::String(_, s)) => Err(bad(expected(v), Some(format!("write extends = [{s:?}]")))),
        Some(other) => Err(bad(expected(other), None)),
    }
}

/// Lexical normalisation for display: drops `.` and folds `dir/..`.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Layers and figment

#[derive(Debug, Clone)]
enum Origin {
    /// Index into the source files.
    File(usize),
    /// Variable name.
    Env(String),
    /// The whole `--set` argument.
    Set(String),
}

#[derive(Debug, Clone)]
struct Layer {
    origin: Origin,
    dict: Dict,
}

fn origin_name(origin: &Origin, sources: &[SourceFile]) -> String {
    match origin {
        Origin::File(i) => sources.get(*i).map_or_else(|| "recipe file".to_string(), |s| s.path.display().to_string()),
        Origin::Env(name) => format!("environment variable {name}"),
        Origin::Set(arg) => format!("--set {arg}"),
    }
}

struct LayerProvider {
    name: String,
    file: Option<PathBuf>,
    dict: Dict,
}

impl Provider for LayerProvider {
    fn metadata(&self) -> Metadata {
        let md = Metadata::named(self.name.clone());
        match &self.file {
            Some(f) => md.source(Source::File(f.clone())),
            None => md,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn build_figment(layers: &[Layer], sources: &[SourceFile]) -> Figment {
    layers.iter().fold(Figment::new(), |f, l| {
        let file = match l.origin {
            Origin::File(i) => sources.get(i).map(|s| s.path.clone()),
            _ => None,
        };
        f.merge(LayerProvider { name: origin_name(&l.origin, sources), file, dict: l.dict.clone() })
    })
}

/// A table holding `mode` in a layer replaces the same table of every lower layer.
fn apply_tagged_replacement(layers: &mut [Layer]) {
    for i in 1..layers.len() {
        let mut tagged = Vec::new();
        collect_tagged(&layers[i].dict, &mut Vec::new(), &mut tagged);
        for path in &tagged {
            for lower in layers[..i].iter_mut() {
                remove_at(&mut lower.dict, path);
            }
        }
    }
}

fn collect_tagged(dict: &Dict, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    for (k, v) in dict {
        if let Value::Dict(_, inner) = v {
            prefix.push(Seg::Key(k.clone()));
            if inner.contains_key(TAG_KEY) {
                out.push(prefix.clone());
            }
            collect_tagged(inner, prefix, out);
            prefix.pop();
        }
    }
}

/// The top-level keys of [`Recipe`], read from serde's own list (by provoking an unknown-key error).
fn recipe_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut dict = Dict::new();
        dict.insert("\u{0}probe".into(), Value::from(true));
        let figment = Figment::from(LayerProvider { name: "probe".into(), file: None, dict });
        match figment.extract::<Recipe>() {
            Ok(_) => &[],
            Err(e) => e
                .into_iter()
                .find_map(|e| match e.kind {
                    Kind::UnknownField(_, expected) => Some(expected),
                    _ => None,
                })
                .unwrap_or(&[]),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Environment and --set

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// `(variable name, key path, value)` of each recipe override in `env`, sorted by name.
fn parse_env(env: &[(String, String)], report: &mut dyn FnMut(KeyError)) -> Vec<(String, Vec<Seg>, Value)> {
    let mut vars: Vec<&(String, String)> = env.iter().filter(|(k, _)| starts_with_ci(k, ENV_PREFIX)).collect();
    vars.sort();
    let mut out = Vec::new();
    for (name, raw) in vars {
        let origin = format!("environment variable {name}");
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        if rest.is_empty() {
            continue;
        }
        let parts: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
        let err = |message: String, help: Option<String>| KeyError {
            file: None,
            origin: origin.clone(),
            line: None,
            key_path: rest.replace(ENV_SEPARATOR, "."),
            message,
            suggestion: None,
            help,
        };
        if parts.len() == 1 && !recipe_keys().contains(&parts[0]) {
            tracing::debug!(variable = %name, "environment variable is not a recipe key; ignored");
            continue;
        }
        if parts.iter().any(|p| p.is_empty()) {
            report(err(
                "malformed variable name: empty key segment".into(),
                Some(format!("name keys as {ENV_PREFIX}SECTION{ENV_SEPARATOR}KEY, e.g. {ENV_PREFIX}RUNTIME__THREADS=2")),
            ));
            continue;
        }
        if parts[0] == "extends" {
            report(err("`extends` can only be set inside a recipe file".into(), None));
            continue;
        }
        let value = match raw.parse::<Value>() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        out.push((name.clone(), parts.iter().map(|p| Seg::Key((*p).to_string())).collect(), value));
    }
    out
}

/// `(argument, key path, value)` of one `--set KEY=VALUE`.
fn parse_set(arg: &str) -> Result<(String, Vec<Seg>, Value), RecipeError> {
    let bad = |reason: &str| RecipeError::BadSet { arg: arg.to_string(), reason: reason.to_string() };
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(bad("missing `=`"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    let mut segs = Vec::new();
    for part in key.split('.') {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad("empty key segment (two dots, or a leading or trailing dot)"));
        }
        if part.contains('[') || part.contains(']') {
            return Err(bad(
                "array elements cannot be set with --set (e.g. `stage[0].lr`); edit the [[stage]] table in the recipe file",
            ));
        }
        if !is_bare(part) {
            return Err(bad(&format!("invalid key segment `{part}`: use letters, digits, `_` and `-`")));
        }
        segs.push(Seg::Key(part.to_string()));
    }
    if matches!(segs.first(), Some(Seg::Key(k)) if k == "extends") {
        return Err(bad("`extends` can only be set inside a recipe file"));
    }
    Ok((arg.to_string(), segs, parse_set_value(raw.trim())))
}

/// A TOML value when `raw` is one, else `raw` as a string.
fn parse_set_value(raw: &str) -> Value {
    if let Ok(mut d) = toml::from_str::<Dict>(&format!("v = {raw}"))
        && d.len() == 1
    {
        match d.remove("v") {
            // A TOML date/time arrives as a private table; a plain string is meant.
            Some(Value::Dict(_, inner)) if inner.keys().any(|k| k.starts_with("$__toml_private")) => {}
            Some(v) => return v,
            None => {}
        }
    }
    Value::from(raw.to_string())
}

fn nest(segs: &[Seg], value: Value) -> Dict {
    let mut value = value;
    let mut keys: Vec<&str> = segs
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    let Some(first) = keys.first().copied() else {
        return Dict::new();
    };
    while keys.len() > 1 {
        let Some(k) = keys.pop() else { break };
        let mut d = Dict::new();
        d.insert(k.to_string(), value);
        value = Value::from(d);
    }
    let mut out = Dict::new();
    out.insert(first.to_string(), value);
    out
}

// ---------------------------------------------------------------------------------------------
// Describing extraction errors

fn describe(
    err: &figment::Error,
    layers: &[Layer],
    sources: &[SourceFile],
    merged: Option<&Value>,
) -> (usize, Vec<Seg>, KeyError) {
    let mut segs = to_segs(&err.path, merged);
    let at = merged.and_then(|m| value_in(m, &segs));
    // What to drop before trying again; usually the offending key itself.
    let mut remove = Vec::new();

    let mut suggestion = None;
    let mut help = None;
    let message = match &err.kind {
        Kind::UnknownField(found, expected) => {
            // Errors raised inside a tagged enum name the table, not the key.
            if let Some(Value::Dict(_, d)) = at
                && segs.last() != Some(&Seg::Key(found.clone()))
                && d.contains_key(found)
            {
                segs.push(Seg::Key(found.clone()));
            }
            suggestion = suggest(found, expected);
            help = Some(if expected.is_empty() {
                "this table takes no keys".to_string()
            } else {
                format!("valid keys: {}", expected.join(", "))
            });
            format!("unknown key `{found}`")
        }
        Kind::UnknownVariant(found, expected) => {
            // The tag of a tagged enum: name the `mode` key, but drop the whole table afterwards.
            if let Some(Value::Dict(_, d)) = at {
                remove = segs.clone();
                if let Some((k, _)) = d.iter().find(|(_, v)| matches!(v, Value::String(_, s) if s == found)) {
                    segs.push(Seg::Key(k.clone()));
                }
            }
            suggestion = suggest(found, expected);
            help = Some(format!("expected one of: {}", expected.join(", ")));
            format!("unknown value `{found}`")
        }
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {}", human_expected(expected), human_actual(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("expected {}, found {}", human_expected(expected), human_actual(actual))
        }
        Kind::InvalidLength(len, expected) => format!("invalid length {len}, expected {expected}"),
        Kind::MissingField(name) => format!("missing key `{name}`"),
        Kind::DuplicateField(name) => format!("duplicate key `{name}`"),
        other => other.to_string(),
    };

    let layer = err
        .metadata
        .as_ref()
        .and_then(|md| layers.iter().rposition(|l| origin_name(&l.origin, sources) == md.name))
        .or_else(|| layers.iter().rposition(|l| covers(&l.dict, &segs)))
        .or_else(|| layers.iter().rposition(|l| matches!(l.origin, Origin::File(_))));
    let origin = layer.and_then(|i| layers.get(i)).map(|l| &l.origin);

    if let (Kind::InvalidType(actual, expected), Some(Origin::Env(_) | Origin::Set(_))) = (&err.kind, origin) {
        if *actual == Actual::Map && expected == "a sequence" {
            help = Some(format!(
                "`{p}` is an array of tables ([[{p}]]); environment variables and --set cannot set keys inside it, edit the recipe file instead",
                p = display_path(&segs)
            ));
        } else if expected == "a string"
            && let Some(Origin::Set(arg)) = origin
        {
            let (k, v) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
            help = Some(format!("to pass a string, quote it: --set '{}=\"{}\"'", k.trim(), v.trim()));
        }
    }

    let key_path = display_path(&segs);
    let key_error = match origin {
        Some(Origin::File(i)) => {
            let src = sources.get(*i);
            KeyError {
                file: src.map(|s| s.path.clone()),
                origin: origin_name(&Origin::File(*i), sources),
                line: src.and_then(|s| find_line_in(&scan_entries(&s.text), &segs)),
                key_path,
                message,
                suggestion,
                help,
            }
        }
        Some(o) => KeyError {
            file: None,
            origin: origin_name(o, sources),
            line: None,
            key_path,
            message,
            suggestion,
            help,
        },
        None => KeyError {
            file: None,
            origin: "recipe".into(),
            line: None,
            key_path,
            message,
            suggestion,
            help,
        },
    };
    if remove.is_empty() {
        // A bad `mode` leaves its tagged table unusable: drop the table, not just the tag, so
        // the next attempt does not report a missing `mode` as well.
        let bad_tag = !matches!(err.kind, Kind::UnknownField(..))
            && segs.len() > 1
            && segs.last() == Some(&Seg::Key(TAG_KEY.to_string()));
        remove = if bad_tag { segs[..segs.len() - 1].to_vec() } else { segs };
    }
    (layer.unwrap_or(usize::MAX), remove, key_error)
}

fn human_expected(expected: &str) -> String {
    match expected {
        "f32" | "f64" => "a floating point number".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        "variant identifier" => "a name (string)".into(),
        s if s.starts_with("struct ") || s.starts_with("internally tagged enum") || s.starts_with("struct variant") => {
            "a table".into()
        }
        s => s.to_string(),
    }
}

fn human_actual(actual: &Actual) -> String {
    match actual {
        Actual::Seq => "an array".into(),
        Actual::Map => "a table".into(),
        Actual::Unsigned(v) => format!("integer `{v}`"),
        Actual::Signed(v) => format!("integer `{v}`"),
        Actual::Float(v) => format!("float `{v}`"),
        Actual::Bool(v) => format!("boolean `{v}`"),
        Actual::Str(s) => format!("string {s:?}"),
        other => other.to_string(),
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "an empty value",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}

// ---------------------------------------------------------------------------------------------
// Key paths

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

fn is_bare(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `stage[1].lr_schedule`; non-bare keys are quoted.
fn display_path(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                if is_bare(k) {
                    s.push_str(k);
                } else {
                    s.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Parse `a.b`, `stage[1].lr`, `prompt.instructions."my task"`; lenient, never fails.
fn parse_key_path(s: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r.trim_start();
            continue;
        }
        if let Some(r) = rest.strip_prefix('[') {
            let (inside, after) = r.split_once(']').unwrap_or((r, ""));
            match inside.trim().parse::<usize>() {
                Ok(i) => segs.push(Seg::Index(i)),
                Err(_) => segs.push(Seg::Key(inside.trim().to_string())),
            }
            rest = after.trim_start();
            continue;
        }
        if (rest.starts_with('"') || rest.starts_with('\''))
            && let Some((k, after)) = parse_quoted(rest)
        {
            segs.push(Seg::Key(k));
            rest = after.trim_start();
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let (k, after) = rest.split_at(end);
        let k = k.trim();
        if !k.is_empty() {
            segs.push(Seg::Key(k.to_string()));
        }
        rest = after;
    }
    segs
}

/// Segment equality where a numeric key matches the index it spells (`stage.1.lr` ~ `stage[1].lr`).
fn seg_match(a: &Seg, b: &Seg) -> bool {
    match (a, b) {
        (Seg::Index(i), Seg::Key(k)) | (Seg::Key(k), Seg::Index(i)) => k.parse::<usize>().ok() == Some(*i),
        _ => a == b,
    }
}

fn is_index_like(s: &Seg) -> bool {
    match s {
        Seg::Index(_) => true,
        Seg::Key(k) => !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn is_prefix(prefix: &[Seg], path: &[Seg]) -> bool {
    prefix.len() <= path.len() && prefix.iter().zip(path).all(|(a, b)| seg_match(a, b))
}

/// Figment's path (indices as strings) as segments, using the merged value to tell indices apart.
fn to_segs(path: &[String], merged: Option<&Value>) -> Vec<Seg> {
    let mut cur = merged;
    path.iter()
        .map(|p| {
            let seg = match (cur, p.parse::<usize>()) {
                (Some(Value::Array(..)), Ok(i)) => Seg::Index(i),
                _ => Seg::Key(p.clone()),
            };
            cur = match (cur, &seg) {
                (Some(Value::Dict(_, d)), Seg::Key(k)) => d.get(k),
                (Some(Value::Array(_, a)), Seg::Index(i)) => a.get(*i),
                _ => None,
            };
            seg
        })
        .collect()
}

fn step<'a>(v: &'a Value, seg: &Seg) -> Option<&'a Value> {
    match (v, seg) {
        (Value::Dict(_, d), Seg::Key(k)) => d.get(k),
        (Value::Dict(_, d), Seg::Index(i)) => d.get(&i.to_string()),
        (Value::Array(_, a), Seg::Index(i)) => a.get(*i),
        (Value::Array(_, a), Seg::Key(k)) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

fn value_in<'a>(v: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    segs.iter().try_fold(v, |cur, seg| step(cur, seg))
}

/// Whether `dict` sets `segs`, or sets an array on its way (arrays replace as a whole, so the
/// layer owns every element path below it).
fn covers(dict: &Dict, segs: &[Seg]) -> bool {
    let Some((Seg::Key(first), rest)) = segs.split_first() else {
        return false;
    };
    let Some(mut cur) = dict.get(first) else {
        return false;
    };
    for seg in rest {
        match step(cur, seg) {
            Some(next) => cur = next,
            None => return matches!(cur, Value::Array(..)),
        }
    }
    true
}

/// Remove the value at `segs` (a trailing index removes the whole array). Returns whether
/// anything was removed.
fn remove_at(dict: &mut Dict, segs: &[Seg]) -> bool {
    let Some((Seg::Key(k), rest)) = segs.split_first() else {
        return false;
    };
    if rest.iter().all(|s| matches!(s, Seg::Index(_))) {
        return dict.remove(k).is_some();
    }
    match dict.get_mut(k) {
        Some(v) => remove_in(v, rest),
        None => false,
    }
}

fn remove_in(v: &mut Value, segs: &[Seg]) -> bool {
    match (v, segs.first()) {
        (Value::Dict(_, d), Some(Seg::Key(_))) => remove_at(d, segs),
        (Value::Array(_, a), Some(Seg::Index(i))) => match a.get_mut(*i) {
            Some(x) => remove_in(x, &segs[1..]),
            None => false,
        },
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Line scanner

/// A key or table header written in a file, with its resolved path and line.
#[derive(Debug)]
struct Entry {
    path: Vec<Seg>,
    line: usize,
}

fn find_line_in(entries: &[Entry], target: &[Seg]) -> Option<usize> {
    for n in (1..=target.len()).rev() {
        let t = &target[..n];
        let exact = entries.iter().find(|e| e.path.len() == t.len() && e.path.iter().zip(t).all(|(a, b)| seg_match(a, b)));
        if let Some(e) = exact.or_else(|| entries.iter().find(|e| loose_eq(&e.path, t))) {
            return Some(e.line);
        }
    }
    None
}

/// `entry` equals `target` when indices of `entry` absent from `target` are skipped
/// (`stage.lr` matches `stage[2].lr`).
fn loose_eq(entry: &[Seg], target: &[Seg]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < entry.len() {
        if j < target.len() && seg_match(&entry[i], &target[j]) {
            i += 1;
            j += 1;
        } else if matches!(entry[i], Seg::Index(_)) && !(j < target.len() && is_index_like(&target[j])) {
            i += 1;
        } else {
            return false;
        }
    }
    j == target.len()
}

/// Bracket depth and open multi-line string while skipping over values.
#[derive(Default)]
struct ValueState {
    depth: usize,
    /// Quote byte of an open `"""` / `'''` string.
    multiline: Option<u8>,
}

impl ValueState {
    fn scan(&mut self, s: &str) {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if let Some(q) = self.multiline {
                if q == b'"' && b[i] == b'\\' {
                    i += 2;
                } else if b[i..].starts_with(&[q, q, q]) {
                    self.multiline = None;
                    i += 3;
                    while i < b.len() && b[i] == q {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
                continue;
            }
            match b[i] {
                b'#' => return,
                q @ (b'"' | b'\'') => {
                    if b[i..].starts_with(&[q, q, q]) {
                        self.multiline = Some(q);
                        i += 3;
                    } else {
                        i += 1;
                        while i < b.len() && b[i] != q {
                            if q == b'"' && b[i] == b'\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                        i += 1;
                    }
                }
                b'[' | b'{' => {
                    self.depth += 1;
                    i += 1;
                }
                b']' | b'}' => {
                    self.depth = self.depth.saturating_sub(1);
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }
}

fn scan_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut table: Vec<Seg> = Vec::new();
    let mut array_tables: HashMap<Vec<Seg>, usize> = HashMap::new();
    let mut state = ValueState::default();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        if state.multiline.is_some() || state.depth > 0 {
            state.scan(line);
            continue;
        }
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let (is_array, rest) = match rest.strip_prefix('[') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let Some((keys, _)) = parse_keys(rest) else { continue };
            let n = keys.len();
            let mut resolved = Vec::new();
            for (i, k) in keys.into_iter().enumerate() {
                resolved.push(Seg::Key(k));
                if i + 1 == n && is_array {
                    let count = array_tables.entry(resolved.clone()).or_insert(0);
                    resolved.push(Seg::Index(*count));
                    *count += 1;
                } else if let Some(&count) = array_tables.get(&resolved)
                    && count > 0
                {
                    resolved.push(Seg::Index(count - 1));
                }
            }
            entries.push(Entry { path: resolved.clone(), line: line_no });
            table = resolved;
            continue;
        }
        if let Some((keys, after)) = parse_keys(t)
            && let Some(value) = after.trim_start().strip_prefix('=')
        {
            let mut path = table.clone();
            path.extend(keys.into_iter().map(Seg::Key));
            entries.push(Entry { path, line: line_no });
            state.scan(value);
        }
    }
    entries
}

/// A dotted key at the start of `s` and the text after it.
fn parse_keys(s: &str) -> Option<(Vec<String>, &str)> {
    let mut keys = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        let (k, r) = if rest.starts_with('"') || rest.starts_with('\'') {
            parse_quoted(rest)?
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            (rest[..end].to_string(), &rest[end..])
        };
        keys.push(k);
        rest = r.trim_start();
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => return Some((keys, rest)),
        }
    }
}

/// A quoted key (`"..."` with escapes or `'...'`) at the start of `s`, and the text after it.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    let (_, quote) = chars.next()?;
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Some((out, &s[i + c.len_utf8()..]));
        }
        if c == '\\' && quote == '"' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 'u' | 'U')) => {
                    let hex: String = chars.clone().map(|(_, c)| c).take_while(|c| c.is_ascii_hexdigit()).take(8).collect();
                    for _ in 0..hex.len() {
                        chars.next();
                    }
                    if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        out.push(ch);
                    }
                }
                Some((_, other)) => out.push(other),
                None => return None,
            }
        } else {
            out.push(c);
        }
    }
    None
}


/// A recipe file's text: a regular file of at most [`MAX_RECIPE_BYTES`], valid UTF-8.
fn read_recipe_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file (a recipe is a TOML file)"));
    }
    let too_big = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {} MiB, the most a recipe may be", MAX_RECIPE_BYTES >> 20));
    if meta.len() > MAX_RECIPE_BYTES {
        return Err(too_big());
    }
    // The size can change between the check and the read: read at most one byte past the bound.
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_RECIPE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECIPE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# a recipe
name = "x"
extends = [
  "../base/a.toml",
  "b.toml",
]
notes = """
lr = 1
[[stage]]
"""

[data]
frames = { mode = "first" }
synth.train = 10

[[stage]]
name = "one"
lr = 1e-3

[[stage]]
# second
name = "two"
lr_shedule = "x"
[stage.sub]
q = 1

[prompt.instructions]
"my task" = ["a"]
"#;

    #[test]
    fn finds_lines() {
        assert_eq!(find_key_line(TEXT, "name"), Some(2));
        assert_eq!(find_key_line(TEXT, "extends"), Some(3));
        assert_eq!(find_key_line(TEXT, "data"), Some(12));
        assert_eq!(find_key_line(TEXT, "data.frames"), Some(13));
        assert_eq!(find_key_line(TEXT, "data.frames.mode"), Some(13));
        assert_eq!(find_key_line(TEXT, "data.synth.train"), Some(14));
        assert_eq!(find_key_line(TEXT, "stage[0]"), Some(16));
        assert_eq!(find_key_line(TEXT, "stage[0].lr"), Some(18));
        assert_eq!(find_key_line(TEXT, "stage[1].name"), Some(22));
        assert_eq!(find_key_line(TEXT, "stage.1.lr_shedule"), Some(23));
        assert_eq!(find_key_line(TEXT, "stage.lr_shedule"), Some(23));
        assert_eq!(find_key_line(TEXT, "stage[1].sub.q"), Some(25));
        assert_eq!(find_key_line(TEXT, "stage[1].steps"), Some(20));
        assert_eq!(find_key_line(TEXT, "prompt.instructions.\"my task\""), Some(28));
        assert_eq!(find_key_line(TEXT, "lr"), None);
        assert_eq!(find_key_line(TEXT, "model.llm"), None);
        assert_eq!(find_key_line(TEXT, ""), None);
    }

    #[test]
    fn key_paths() {
        let p = parse_key_path("stage[1].lr_schedule");
        assert_eq!(p, vec![Seg::Key("stage".into()), Seg::Index(1), Seg::Key("lr_schedule".into())]);
        assert_eq!(display_path(&p), "stage[1].lr_schedule");
        assert_eq!(display_path(&parse_key_path("prompt.instructions.\"my task\"")), "prompt.instructions.\"my task\"");
    }

    #[test]
    fn set_values() {
        assert!(matches!(parse_set_value("1e-3"), Value::Num(..)));
        assert!(matches!(parse_set_value("true"), Value::Bool(_, true)));
        assert!(matches!(parse_set_value("[1, 2]"), Value::Array(..)));
        assert!(matches!(parse_set_value("{mode=\"first\"}"), Value::Dict(..)));
        assert!(matches!(parse_set_value("\"quoted\""), Value::String(_, s) if s == "quoted"));
        assert!(matches!(parse_set_value("cuda:0"), Value::String(_, s) if s == "cuda:0"));
        assert!(matches!(parse_set_value("1\nx = 2"), Value::String(..)));
        assert!(matches!(parse_set_value("2024-01-01"), Value::String(_, s) if s == "2024-01-01"));
        assert!(matches!(parse_set_value(""), Value::String(_, s) if s.is_empty()));
    }

    #[test]
    fn recipe_keys_come_from_serde() {
        let keys = recipe_keys();
        for k in ["name", "extends", "seed", "runtime", "data", "model", "prompt", "stage", "eval"] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(Path::new("recipes/exp/../base/./x.toml")), PathBuf::from("recipes/base/x.toml"));
        assert_eq!(normalize(Path::new("../x.toml")), PathBuf::from("../x.toml"));
        assert_eq!(normalize(Path::new("/a/../../x.toml")), PathBuf::from("/x.toml"));
    }
}
