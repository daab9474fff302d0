//! oneDNN matmul ops for candle (feature `onednn`): a Linear with weights packed once and the bias
//! fused, and a batched matmul reading strided operands (attention's `QKᵀ` and `PV`). Both take and
//! return f32 tensors; in bf16 mode the products run on bf16 operands (AMX / AVX512_BF16) and
//! accumulate in f32. Inference only: the ops have no backward.

use std::ffi::{c_char, c_void};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use super::Precision;

unsafe extern "C" {
    fn emo_dnnl_set_threads(n: i32);
    fn emo_dnnl_version(major: *mut i32, minor: *mut i32, patch: *mut i32) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emo_dnnl_linear_new(n: i64, k: i64, bf16: i32, w: *const c_void, bias: *const f32, m_hint: i64, post_op: i32, err: *mut c_char, err_len: usize) -> *mut c_void;
    fn emo_dnnl_linear_run(h: *mut c_void, m: i64, x: *const f32, y: *mut f32, err: *mut c_char, err_len: usize) -> i32;
    fn emo_dnnl_linear_free(h: *mut c_void);
    #[allow(clippy::too_many_arguments)]
    fn emo_dnnl_bmm(
        nd: i32,
        a_dims: *const i64,
        a_strides: *const i64,
        b_dims: *const i64,
        b_strides: *const i64,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        scale: f32,
        bf16: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

const ERR_LEN: usize = 512;

fn err_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// oneDNN's OpenMP thread count (emollama sets it from `runtime.threads`).
pub fn set_threads(n: usize) {
    // SAFETY: plain call into the shim; omp_set_num_threads accepts any positive count.
    unsafe { emo_dnnl_set_threads(n.min(i32::MAX as usize) as i32) }
}

/// The linked oneDNN version, e.g. "2.6.3".
pub fn version() -> String {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: the shim writes three ints through valid pointers.
    unsafe { emo_dnnl_version(&mut a, &mut b, &mut c) };
    format!("{a}.{b}.{c}")
}

/// `y = x Wᵀ + b` with the weights reordered once into oneDNN's packed layout.
pub struct PackedLinear {
    handle: *mut c_void,
    n: usize,
    k: usize,
}

// SAFETY: the handle owns its oneDNN objects; the shim serialises calls on one handle with a mutex.
unsafe impl Send for PackedLinear {}
unsafe impl Sync for PackedLinear {}

impl Drop for PackedLinear {
    fn drop(&mut self) {
        // SAFETY: the handle came from emo_dnnl_linear_new and is freed once.
        unsafe { emo_dnnl_linear_free(self.handle) }
    }
}

impl PackedLinear {
    /// `weight` (out, in), `bias` (out). `m_hint`: a typical row count, which picks the packed layout.
    /// `gelu_erf`: the exact GELU fused after the bias.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, precision: Precision, m_hint: usize, gelu_erf: bool) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let w32 = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias: Option<Vec<f32>> = bias.map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()).transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != n) {
            bail!("bias of {} values for {n} outputs", bias.as_ref().map_or(0, Vec::len));
        }
        // Mode 2: bf16 arithmetic from f32 weights (native bf16 where the CPU has it, else emulated).
        let mode = match precision {
            Precision::Bf16 => 2,
            Precision::F32 => 0,
        };
        let mut err = [0u8; ERR_LEN];
        // SAFETY: w32 holds n*k f32, bias n f32 (or null); the shim copies both before returning.
        let handle = unsafe {
            emo_dnnl_linear_new(n as i64, k as i64, mode, w32.as_ptr() as *const c_void, bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()), m_hint.max(1) as i64, gelu_erf as i32, err.as_mut_ptr() as *mut c_char, ERR_LEN)
        };
        if handle.is_null() {
            bail!("oneDNN linear {n}x{k}: {}", err_text(&err));
        }
        Ok(Self { handle, n, k })
    }


    /// `x` (..., in) f32 → (..., out) f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "onednn-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { bail!("onednn-linear: f32 input expected") };
        let Some((start, end)) = l.contiguous_offsets() else { bail!("onednn-linear: contiguous input expected") };
        let dims = l.shape().dims();
        if dims.last() != Some(&self.k) {
            bail!("onednn-linear: input {:?} does not end in {}", dims, self.k);
        }
        let m = l.shape().elem_count() / self.k.max(1);
        let mut y = vec![0f32; m * self.n];
        let mut err = [0u8; ERR_LEN];
        // SAFETY: x holds m*k contiguous f32, y has room for m*n f32.
        let rc = unsafe { emo_dnnl_linear_run(self.handle, m as i64, v[start..end].as_ptr(), y.as_mut_ptr(), err.as_mut_ptr() as *mut c_char, ERR_LEN) };
        if rc != 0 {
            bail!("oneDNN linear: {}", err_text(&err));
        }
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Batched `a · b` (same rank 2..=6, same leading dims, f32, any strides) → contiguous f32.
struct BatchedMatmul {
    precision: Precision,
}

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "onednn-bmm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else { bail!("onednn-bmm: f32 operands expected") };
        let (da, db) = (l1.shape().dims(), l2.shape().dims());
        let r = da.len();
        if !(2..=6).contains(&r) || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
            bail!("onednn-bmm: shapes {:?} and {:?} do not multiply", da, db);
        }
        let dims = |d: &[usize]| d.iter().map(|&v| v as i64).collect::<Vec<i64>>();
        let (ad, bd, sa, sb) = (dims(da), dims(db), dims(l1.stride()), dims(l2.stride()));
        let mut out = da.to_vec();
        out[r - 1] = db[r - 1];
        let mut c = vec![0f32; out.iter().product()];
        let mut err = [0u8; ERR_LEN];
        // SAFETY: a and b are the storages the layouts index (start offsets applied); c is contiguous with
        // room for every output element.
        let rc = unsafe {
            emo_dnnl_bmm(
                r as i32,
                ad.as_ptr(),
                sa.as_ptr(),
                bd.as_ptr(),
                sb.as_ptr(),
                a[l1.start_offset()..].as_ptr(),
                b[l2.start_offset()..].as_ptr(),
                c.as_mut_ptr(),
                1.0,
                (self.precision == Precision::Bf16) as i32,
                err.as_mut_ptr() as *mut c_char,
                ERR_LEN,
            )
        };
        if rc != 0 {
            bail!("oneDNN batched matmul: {}", err_text(&err));
        }
        Ok((CpuStorage::F32(c), Shape::from(out)))
    }
}

/// `a` (..., m, k) · `b` (..., k, n), f32; strided operands are read in place (a transposed `K` is free).
pub fn batched_matmul(a: &Tensor, b: &Tensor, precision: Precision) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &BatchedMatmul { precision })
}
