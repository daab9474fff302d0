//! Fast CPU inference for the frozen networks through oneDNN (cargo feature `onednn`, Debian's
//! `libdnnl-dev`), with candle's own ops as the fallback (feature off, a GPU tensor, non-f32):
//! - [`Linear`]: weights packed once, bias and optionally the exact GELU fused; f32 or bf16
//!   ([`bf16_arith`]: native kernels or f32 FMAs on rounded operands, the same numbers).
//! - [`attention`]: `softmax(scale·QKᵀ)·V` fused per block of query rows (the scores never materialised,
//!   the heads-split views read in place, the output already heads-merged); in f32 on AVX-512 CPUs the
//!   register-tiled kernel of [`attention_avx512`] (with or without the `onednn` feature), else oneDNN's
//!   blocks; in bf16 the two products take bf16 operands and the softmax stays f32.
//! - [`matmul`]: strided batched matmul.
//! - [`Conv1d`]: a conv over time-major activations (HuBERT's feature extractor and positional conv):
//!   groups = 1 without padding as sums of in-place strided GEMMs, candle otherwise; f32.
//! - [`gelu_erf`]: oneDNN's vectorised exact GELU.
//! - [`layer_norm`]: the frozen encoders' LayerNorm, vectorised on candle's pool (with or without the
//!   `onednn` feature).
//!
//! The precision is process-wide ([`set_inference`], from a recipe's `runtime.inference_precision`):
//! `bf16` rounds the packed weights to bf16 and multiplies bf16 operands with f32 accumulation, keeping
//! every other op and every activation in f32 (PyTorch's CPU autocast does the same for Linear/matmul).
//! How bf16 products run depends on the CPU ([`bf16_arith`]): oneDNN's bf16 kernels with AMX, f32 FMAs on
//! bf16-rounded operands (the same numbers, faster there) without.
//! Training keeps candle's differentiable ops: the frozen encoders (HuBERT, ViT-MAE, VideoMAE, EVA)
//! call into here, and the LLM only on its generation path (KV-cached decoding of frozen weights; see
//! `model::lora::BaseLinear::forward_inference`).

#[cfg(feature = "onednn")]
pub mod onednn;
pub mod attention_avx512;
pub mod frozen_linear;
pub mod fused_loss;
pub mod layer_norm;
pub mod train_attention;
pub mod train_ops;
pub mod quant_gemv;
pub use frozen_linear::frozen_linear;
pub use layer_norm::layer_norm;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{Module, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Arithmetic of the inference matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the fast path off (candle's ops everywhere) or on again; for A/B benchmarks and checks.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fast path is on ([`set_enabled`]); the oneDNN ops also need the feature and the library.
pub(crate) fn fast_path_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Sets the inference precision and the thread count of the fast path for this process.
pub fn set_inference(precision: Precision, threads: usize) {
    PRECISION.store(precision as u8, Ordering::Relaxed);
    #[cfg(feature = "onednn")]
    if threads > 0 {
        onednn::set_threads(threads);
    }
    #[cfg(not(feature = "onednn"))]
    let _ = threads;
}

/// Process set-up for fast CPU inference, first thing in `main`: [`ensure_passive_openmp`] and
/// [`reuse_large_buffers`].
pub fn init_process() {
    ensure_passive_openmp();
    reuse_large_buffers();
}

/// Lets glibc serve large tensors (up to 1 GiB) from its heap instead of fresh `mmap`s: every op's output
/// is a new buffer, and a fresh mapping is zero-filled by the kernel page by page as it is first written
/// (a 3152×4096 f32 activation = 52 MB of page faults per layer, ~10 % of ViT-MAE-L's fc1 time). Freed
/// buffers stay in the process for the next op: the heap is never trimmed automatically (a training step
/// frees more than a GiB at its end and allocates it again in the next; trimming made a SmolLM2 LoRA step
/// of 8 × 192 tokens take 19.0 s instead of 11.1 s). [`release_free_memory`] hands memory back explicitly.
pub fn reuse_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before any large allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// Hands the heap's free memory back to the system, after dropping a large model: with the thresholds of
/// [`reuse_large_buffers`] glibc keeps freed buffers in the process, so a released model would still
/// count in the resident memory (and in what the kernel sees as available).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes oneDNN's OpenMP threads sleep between calls instead of spinning, by re-executing the current
/// program with `OMP_WAIT_POLICY=passive` when the variable is unset (libgomp reads it once, when it is
/// loaded, before `main`). Spinning OpenMP workers steal both cores from candle's rayon threads between
/// oneDNN calls: measured here, SmolLM2 prompt processing 150 → 230 tok/s and VideoMAE-L 10.5 → 9.5 s
/// with passive waiting. Returns only when nothing was re-executed (set, feature off, or exec failed).
pub fn ensure_passive_openmp() {
    #[cfg(all(feature = "onednn", unix))]
    if std::env::var_os("OMP_WAIT_POLICY").is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OMP_WAIT_POLICY", "passive").exec();
        tracing::debug!(error = %err, "could not re-execute with OMP_WAIT_POLICY=passive");
    }
}

/// The process-wide inference precision.
pub fn inference_precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// `true` when this build has the oneDNN path.
pub fn available() -> bool {
    cfg!(feature = "onednn")
}

/// What the fast path is, for run records: e.g. "oneDNN 2.6.3" or "candle (feature onednn off)".
pub fn backend() -> String {
    #[cfg(feature = "onednn")]
    return format!("oneDNN {}", onednn::version());
    #[cfg(not(feature = "onednn"))]
    "candle (feature onednn off)".to_string()
}

/// Whether /proc/cpuinfo lists any of `flags` (read once per process).
fn cpu_has_any_flag(flags: &[&str]) -> bool {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    let have = FLAGS.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        info.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    });
    have.iter().any(|f| flags.contains(&f.as_str()))
}

