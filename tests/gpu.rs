//! The CUDA build on a GPU: `emollama doctor --device cuda` (every encoder and the LLM with LoRA against
//! the PyTorch fixtures, bf16, a few training steps) and the quick start's model on `cuda`. The GPU-only
//! tests are `#[ignore]`d, so a machine without a GPU reports them as skipped by name (`just test-cuda`);
//! `just test-gpu` runs them on a GPU machine, where they must pass.

mod common;

use common::emollama;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Without a usable GPU, asking for one is an error that says what to do; with one, doctor passes.
#[test]
fn a_missing_gpu_is_a_clear_error_and_a_present_one_passes_doctor() {
    let o = emollama(&["doctor", "--device", "cuda", "--json"], &[("RUST_LOG", "warn")]);
    if o.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v["passed"], true, "{v}");
        assert!(v["environment"]["cuda_devices"].as_u64().is_some_and(|n| n > 0), "{v}");
        return;
    }
    let e = stderr(&o);
    if cfg!(feature = "cuda") {
        // The stub driver (or no driver) answers every call with an error.
        assert!(e.contains("--device `cuda`") && e.contains("driver"), "{e}");
    } else {
        assert!(e.contains("built without CUDA") && e.contains("just build-cuda"), "{e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (driver 580+): run `just test-gpu` there"]
fn gpu_doctor_passes_on_cuda() {
    let o = emollama(&["doctor", "--device", "cuda", "--json"], &[("RUST_LOG", "warn")]);
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let checks = v["checks"].as_array().expect("checks");
    assert!(checks.len() >= 8 && checks.iter().all(|c| c["pass"] == true), "{v}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (driver 580+): run `just test-gpu` there"]
fn gpu_quickstart_model_trains_in_bf16_on_cuda() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let o = emollama(
        &[
            "run",
            "recipes/quickstart.toml",
            "--set",
            "runtime.device=cuda",
            "--set",
            "runtime.dtype=bf16",
            "--set",
            &format!("runtime.runs_dir={}", runs.display()),
        ],
        &[("RUST_LOG", "warn")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
