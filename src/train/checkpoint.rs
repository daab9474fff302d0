//! Training checkpoints that survive a kill: `checkpoints/step-NNNNNN/` holds the trainable parameters,
//! the optimiser moments and `state.json` (stage, step, schedule position, data order and RNG state,
//! best validation so far, sha256 of each file). A checkpoint is written into a hidden temp directory,
//! every file fsynced, then renamed into place, so a directory named `step-*` is complete; the hashes
//! catch anything else (a disk that lied), and a resume skips a checkpoint that does not verify.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::optim::LossScaler;
use super::sampler::DataState;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("checkpoint `{path}`: {message}")]
    Invalid { path: String, message: String },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.display().to_string(), source }
}

fn invalid(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid { path: path.display().to_string(), message: message.into() }
}

/// Format version of `state.json`.
pub const FORMAT: u32 = 1;
pub const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// The best validation point so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestCheckpoint {
    pub stage: String,
    pub stage_index: usize,
    pub step: usize,
    pub global_step: usize,
    pub metric: String,
    pub value: f64,
    /// Relative to the run directory (`checkpoints/best-000400`).
    pub checkpoint: String,
}

/// Running loss statistics of the stage in progress (so a resumed stage reports the same numbers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossStats {
    pub first: Option<f64>,
    pub last: Option<f64>,
    pub smoothed: Option<f64>,
    /// Seconds spent in this stage before the checkpoint.
    pub seconds: f64,
}

/// Everything besides tensors that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// sha256 of the resolved recipe: a checkpoint is only resumed by the recipe that wrote it.
    pub recipe_sha256: String,
    /// The stage in progress (`stages.len()` once all are done).
    pub stage_index: usize,
    /// Optimiser steps done in that stage (0 = it has not started: apply its `init`, fresh optimiser).
    pub step: usize,
    /// Optimiser steps done in the whole run.
    pub global_step: usize,
    /// AdamW's step count (bias correction).
    pub optimizer_t: u64,
    /// Data-order position and RNG state of the stage in progress.
    pub data: Option<DataState>,
    pub loss_scaler: Option<LossScaler>,
    pub loss: LossStats,
    pub best: Option<BestCheckpoint>,
    /// Validations since the best one (early stopping).
    pub evals_since_best: usize,
    /// Reports of the finished stages.
    pub reports: Vec<StageReport>,
    /// sha256 of each file of the checkpoint.
    pub files: BTreeMap<String, String>,
}

impl TrainState {
    pub fn new(recipe_sha256: String) -> Self {
        Self {
            format: FORMAT,
            recipe_sha256,
            stage_index: 0,
            step: 0,
            global_step: 0,
            optimizer_t: 0,
            data: None,
            loss_scaler: None,
            loss: LossStats::default(),
            best: None,
            evals_since_best: 0,
            reports: Vec::new(),
            files: BTreeMap::new(),
        }
    }
}

/// A checkpoint directory found on disk, verified.
#[derive(Debug, Clone)]
pub struct Found {
    pub dir: PathBuf,
    pub state: TrainState,
}

fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

fn fsync(path: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<String, CheckpointError> {
    candle_core::safetensors::save(tensors, path).map_err(|e| invalid(path, e.to_string()))?;
    fsync(path)?;
    sha256_file(path)
}

/// Writes checkpoint `name` under `root` atomically and returns its directory. `optimizer` is absent for
/// parameter-only checkpoints (stage boundaries, `best-*`).
pub fn write(
    root: &Path,
    name: &str,
    params: &HashMap<String, Tensor>,
    optimizer: Option<&HashMap<String, Tensor>>,
    state: &TrainState,
) -> Result<PathBuf, CheckpointError> {
    let dir = root.join(name);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let mut state = state.clone();
    state.files.clear();
    state.files.insert(PARAMS.into(), save_tensors(params, &tmp.join(PARAMS))?);
    if let Some(opt) = optimizer {
        state.files.insert(OPTIMIZER.into(), save_tensors(opt, &tmp.join(OPTIMIZER))?);
    }
    let json = serde_json::to_vec_pretty(&state).map_err(|e| invalid(&tmp, e.to_string()))?;
    let state_path = tmp.join(STATE);
    let mut f = std::fs::File::create(&state_path).map_err(io_err(&state_path))?;
    f.write_all(&json).and_then(|_| f.sync_all()).map_err(io_err(&state_path))?;
    fsync(&tmp)?;
    if dir.exists() {
        // Only a re-run of the same step after a resume gets here: the old copy is equivalent.
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    fsync(root)?;
    Ok(dir)
}

/// Reads and verifies a checkpoint directory (state, file hashes).
pub fn verify(dir: &Path) -> Result<TrainState, CheckpointError> {
    let state_path = dir.join(STATE);
    let text = std::fs::read(&state_path).map_err(io_err(&state_path))?;
    let state: TrainState = serde_json::from_slice(&text).map_err(|e| invalid(&state_path, format!("unreadable state: {e}")))?;
    if state.format != FORMAT {
        return Err(invalid(dir, format!("format {} (this build reads {FORMAT})", state.format)));
    }
    if !state.files.contains_key(PARAMS) {
        return Err(invalid(dir, "state names no parameter file"));
    }
    for (file, want) in &state.files {
        let got = sha256_file(&dir.join(file))?;
        if &got != want {
            return Err(invalid(&dir.join(file), format!("sha256 {got} does not match the recorded {want} (a damaged write)")));
        }
    }
    Ok(state)
}

/// The step number of a `step-NNNNNN` directory name.
fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("step-").and_then(|n| n.parse().ok())
}

pub fn step_name(global_step: usize) -> String {
    format!("step-{global_step:06}")
}

/// The newest checkpoint under `root` that verifies; broken ones are logged and passed over, temp
/// directories never looked at.
pub fn latest(root: &Path) -> Option<Found> {
    let mut dirs: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| step_of(&e.file_name().to_string_lossy()).map(|s| (s, e.path())))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, dir) in dirs {
        match verify(&dir) {
            Ok(state) => return Some(Found { dir, state }),
            Err(e) => tracing::warn!(error = %e, "skipping a checkpoint that does not verify"),
        }
    }
    None
}

