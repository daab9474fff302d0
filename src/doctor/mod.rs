//! `emollama doctor`: what this machine has (devices, dtypes, backends) and whether the numerics hold on
//! one device: each encoder and the LLM with LoRA (forward and one backward pass) against the committed
//! PyTorch parity fixtures, then a few training steps of the tiny quick-start model. Each check gives a
//! measured value against a limit; nothing passes without being computed.

mod checks;
mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use serde::Serialize;

/// f32 against PyTorch: max |difference| on the CPU, and on CUDA (other kernels, TF32 off).
pub const F32_TOL_CPU: f32 = 1e-4;
pub const F32_TOL_CUDA: f32 = 1e-3;
/// bf16 outputs against the f32 reference: cosine similarity at least this.
pub const BF16_MIN_COSINE: f64 = 0.999;
/// bf16 gradients against f32 arithmetic on the same bf16 weights. One backward pass through the 2-layer,
/// width-64 fixture in bf16 measures 0.9987 at worst (the weights' bf16 rounding alone: 0.9986), so
/// 0.999 is out of reach for any bf16 arithmetic there; wider models average the rounding out.
pub const BF16_BACKWARD_MIN_COSINE: f64 = 0.998;

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("--device `{device}`: {detail}")]
    Device { device: String, detail: String },
}

/// What a check's value measures, and which side of the limit passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The largest absolute difference from the reference: at most the limit.
    MaxAbsDiff,
    /// The lowest cosine similarity with the reference: at least the limit.
    MinCosine,
    /// Final loss / first loss: at most the limit.
    LossRatio,
    /// Whether the fixtures were found (1) or not (0): at least the limit.
    Found,
}

impl Metric {
    pub fn passes(self, value: f64, limit: f64) -> bool {
        value.is_finite() && if matches!(self, Self::MinCosine | Self::Found) { value >= limit } else { value <= limit }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MaxAbsDiff => "max_abs_diff",
            Self::MinCosine => "min_cosine",
            Self::LossRatio => "loss_ratio",
            Self::Found => "found",
        }
    }
}

/// One measured check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub dtype: String,
    pub metric: Metric,
    pub value: f64,
    pub limit: f64,
    pub pass: bool,
    pub seconds: f64,
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: String,
    pub environment: Environment,
    pub fixtures: Option<PathBuf>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

/// What was found on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub emollama_version: String,
    pub cpu: String,
    pub cpu_features: Vec<String>,
    pub threads: usize,
    pub cuda_built: bool,
    pub cuda_devices: usize,
    pub onednn: bool,
    pub inference_backend: String,
    pub default_inference_precision: String,
    /// dtypes a matmul works in on the chosen device.
    pub dtypes: Vec<String>,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The parity fixtures (`tests/fixtures` of the repository, or a bundle's `fixtures/`).
    pub fixtures: Option<PathBuf>,
    /// Training steps of the tiny model.
    pub train_steps: usize,
}