/// Whether the CPU multiplies bf16 natively (AMX-BF16 or AVX512_BF16), from /proc/cpuinfo.
pub fn cpu_has_bf16() -> bool {
    cpu_has_any_flag(&["amx_bf16", "avx512_bf16"])
}

/// Whether the CPU has AMX-BF16 tiles, from /proc/cpuinfo.
pub fn cpu_has_amx_bf16() -> bool {
    cpu_has_any_flag(&["amx_bf16"])
}

/// How the fast path computes bf16-precision products. Both give the products of bf16-rounded operands
/// (exact in f32) accumulated in f32; only the summation order differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Arith {
    /// bf16 operands in oneDNN's bf16 kernels (AMX tiles, AVX512_BF16 dot products); where the CPU has
    /// neither, oneDNN has no bf16 matmul and the rounded-f32 form runs instead.
    Native,
    /// bf16-rounded operands multiplied with f32 FMAs.
    RoundedF32,
}

impl Bf16Arith {
    pub fn name(self) -> &'static str {
        match self {
            Bf16Arith::Native => "native",
            Bf16Arith::RoundedF32 => "rounded-f32",
        }
    }
}

/// The environment variable that overrides [`bf16_arith`]'s choice: `native` or `rounded-f32`.
pub const BF16_ARITH_ENV: &str = "EMOLLAMA_BF16_ARITH";

static BF16_ARITH: AtomicU8 = AtomicU8::new(0);

/// The bf16 arithmetic of this process: [`set_bf16_arith`]'s, else `EMOLLAMA_BF16_ARITH`, else native
/// where the CPU has AMX-BF16 and rounded-f32 elsewhere. Without AMX the bf16 dot-product instruction
/// (AVX512_BF16's `vdpbf16ps`) issues on one port of Intel's cores where f32 FMAs issue on two, so bf16
/// products run slower than f32 ones: 143 against 229 GFLOP/s for oneDNN 2.6 and 109 against 286 for
/// PyTorch 2.15 on a 2048³ product (2 threads, Xeon family 6 model 207 without AMX, 2026-12-06).
pub fn bf16_arith() -> Bf16Arith {
    match BF16_ARITH.load(Ordering::Relaxed) {
        1 => return Bf16Arith::Native,
        2 => return Bf16Arith::RoundedF32,
        _ => {}
    }
    static DEFAULT: OnceLock<Bf16Arith> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let by_cpu = if cpu_has_amx_bf16() { Bf16Arith::Native } else { Bf16Arith::RoundedF32 };
        match std::env::var(BF16_ARITH_ENV).ok().as_deref() {
            None | Some("") => by_cpu,
            Some("native") => Bf16Arith::Native,
            Some("rounded-f32") => Bf16Arith::RoundedF32,
            Some(other) => {
                tracing::warn!("{BF16_ARITH_ENV}={other:?} is neither \"native\" nor \"rounded-f32\"; using {}", by_cpu.name());
                by_cpu
            }
        }
    })
}

/// Sets the bf16 arithmetic for this process (benchmarks and tests compare the two).
pub fn set_bf16_arith(arith: Bf16Arith) {
    BF16_ARITH.store(if arith == Bf16Arith::Native { 1 } else { 2 }, Ordering::Relaxed);
}

