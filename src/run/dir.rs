//! Phase 1 of a run: the run directory. A new one, or an interrupted one of the same recipe to resume;
//! its lock (one process per run directory); the training state of its newest checkpoint; the resolved
//! recipe, the log and `run_info.json`.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Resume, RunError, io};
use crate::storage::write_atomic;
use crate::train::checkpoint::{self, Found, TrainState};

/// An open run directory.
pub struct RunDir {
    pub dir: PathBuf,
    /// Continuing an interrupted run.
    pub resuming: bool,
    /// Held until the run ends (also when the process is killed); rank 0's only in a group.
    _lock: Option<File>,
    /// Rank 0 (or the only process): the one that writes the run directory.
    pub leader: bool,
    /// The checkpoint a resume continues from.
    pub found: Option<Found>,
    /// The training state to continue from (fresh for a new run).
    pub state: TrainState,
    pub log: File,
    /// Threads of the run (`runtime.threads`, 0 = every core).
    pub threads: usize,
}

impl RunDir {
    /// Opens (or creates) the run directory of `r`, locks it, finds the checkpoint to resume from and writes
    /// the run's records.
    pub fn open(r: &crate::recipe::Recipe, recipe_lock: Option<&crate::recipe::lock::LockRecord>, resume: &Resume) -> Result<Self, RunError> {
        use sha2::Digest;
        let text = canonical(r)?;
        let recipe_sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let (dir, resuming, lock) = choose_run_dir(r, resume)?;
        tracing::info!(dir = %dir.display(), resuming, "run directory");
        let ckpt_root = dir.join("checkpoints");
        std::fs::create_dir_all(&ckpt_root).map_err(io(&ckpt_root))?;
        let found = if resuming { checkpoint::latest(&ckpt_root) } else { None };
        let state = match &found {
            Some(f) if f.state.recipe_sha256 != recipe_sha256 => return Err(RunError::ForeignCheckpoint(f.dir.display().to_string())),
            Some(f) => {
                tracing::info!(checkpoint = %f.dir.display(), stage = f.state.stage_index, global_step = f.state.global_step, "resuming");
                f.state.clone()
            }
            None => TrainState::new(recipe_sha256.clone()),
        };
        let best_keep = state.best.as_ref().and_then(|b| Path::new(&b.checkpoint).file_name().map(|n| n.to_string_lossy().to_string()));
        checkpoint::drop_newer(&ckpt_root, state.global_step)?;
        checkpoint::prune(&ckpt_root, usize::MAX, best_keep.as_deref())?;
        write_atomic(&dir.join("recipe.resolved.toml"), text.as_bytes())?;
        let log_path = dir.join("log.jsonl");
        if resuming {
            truncate_log(&log_path, state.global_step)?;
        } else {
            let _ = std::fs::remove_file(&log_path);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
        let threads = if r.runtime.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { r.runtime.threads };
        crate::accel::set_inference(r.runtime.resolved_inference_precision(), threads);
        let info = run_info(r, threads, &recipe_sha256, found.as_ref().map(|f| f.dir.as_path()), recipe_lock);
        write_atomic(&dir.join("run_info.json"), &serde_json::to_vec_pretty(&info)?)?;
        Ok(Self { dir, resuming, _lock: Some(lock), leader: true, found, state, log, threads })
    }

    /// Another rank of a distributed run: the directory rank 0 opened, the checkpoint it resumes from and
    /// its training state (as rank 0 found them); writes nothing there but its own log, `rank-K.log`.
    pub fn follow(r: &crate::recipe::Recipe, dir: PathBuf, resuming: bool, rank: usize, found: Option<Found>, state: TrainState) -> Result<Self, RunError> {
        let log_path = dir.join(format!("rank-{rank}.log"));
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
        let line = serde_json::json!({ "kind": "rank", "rank": rank, "pid": std::process::id(), "resuming": resuming });
        std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes()).map_err(io(&log_path))?;
        let threads = if r.runtime.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { r.runtime.threads };
        crate::accel::set_inference(r.runtime.resolved_inference_precision(), threads);
        Ok(Self { dir, resuming, _lock: None, leader: false, found, state, log, threads })
    }
}