/// Where the parity fixtures are: the given folder, `$EMOLLAMA_FIXTURES`, `fixtures/` beside the binary
/// (a doctor bundle), or this source tree's `tests/fixtures`.
pub fn find_fixtures(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(g) = given {
        return Some(g.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(e) = std::env::var("EMOLLAMA_FIXTURES") {
        candidates.push(e.into());
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        candidates.push(dir.join("fixtures"));
    }
    candidates.push(PathBuf::from("tests/fixtures"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    candidates.into_iter().find(|c| c.join("encoders").is_dir() && c.join("llm").is_dir())
}

/// Runs every check on `opts.device`.
pub fn run(opts: &Options) -> Result<Report, DoctorError> {
    let dev = crate::device::parse(&opts.device).map_err(|detail| DoctorError::Device { device: opts.device.clone(), detail })?;
    let environment = environment(&dev);
    let fixtures = find_fixtures(opts.fixtures.as_deref());
    let tol = if dev.is_cuda() { F32_TOL_CUDA } else { F32_TOL_CPU };
    let mut checks = Vec::new();
    match &fixtures {
        Some(dir) => {
            checks.extend(checks::encoders(dir, &dev, tol));
            checks.push(timed("llm+lora forward+backward", "f32", Metric::MaxAbsDiff, f64::from(tol), || checks::llm_lora_f32(dir, &dev)));
            checks.push(timed("llm+lora forward", "bf16", Metric::MinCosine, BF16_MIN_COSINE, || checks::llm_lora_bf16_forward(dir, &dev)));
            checks.push(timed("llm+lora backward", "bf16", Metric::MinCosine, BF16_BACKWARD_MIN_COSINE, || checks::llm_lora_bf16_backward(dir, &dev)));
        }
        None => checks.push(Check {
            name: "fixtures".into(),
            dtype: "-".into(),
            metric: Metric::Found,
            value: 0.0,
            limit: 1.0,
            pass: false,
            seconds: 0.0,
            detail: "no parity fixtures: pass --fixtures DIR (the repository's tests/fixtures, or the bundle's fixtures/)".into(),
        }),
    }
    for dtype in [DType::F32, DType::BF16] {
        let name = if dtype == DType::F32 { "f32" } else { "bf16" };
        checks.push(timed("train tiny quick-start model", name, Metric::LossRatio, train::MAX_LOSS_RATIO, || train::tiny_steps(&dev, dtype, opts.train_steps)));
    }
    let passed = checks.iter().all(|c| c.pass);
    Ok(Report { device: opts.device.clone(), environment, fixtures, checks, passed })
}

/// What a check measured: the value (compared with the limit by the check's metric) and a note.
pub(crate) type Measured = Result<(f64, String), String>;

fn timed(name: &str, dtype: &str, metric: Metric, limit: f64, f: impl FnOnce() -> Measured) -> Check {
    let t0 = Instant::now();
    let r = f();
    let seconds = t0.elapsed().as_secs_f64();
    let (value, detail, ok) = match r {
        Ok((v, d)) => (v, d, true),
        Err(e) => (f64::NAN, e, false),
    };
    Check { name: name.into(), dtype: dtype.into(), metric, value, limit, pass: ok && metric.passes(value, limit), seconds, detail }
}

fn environment(dev: &Device) -> Environment {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags: Vec<&str> = cpuinfo.lines().find_map(|l| l.strip_prefix("flags").and_then(|r| r.split_once(':')).map(|(_, v)| v.split_whitespace().collect())).unwrap_or_default();
    let cpu_features = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"].iter().filter(|f| flags.contains(f)).map(|f| f.to_string()).collect();
    let dtypes = [DType::F32, DType::BF16, DType::F16]
        .iter()
        .filter(|d| {
            candle_core::Tensor::ones((4, 4), **d, dev).and_then(|a| a.matmul(&a)).and_then(|p| p.to_dtype(DType::F32)).and_then(|p| p.sum_all()).and_then(|s| s.to_scalar::<f32>()).is_ok_and(|s| s == 64.0)
        })
        .map(|d| format!("{d:?}").to_lowercase())
        .collect();
    Environment {
        emollama_version: env!("CARGO_PKG_VERSION").into(),
        cpu,
        cpu_features,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cuda_built: cfg!(feature = "cuda"),
        cuda_devices: cuda_devices(),
        onednn: crate::accel::available(),
        inference_backend: crate::accel::backend().to_string(),
        default_inference_precision: crate::accel::default_precision().name().to_string(),
        dtypes,
    }
}

/// CUDA devices the driver reports (0 without the `cuda` build or without a driver).
fn cuda_devices() -> usize {
    #[cfg(feature = "cuda")]
    {
        (0..16).take_while(|&i| Device::new_cuda(i).is_ok()).count()
    }
    #[cfg(not(feature = "cuda"))]
    0
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let e = &r.environment;
    let mut s = String::new();
    let _ = writeln!(s, "emollama {} doctor on {}", e.emollama_version, r.device);
    let _ = writeln!(s, "CPU: {} ({} threads; {})", e.cpu, e.threads, if e.cpu_features.is_empty() { "no AVX2".to_string() } else { e.cpu_features.join(", ") });
    let _ = writeln!(
        s,
        "backends: CUDA {} ({} device(s)); oneDNN {}; frozen-encoder inference {} at {} by default",
        if e.cuda_built { "built" } else { "not built" },
        e.cuda_devices,
        if e.onednn { "on" } else { "off" },
        e.inference_backend,
        e.default_inference_precision
    );
    let _ = writeln!(s, "dtypes that multiply on {}: {}", r.device, e.dtypes.join(", "));
    if let Some(f) = &r.fixtures {
        let _ = writeln!(s, "fixtures: {}", f.display());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["check", "dtype", "metric", "value", "limit", "result", "seconds", "detail"]);
    for c in &r.checks {
        t.add_row([
            c.name.clone(),
            c.dtype.clone(),
            c.metric.name().to_string(),
            format!("{:.3e}", c.value),
            format!("{}", c.limit as f32),
            if c.pass { "pass".into() } else { "FAIL".into() },
            format!("{:.1}", c.seconds),
            c.detail.clone(),
        ]);
    }
    let _ = writeln!(s, "{t}");
    let failed = r.checks.iter().filter(|c| !c.pass).count();
    let _ = writeln!(s, "{}", if r.passed { format!("all {} checks passed", r.checks.len()) } else { format!("{failed} of {} checks FAILED", r.checks.len()) });
    s
}