/// The arithmetic of the fast path's products: the process precision, bf16 resolved by [`bf16_arith`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    F32,
    Bf16(Bf16Arith),
}

/// The arithmetic the fast path uses now.
pub fn inference_arith() -> Arith {
    match inference_precision() {
        Precision::F32 => Arith::F32,
        Precision::Bf16 => Arith::Bf16(bf16_arith()),
    }
}

/// The default inference precision on this machine: bf16 where the CPU has native bf16 and the build
/// has the oneDNN path, else f32.
pub fn default_precision() -> Precision {
    if available() && cpu_has_bf16() { Precision::Bf16 } else { Precision::F32 }
}

/// True when `x` may take the fast path: on the CPU and f32.
#[cfg(feature = "onednn")]
fn fast_ok(x: &Tensor) -> bool {
    fast_path_on() && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// True when the build has the oneDNN path and it is enabled ([`set_enabled`]).
#[cfg(feature = "onednn")]
fn fast_path_on() -> bool {
    available() && fast_path_enabled()
}

/// A frozen Linear layer: candle's `Linear` plus, on first use on the CPU, its weights packed for
/// oneDNN at the process precision. A drop-in for `candle_nn::Linear` in inference-only modules.
pub struct Linear {
    inner: candle_nn::Linear,
    /// `forward` = the exact (erf) GELU of the product (fused into oneDNN's epilogue).
    gelu_erf: bool,
    #[cfg(feature = "onednn")]
    packed: OnceLock<Option<(Arith, onednn::PackedLinear)>>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("accel::Linear").field("weight", &self.inner.weight().shape()).finish_non_exhaustive()
    }
}

impl Clone for Linear {
    fn clone(&self) -> Self {
        Self { gelu_erf: self.gelu_erf, ..Self::from(self.inner.clone()) }
    }
}

impl From<candle_nn::Linear> for Linear {
    fn from(inner: candle_nn::Linear) -> Self {
        Self {
            inner,
            gelu_erf: false,
            #[cfg(feature = "onednn")]
            packed: OnceLock::new(),
        }
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::from(candle_nn::Linear::new(weight, bias))
    }

    /// This layer followed by the exact (erf) GELU, fused on the fast path.
    pub fn with_gelu_erf(self) -> Self {
        Self { gelu_erf: true, ..self }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// The plain candle layer (without the fused activation).
    pub fn as_candle(&self) -> &candle_nn::Linear {
        &self.inner
    }

    /// candle's differentiable ops only (training backpropagates through here); same values as `forward`.
    pub fn forward_differentiable(&self, x: &Tensor) -> Result<Tensor> {
        let y = linear_in_dtype_of(&self.inner, x)?;
        if self.gelu_erf { y.gelu_erf() } else { Ok(y) }
    }

    /// `rows`: the first input's row count, which picks oneDNN's packed layout.
    #[cfg(feature = "onednn")]
    fn packed(&self, rows: usize) -> Option<&onednn::PackedLinear> {
        let arith = inference_arith();
        let entry = self.packed.get_or_init(|| {
            // bf16 / f16 weights (frozen encoders kept in the run's dtype) are packed like f32 ones.
            if !self.inner.weight().device().is_cpu() || !self.inner.weight().dtype().is_float() {
                return None;
            }
            match onednn::PackedLinear::new(self.inner.weight(), self.inner.bias(), arith, rows, self.gelu_erf) {
                Ok(p) => Some((arith, p)),
                Err(e) => {
                    tracing::warn!(error = %e, "oneDNN linear unavailable; using candle's matmul");
                    None
                }
            }
        });
        // Packed for other arithmetic (the setting changed after first use): use candle's path.
        entry.as_ref().filter(|(a, _)| *a == arith).map(|(_, l)| l)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "onednn")]
        if fast_ok(x)
            && let Some(p) = self.packed(x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1))
        {
            return p.forward(x);
        }
        self.forward_differentiable(x)
    }
}

/// `l(x)` computed in `x`'s dtype: weights kept in another dtype (f32 trainable masters under bf16
/// compute) are cast for this product, and the gradient flows back to the master.
pub fn linear_in_dtype_of(l: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    let in_x = |t: &Tensor| t.dtype() == x.dtype();
    let tracked = l.weight().track_op();
    if tracked && in_x(l.weight()) && l.bias().is_none_or(in_x) {
        return l.forward(x);
    }
    let bias = l.bias().map(|b| if in_x(b) { Ok(b.clone()) } else { b.to_dtype(x.dtype()) }).transpose()?;
    // A frozen weight (neither a variable nor computed from one) gets no gradient: see `frozen_linear`.
    if !tracked {
        let y = frozen_linear(x, l.weight())?;
        return match bias {
            Some(b) => y.broadcast_add(&b),
            None => Ok(y),
        };
    }
    // The cast bias is used whichever dtype the weight is in (a bias alone in another dtype included).
    let weight = if in_x(l.weight()) { l.weight().clone() } else { l.weight().to_dtype(x.dtype())? };
    candle_nn::Linear::new(weight, bias).forward(x)
}