fn create_run_dir(runs_dir: &Path, name: &str) -> Result<PathBuf, RunError> {
    std::fs::create_dir_all(runs_dir).map_err(io(runs_dir))?;
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    for k in 0..1000 {
        let dir = if k == 0 { runs_dir.join(format!("{name}-{stamp}")) } else { runs_dir.join(format!("{name}-{stamp}-{k}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    Err(RunError::NoFreshDir(runs_dir.display().to_string()))
}

/// The canonical text of a recipe: what `recipe.resolved.toml` holds and what a resume compares.
fn canonical(recipe: &crate::recipe::Recipe) -> Result<String, RunError> {
    Ok(toml::to_string_pretty(recipe)?)
}

/// A run directory that was started but did not finish (no `metrics.json`) with this exact recipe.
fn interrupted_runs(runs_dir: &Path, name: &str, recipe: &crate::recipe::Recipe) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(runs_dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-"))))
        .filter(|p| !p.join("metrics.json").exists() && same_recipe(p, recipe))
        .collect();
    found.sort();
    found
}

fn same_recipe(dir: &Path, recipe: &crate::recipe::Recipe) -> bool {
    std::fs::read_to_string(dir.join("recipe.resolved.toml"))
        .ok()
        .and_then(|t| toml::from_str::<crate::recipe::Recipe>(&t).ok())
        .is_some_and(|saved| &saved == recipe)
}

/// Takes the run directory's lock (held until the process ends, also when it is killed), so two
/// processes never write one run directory. `None` when another process holds it.
fn lock_run_dir(dir: &Path) -> Result<Option<std::fs::File>, RunError> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// The run directory, whether it is resumed, and its lock.
fn choose_run_dir(r: &crate::recipe::Recipe, resume: &Resume) -> Result<(PathBuf, bool, std::fs::File), RunError> {
    let (dir, resuming) = pick_run_dir(r, resume)?;
    match lock_run_dir(&dir)? {
        Some(lock) => Ok((dir, resuming, lock)),
        None if matches!(resume, Resume::Auto) => {
            tracing::warn!(dir = %dir.display(), "the interrupted run is in use by another process; starting a new run");
            let dir = create_run_dir(Path::new(&r.runtime.runs_dir), &r.name)?;
            let lock = lock_run_dir(&dir)?.ok_or_else(|| RunError::InUse(dir.display().to_string()))?;
            Ok((dir, false, lock))
        }
        None => Err(RunError::InUse(dir.display().to_string())),
    }
}

fn pick_run_dir(r: &crate::recipe::Recipe, resume: &Resume) -> Result<(PathBuf, bool), RunError> {
    let runs_dir = Path::new(&r.runtime.runs_dir);
    match resume {
        Resume::Dir(d) => {
            if !d.join("recipe.resolved.toml").exists() {
                return Err(RunError::NotARunDir(d.display().to_string()));
            }
            if !same_recipe(d, r) {
                return Err(RunError::DifferentRecipe(d.display().to_string()));
            }
            Ok((d.clone(), true))
        }
        Resume::Latest => match interrupted_runs(runs_dir, &r.name, r).pop() {
            Some(d) => Ok((d, true)),
            None => Err(RunError::NoInterruptedRun { name: r.name.clone(), runs_dir: runs_dir.display().to_string() }),
        },
        Resume::Auto if r.runtime.auto_resume => match interrupted_runs(runs_dir, &r.name, r).pop() {
            Some(d) => {
                tracing::warn!(dir = %d.display(), "continuing an interrupted run of this recipe (start anew with --fresh or runtime.auto_resume=false)");
                Ok((d, true))
            }
            None => Ok((create_run_dir(runs_dir, &r.name)?, false)),
        },
        _ => Ok((create_run_dir(runs_dir, &r.name)?, false)),
    }
}

/// Keeps the log lines up to `global_step` (a resumed run writes the later ones again).
fn truncate_log(path: &Path, global_step: usize) -> Result<(), RunError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("global_step").and_then(|g| g.as_u64())).is_some_and(|g| g as usize <= global_step))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(write_atomic(path, kept.as_bytes())?)
}

/// The device, dtype, versions and source commit of a run (`run_info.json`).
fn run_info(r: &crate::recipe::Recipe, threads: usize, recipe_sha256: &str, resumed_from: Option<&Path>, lock: Option<&crate::recipe::lock::LockRecord>) -> serde_json::Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    serde_json::json!({
        "device": r.runtime.device,
        "dtype": r.runtime.dtype,
        // What `runtime.dtype` means on this device, part by part.
        "dtypes": r.runtime.part_dtypes(),
        "threads": threads,
        "emollama_version": env!("CARGO_PKG_VERSION"),
        "candle_version": crate::CANDLE_VERSION,
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "recipe_sha256": recipe_sha256,
        "started": chrono::Local::now().to_rfc3339(),
        "resumed_from": resumed_from.map(|p| p.display().to_string()),
        "inference_precision": r.runtime.resolved_inference_precision().name(),
        "inference_backend": crate::accel::backend(),
        // The bases, manifests and dataset cards (sha256) the recipe was checked against; `file` is its
        // lock file, null when it has none.
        "recipe_lock": lock,
    })
}