/// Loads the tensors of a checkpoint file (`params` or `optimizer`).
pub fn load_tensors(dir: &Path, optimizer: bool, device: &Device) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let path = dir.join(if optimizer { OPTIMIZER } else { PARAMS });
    candle_core::safetensors::load(&path, device).map_err(|e| invalid(&path, e.to_string()))
}

/// Keeps the newest `keep` step checkpoints and the best one named in `keep_best`; removes the rest and
/// leftover temp directories of an interrupted write.
pub fn prune(root: &Path, keep: usize, keep_best: Option<&str>) -> Result<(), CheckpointError> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    let mut steps = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if let Some(s) = step_of(&name) {
            steps.push((s, path));
        } else if (name.starts_with('.') && name.ends_with(".tmp")) || (name.starts_with("best-") && Some(name.as_str()) != keep_best) {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    steps.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, path) in steps.into_iter().skip(keep.max(1)) {
        std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Removes step checkpoints newer than `global_step` (written after the one a resume continues from,
/// but damaged); the resumed run writes them again.
pub fn drop_newer(root: &Path, global_step: usize) -> Result<(), CheckpointError> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    for e in entries.filter_map(|e| e.ok()) {
        if step_of(&e.file_name().to_string_lossy()).is_some_and(|s| s > global_step) {
            let path = e.path();
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}


/// What a stage did, for the summary and `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub name: String,
    pub steps: usize,
    pub trainable_params: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub seconds: f64,
    pub checkpoint: String,
    /// Ended by early stopping before its last step.
    #[serde(default)]
    pub stopped_early: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: f32) -> HashMap<String, Tensor> {
        HashMap::from([("w".to_string(), Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap())])
    }

    #[test]
    fn newest_valid_checkpoint_wins_and_damaged_ones_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let mut st = TrainState::new("r".into());
        for step in [10, 20, 30] {
            st.global_step = step;
            write(root.path(), &step_name(step), &params(step as f32), Some(&params(0.0)), &st).unwrap();
        }
        assert_eq!(latest(root.path()).unwrap().state.global_step, 30);
        // A torn write: the newest file is cut short.
        let p = root.path().join("step-000030").join(PARAMS);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let found = latest(root.path()).unwrap();
        assert_eq!(found.state.global_step, 20);
        assert_eq!(load_tensors(&found.dir, false, &Device::Cpu).unwrap()["w"].to_vec1::<f32>().unwrap(), vec![20.0, 21.0]);
        // A half-written temp directory is never a candidate, and pruning removes it.
        std::fs::create_dir_all(root.path().join(".step-000040.tmp")).unwrap();
        std::fs::write(root.path().join(".step-000040.tmp").join(STATE), b"{").unwrap();
        assert_eq!(latest(root.path()).unwrap().state.global_step, 20);
        prune(root.path(), 1, None).unwrap();
        let left: Vec<String> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert_eq!(left, vec!["step-000030".to_string()]);
    }

    #[test]
    fn state_without_its_files_does_not_verify() {
        let root = tempfile::tempdir().unwrap();
        let dir = write(root.path(), "step-000001", &params(1.0), None, &TrainState::new("r".into())).unwrap();
        std::fs::remove_file(dir.join(PARAMS)).unwrap();
        assert!(verify(&dir).is_err());
        assert!(latest(root.path()).is_none());
    }
}