/// `candle_nn::linear` as an [`Linear`].
pub fn linear(in_dim: usize, out_dim: usize, vb: candle_nn::VarBuilder) -> Result<Linear> {
    Ok(Linear::from(candle_nn::linear(in_dim, out_dim, vb)?))
}

/// Batched matmul for attention: `a` (..., m, k) · `b` (..., k, n), with the same leading dims. `b`
/// may be a transposed view (`k.t()`): the fast path reads it in place.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_in(a, b, inference_arith())
}

/// [`matmul`] in the given arithmetic (training's products stay f32 whatever the inference precision).
pub(crate) fn matmul_in(a: &Tensor, b: &Tensor, arith: Arith) -> Result<Tensor> {
    #[cfg(feature = "onednn")]
    if fast_ok(a) && fast_ok(b) && (2..=6).contains(&a.rank()) && a.rank() == b.rank() && a.stride().iter().chain(b.stride()).all(|&s| s > 0) {
        return onednn::batched_matmul(a, b, arith);
    }
    #[cfg(not(feature = "onednn"))]
    let _ = arith;
    // candle's matmul takes contiguous or last-two-transposed operands; anything else is copied first.
    a.matmul(b).or_else(|_| a.contiguous()?.matmul(&b.contiguous()?))
}

/// The exact (erf) GELU; oneDNN's vectorised kernel on the fast path.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "onednn")]
    if fast_ok(x) {
        return onednn::gelu_erf(x);
    }
    x.gelu_erf()
}

/// A frozen 1-D convolution over **time-major** activations (batch, time, channels), the layout the
/// transformer after it wants: oneDNN's `nwc` convolution on the fast path (weights reordered once, bias
/// and an optional exact GELU fused), candle's `conv1d` on transposed copies otherwise.
pub struct Conv1d {
    /// (c_out, c_in / groups, kernel), torch's layout.
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    /// Zero frames on each side.
    padding: usize,
    groups: usize,
    gelu_erf: bool,
    #[cfg(feature = "onednn")]
    packed: OnceLock<Option<onednn::PackedConv1d>>,
}

impl std::fmt::Debug for Conv1d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("accel::Conv1d").field("weight", &self.weight.shape()).field("stride", &self.stride).finish_non_exhaustive()
    }
}

impl Clone for Conv1d {
    fn clone(&self) -> Self {
        Self { gelu_erf: self.gelu_erf, ..Self::new(self.weight.clone(), self.bias.clone(), self.stride, self.padding, self.groups) }
    }
}

impl Conv1d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize, groups: usize) -> Self {
        Self {
            weight,
            bias,
            stride,
            padding,
            groups,
            gelu_erf: false,
            #[cfg(feature = "onednn")]
            packed: OnceLock::new(),
        }
    }

    /// This conv followed by the exact GELU, fused on the fast path.
    pub fn with_gelu_erf(self) -> Self {
        Self { gelu_erf: true, ..self }
    }

    #[cfg(feature = "onednn")]
    fn packed(&self) -> Option<&onednn::PackedConv1d> {
        self.packed
            .get_or_init(|| {
                // Only the strided-GEMM form (groups = 1, no padding): oneDNN 2.6's direct grouped, padded
                // conv (gemm:jit, nwc) crashed on a small shape here (32 channels, 4 groups, kernel 16,
                // batch 4, 99 frames), so the shim has no direct conv; those convs (HuBERT's positional
                // conv) stay on candle.
                if !self.weight.device().is_cpu() || self.groups != 1 || self.padding != 0 {
                    return None;
                }
                onednn::PackedConv1d::new(&self.weight, self.bias.as_ref(), self.stride, self.gelu_erf)
                    .map_err(|e| tracing::warn!(error = %e, "oneDNN conv1d unavailable; using candle's conv1d"))
                    .ok()
            })
            .as_ref()
    }

    /// `x` (batch, time, c_in) → (batch, time', c_out).
    pub fn forward_time_major(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "onednn")]
        if fast_ok(x)
            && let Some(p) = self.packed()
        {
            return p.forward(x);
        }
        let y = x.transpose(1, 2)?.contiguous()?.conv1d(&self.weight, self.padding, self.stride, 1, self.groups)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1))?)?,
            None => y,
        };
        let y = if self.gelu_erf { y.gelu_erf()? } else { y };
        y.transpose(1, 2)
    }
}

