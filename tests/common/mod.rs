//! Helpers shared by the integration tests (each test binary uses some of them).
#![allow(dead_code)]

pub mod moto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/encoders/<rel>`.
pub fn encoder_fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/encoders").join(rel)
}

/// A real clip fetched by `just fetch-media` (part of `bash tools/setup.sh`) into the cache.
pub fn media(name: &str) -> PathBuf {
    let p = emollama::storage::cache_root("").join("media").join(name);
    assert!(p.is_file(), "{} is missing: run `just fetch-media` (part of `bash tools/setup.sh`)", p.display());
    p
}

/// A test-split sample whose media is the fetched clip `file`, with no labels.
pub fn media_sample(file: &str) -> emollama::data::Sample {
    emollama::data::Sample {
        id: file.into(),
        split: "test".into(),
        media: emollama::storage::Location::parse(media(file).to_str().expect("utf8")).expect("location"),
        transcript: None,
        label: None,
        description: None,
        reasoning: None,
        valence: None,
        openset: Vec::new(),
    }
}

/// Runs the `emollama` binary from the repository root with extra environment variables.
pub fn emollama(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emollama"));
    cmd.args(args).current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("spawn emollama {args:?}: {e}"))
}

/// Every tensor of a safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>()).expect("difference")
}