/// A buffer of `len` f32 values that `fill` writes completely, not zeroed first: a zeroed allocation of
/// memory the heap reuses is a memset over the whole output (VideoMAE-L: ~60 MB per layer, 1-2 % of its
/// time). Callers' kernels write every element (oneDNN's primitives their whole destination).
pub(crate) fn written_by(len: usize, fill: impl FnOnce(*mut f32) -> Result<()>) -> Result<Vec<f32>> {
    let mut y = Vec::<f32>::with_capacity(len);
    fill(y.as_mut_ptr())?;
    // SAFETY: `fill` returned Ok after writing all `len` elements (the callers' contract).
    unsafe { y.set_len(len) };
    Ok(y)
}

/// The (batch, heads, tokens, head_dim) query, key and value views of a fused projection (batch, tokens,
/// 3 · heads · head_dim), as strided views of its storage: candle's `get` on the permuted tensor would copy
/// each (its reshape of a non-contiguous view copies), three passes over the activations per layer.
pub fn split_fused_qkv(qkv: &Tensor, heads: usize) -> Result<[Tensor; 3]> {
    let (b, t, c) = qkv.dims3()?;
    if heads == 0 || !c.is_multiple_of(3 * heads) {
        candle_core::bail!("split_fused_qkv: width {c} is not 3 × {heads} heads × a head dimension");
    }
    let split = qkv.reshape((b, t, 3, heads, c / (3 * heads)))?.permute((2, 0, 3, 1, 4))?;
    let view = |i: usize| split.narrow(0, i, 1)?.squeeze(0);
    Ok([view(0)?, view(1)?, view(2)?])
}

/// Scaled dot-product attention without a mask: `softmax(scale · q · kᵀ) · v` for q (b, h, m, d),
/// k (b, h, n, d) and v (b, h, n, e), returned with the heads merged: (b, m, h·e). The inputs may be the
/// heads-split views of the projections (`reshape` + `transpose`): the fast path reads them in place and
/// never materialises the (m, n) scores, one block of query rows per thread at a time.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    // f32 on AVX-512: the register-tiled kernel (faster than oneDNN 2.6's three primitives per block).
    if inference_precision() == Precision::F32
        && fast_path_enabled()
        && let Some(out) = attention_avx512::attention(q, k, v, scale as f32)?
    {
        return Ok(out);
    }
    #[cfg(feature = "onednn")]
    if fast_ok(q) && fast_ok(k) && fast_ok(v) && q.rank() == 4 {
        return onednn::fused_attention(q, k, v, scale as f32, inference_arith());
    }
    let (b, h, m, _) = q.dims4()?;
    let e = v.dim(3)?;
    let probs = candle_nn::ops::softmax_last_dim(&(matmul(q, &k.t()?)? * scale)?)?;
    matmul(&probs, v)?.transpose(1, 2)?.reshape((b, m, h * e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::seeded_uniform;
    use candle_core::{DType, Device};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).unwrap_or(f32::MAX)
    }

    /// A trainable weight already in x's dtype with a bias in another: the bias is cast, not refused.
    #[test]
    fn linear_in_dtype_of_casts_a_bias_of_another_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4), &dev)?)?;
        let b = Tensor::randn(0f32, 1.0, 3, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 4), &dev)?;
        let want = candle_nn::Linear::new(w.as_tensor().clone(), Some(round_bf16(&b)?)).forward(&x)?;
        let got = linear_in_dtype_of(&candle_nn::Linear::new(w.as_tensor().clone(), Some(b.to_dtype(DType::BF16)?)), &x)?;
        assert_eq!(max_diff(&got, &want), 0.0);
        // Everything in x's dtype: the layer's own forward.
        let same = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.clone()));
        assert_eq!(max_diff(&linear_in_dtype_of(&same, &x)?, &same.forward(&x)?), 0.0);
        Ok(())
    }

    /// f32 values rounded to bf16 (what a bf16 operand holds).
    fn round_bf16(t: &Tensor) -> Result<Tensor> {
        t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
    }

    fn cosine(a: &Tensor, b: &Tensor) -> f32 {
        let dot = (a * b).and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).unwrap_or(0.0);
        let na = a.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).unwrap_or(0.0).sqrt();
        let nb = b.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).unwrap_or(0.0).sqrt();
        dot / (na * nb)
    }

    #[test]
    fn linear_matches_candle_in_f32_and_is_close_in_bf16() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 80), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 96, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 7, 80), &dev)?;
        let reference = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
        set_inference(Precision::F32, 2);
        let y = Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
        assert_eq!(y.dims(), &[3, 7, 96]);
        assert!(max_diff(&y, &reference) < 1e-4, "{}", max_diff(&y, &reference));
        for arith in [Bf16Arith::Native, Bf16Arith::RoundedF32] {
            if !available() {
                break;
            }
            set_bf16_arith(arith);
            set_inference(Precision::Bf16, 2);
            let y16 = Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
            set_inference(Precision::F32, 2);
            assert!(cosine(&y16, &reference) > 0.999, "{}", cosine(&y16, &reference));
            assert!(max_diff(&y16, &reference) > 0.0, "bf16 should round");
            // Exactly the products of bf16-rounded operands with f32 accumulation (either arithmetic).
            let rounded = candle_nn::Linear::new(round_bf16(&w)?, Some(b.clone())).forward(&round_bf16(&x)?)?;
            assert!(max_diff(&y16, &rounded) < 1e-4, "{arith:?}: {}", max_diff(&y16, &rounded));
        }
        Ok(())
    }

    #[test]
    fn fused_gelu_equals_linear_then_gelu() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.1, (64, 48), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 64, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 9, 48), &dev)?;
        let reference = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x)?.gelu_erf()?;
        set_inference(Precision::F32, 2);
        let fused = Linear::new(w.clone(), Some(b.clone())).with_gelu_erf();
        assert!(max_diff(&fused.forward(&x)?, &reference) < 1e-5);
        set_enabled(false);
        let fallback = fused.clone().forward(&x)?;
        set_enabled(true);
        assert!(max_diff(&fallback, &reference) < 1e-6);
        Ok(())
    }

    #[test]
    fn matmul_handles_transposed_and_batched_operands() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 3, 6, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 3, 6, 4), &dev)?;
        let scores = matmul(&q, &k.t()?)?;
        assert_eq!(scores.dims(), &[2, 3, 5, 6]);
        assert!(max_diff(&scores, &q.matmul(&k.t()?)?) < 1e-4);
        let out = matmul(&scores, &v)?;
        assert!(max_diff(&out, &scores.matmul(&v)?) < 1e-3);
        if available() {
            // bf16: the products of bf16-rounded operands, accumulated in f32.
            set_inference(Precision::Bf16, 2);
            let s16 = matmul(&q, &k.t()?)?;
            set_inference(Precision::F32, 2);
            let reference = round_bf16(&q)?.matmul(&round_bf16(&k)?.t()?)?;
            assert!(max_diff(&s16, &reference) < 1e-4, "{}", max_diff(&s16, &reference));
            assert!(cosine(&s16, &scores) > 0.999);
        }
        // A transposed middle (heads moved) view, as attention builds it.
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 8), &dev)?.transpose(1, 2)?;
        let y = matmul(&x, &k.t()?)?;
        assert!(max_diff(&y, &x.contiguous()?.matmul(&k.t()?)?) < 1e-4);
        Ok(())
    }

    #[test]
    fn conv1d_time_major_matches_candle_with_stride_padding_groups_and_gelu() -> Result<()> {
        let dev = Device::Cpu;
        set_inference(Precision::F32, 2);
        // (c_in, c_out, kernel, stride, padding, groups, t): HuBERT's first conv, a strided one, the grouped
        // positional conv.
        for (c_in, c_out, k, stride, pad, groups, t) in [(1, 16, 10, 5, 0, 1, 400), (16, 24, 3, 2, 0, 1, 79), (32, 32, 8, 1, 4, 4, 50), (32, 32, 16, 1, 8, 4, 99)] {
            let w = Tensor::randn(0f32, 0.2, (c_out, c_in / groups, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let x = Tensor::randn(0f32, 1.0, (4, c_in, t), &dev)?;
            let reference = x.conv1d(&w, pad, stride, 1, groups)?.broadcast_add(&b.reshape((1, (), 1))?)?.gelu_erf()?.transpose(1, 2)?;
            let conv = Conv1d::new(w.clone(), Some(b.clone()), stride, pad, groups).with_gelu_erf();
            let xt = x.transpose(1, 2)?.contiguous()?;
            let fast = conv.forward_time_major(&xt)?;
            assert_eq!(fast.dims(), reference.dims());
            // Again, and from another thread: the cached primitive is reused.
            let again = std::thread::scope(|s| s.spawn(|| conv.forward_time_major(&xt)).join()).map_err(|_| candle_core::Error::Msg("conv thread panicked".into()))??;
            assert!(max_diff(&again, &fast) < 1e-6);
            assert!(max_diff(&fast, &reference) < 1e-4, "{:?}: {}", (c_in, c_out, k), max_diff(&fast, &reference));
            set_enabled(false);
            let fallback = conv.clone().forward_time_major(&xt)?;
            set_enabled(true);
            assert!(max_diff(&fallback, &reference) < 1e-5);
            let plain = Conv1d::new(w, None, stride, pad, groups).forward_time_major(&xt)?;
            assert!(max_diff(&plain, &x.conv1d(&conv.weight, pad, stride, 1, groups)?.transpose(1, 2)?) < 1e-4);
        }
        let x = Tensor::randn(0f32, 2.0, (3, 1000), &dev)?;
        assert!(max_diff(&gelu_erf(&x)?, &x.gelu_erf()?) < 1e-6);
        Ok(())
    }

    /// Plain candle: softmax(scale q kᵀ) v with the heads merged.
    fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, h, m, _) = q.dims4()?;
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let probs = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, m, h * v.dim(3)?))
    }

    /// The thread count may change between calls (`runtime.threads`, benches, tests): the fused attention
    /// gives bitwise the same result under any count (its blocks run single-threaded, and the blocking
    /// depends on the shape only); the other ops, whose cached primitives are keyed by the count (a
    /// primitive executed under another count than it was created for computes only part of its output
    /// with oneDNN's AVX-512 kernels), stay within tolerance of candle.
    #[test]
    fn ops_are_right_under_changing_thread_counts_and_attention_is_bitwise_stable() -> Result<()> {
        let dev = Device::Cpu;
        let split = |t: usize, dim: usize| -> Result<Tensor> { Tensor::randn(0f32, 1.0, (2, t, 4, dim), &dev)?.transpose(1, 2) };
        let (q, k, v) = (split(300, 16)?, split(280, 16)?, split(280, 16)?);
        let reference = attention_reference(&q, &k, &v, 0.25)?;
        let w = Tensor::randn(0f32, 0.1, (96, 64), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 96, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (5, 33, 64), &dev)?;
        let linear = Linear::new(w.clone(), Some(b.clone())).with_gelu_erf();
        let linear_ref = candle_nn::Linear::new(w, Some(b)).forward(&x)?.gelu_erf()?;
        let cw = Tensor::randn(0f32, 0.2, (24, 16, 3), &dev)?;
        let conv = Conv1d::new(cw.clone(), None, 2, 0, 1);
        let cx = Tensor::randn(0f32, 1.0, (3, 79, 16), &dev)?;
        let conv_ref = cx.transpose(1, 2)?.contiguous()?.conv1d(&cw, 0, 2, 1, 1)?.transpose(1, 2)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect()) };
        let mut first: Option<Vec<u32>> = None;
        for threads in [1, 2, 4, 3, 1, 2] {
            set_inference(Precision::F32, threads);
            let out = attention(&q, &k, &v, 0.25)?;
            assert!(max_diff(&out, &reference) < 1e-5, "attention with {threads} threads: {}", max_diff(&out, &reference));
            match &first {
                None => first = Some(bits(&out)?),
                Some(f) => assert!(*f == bits(&out)?, "attention with {threads} threads is not bitwise equal to 1 thread"),
            }
            let y = linear.forward(&x)?;
            assert!(max_diff(&y, &linear_ref) < 1e-4, "linear with {threads} threads: {}", max_diff(&y, &linear_ref));
            let s = matmul(&q, &k.t()?)?;
            let s_ref = q.contiguous()?.matmul(&k.contiguous()?.t()?)?;
            assert!(max_diff(&s, &s_ref) < 1e-4, "matmul with {threads} threads: {}", max_diff(&s, &s_ref));
            assert!(max_diff(&gelu_erf(&s)?, &s_ref.gelu_erf()?) < 1e-4, "gelu with {threads} threads");
            let c = conv.forward_time_major(&cx)?;
            assert!(max_diff(&c, &conv_ref) < 1e-4, "conv with {threads} threads: {}", max_diff(&c, &conv_ref));
        }
        set_inference(Precision::F32, 2);
        Ok(())
    }

    /// bf16 attention (autocast's numbers): softmax(scale · bf16(q) · bf16(k)ᵀ) in f32, its probabilities
    /// rounded to bf16 before multiplying bf16(v); in both arithmetics, on the heads-split views, with a
    /// tail block, and bitwise the same under any thread count.
    #[test]
    fn bf16_attention_is_fused_and_equals_products_of_rounded_operands() -> Result<()> {
        if !available() {
            return Ok(());
        }
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect()) };
        for (b, h, m, n, d) in [(2, 3, 5, 7, 8), (1, 4, 300, 280, 16)] {
            // Seeded draws: the bound below is for these inputs, not a probability.
            let split = |t: usize, seed: u64| -> Result<Tensor> { seeded_uniform(&[b, t, h, d], seed)?.transpose(1, 2) };
            let (q, k, v) = (split(m, 1)?, split(n, 2)?, split(n, 3)?);
            let scale = (d as f64).powf(-0.5);
            let (qr, kr, vr) = (round_bf16(&q.contiguous()?)?, round_bf16(&k.contiguous()?)?, round_bf16(&v.contiguous()?)?);
            let probs = candle_nn::ops::softmax_last_dim(&(qr.matmul(&kr.t()?)? * scale)?)?;
            let reference = round_bf16(&probs)?.matmul(&vr)?.transpose(1, 2)?.reshape((b, m, h * d))?;
            let f32_out = attention_reference(&q, &k, &v, scale)?;
            let mut outs = Vec::new();
            for arith in [Bf16Arith::Native, Bf16Arith::RoundedF32] {
                set_bf16_arith(arith);
                let mut first: Option<Vec<u32>> = None;
                for threads in [2, 1, 3] {
                    set_inference(Precision::Bf16, threads);
                    let out = attention(&q, &k, &v, scale)?;
                    // A probability a few f32 ulps off may round to the neighbouring bf16 value (0.4 % of it).
                    assert!(max_diff(&out, &reference) < 1e-3, "{arith:?} {:?}: {}", (b, h, m, n), max_diff(&out, &reference));
                    match &first {
                        None => first = Some(bits(&out)?),
                        Some(f) => assert!(*f == bits(&out)?, "{arith:?} with {threads} threads differs from 2 threads"),
                    }
                }
                let out = attention(&q, &k, &v, scale)?;
                println!("{arith:?} {:?}: {:.2e} from the rounded-operand reference, {:.2e} from f32", (b, h, m, n), max_diff(&out, &reference), max_diff(&out, &f32_out));
                assert!(max_diff(&out, &f32_out) > 0.0, "bf16 should round");
                outs.push(out);
            }
            // Both arithmetics give the same products; only the summation order may differ.
            assert!(max_diff(&outs[0], &outs[1]) < 1e-3, "native vs rounded-f32: {}", max_diff(&outs[0], &outs[1]));
        }
        set_inference(Precision::F32, 2);
        Ok(())
    }

    #[test]
    fn fused_attention_matches_candle_on_strided_views_and_odd_sizes() -> Result<()> {
        let dev = Device::Cpu;
        set_inference(Precision::F32, 2);
        // Long enough for several query-row blocks plus a tail block (rows per block depend on n).
        for (b, h, m, n, d, e) in [(2, 3, 5, 7, 8, 4), (1, 2, 700, 650, 16, 16), (2, 4, 197, 197, 8, 8)] {
            // The heads-split views of (b, t, h·d) projections, as the encoders build them.
            let split = |t: usize, dim: usize| -> Result<Tensor> { Tensor::randn(0f32, 1.0, (b, t, h, dim), &dev)?.transpose(1, 2) };
            let (q, k, v) = (split(m, d)?, split(n, d)?, split(n, e)?);
            let scale = (d as f64).powf(-0.5);
            let reference = attention_reference(&q, &k, &v, scale)?;
            let fast = attention(&q, &k, &v, scale)?;
            assert_eq!(fast.dims(), &[b, m, h * e]);
            assert!(max_diff(&fast, &reference) < 1e-5, "{:?}: {}", (b, h, m, n), max_diff(&fast, &reference));
            // oneDNN's blocks (what CPUs without AVX-512 run; the dispatcher above prefers the AVX-512 kernel).
            #[cfg(feature = "onednn")]
            {
                let onednn = onednn::fused_attention(&q, &k, &v, scale as f32, Arith::F32)?;
                assert!(max_diff(&onednn, &reference) < 1e-5, "oneDNN {:?}: {}", (b, h, m, n), max_diff(&onednn, &reference));
            }
            set_enabled(false);
            let fallback = attention(&q, &k, &v, scale)?;
            set_enabled(true);
            assert!(max_diff(&fallback, &reference) < 1e-5);
        }
        Ok(())
    }
}
