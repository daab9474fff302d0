//! oneDNN matmul ops for candle (feature `onednn`): a Linear with weights packed once and the bias
//! fused, and a batched matmul reading strided operands (attention's `QKᵀ` and `PV`). Both take and
//! return f32 tensors; in bf16 mode the products take bf16-rounded operands, in oneDNN's bf16 kernels or
//! as f32 values ([`super::Bf16Arith`]), and accumulate in f32. Inference only: the ops have no backward.

use std::ffi::{c_char, c_void};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

use super::{Arith, Bf16Arith};

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
    #[allow(clippy::too_many_arguments)]
    fn emo_dnnl_conv1d_new(
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        w: *const f32,
        bias: *const f32,
        post_op: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn emo_dnnl_conv1d_out_len(h: *mut c_void, t: i64) -> i64;
    fn emo_dnnl_conv1d_run(h: *mut c_void, b: i64, t: i64, x: *const f32, y: *mut f32, err: *mut c_char, err_len: usize) -> i32;
    fn emo_dnnl_conv1d_free(h: *mut c_void);
    fn emo_dnnl_gelu_erf(x: *const f32, y: *mut f32, n: i64, err: *mut c_char, err_len: usize) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emo_dnnl_attention(
        dims: *const i64,
        q_strides: *const i64,
        k_strides: *const i64,
        v_strides: *const i64,
        q: *const f32,
        k: *const f32,
        v: *const f32,
        out: *mut f32,
        scale: f32,
        bf16: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// The shim's `bf16` argument of the batched matmul and the attention: 0 f32, 1 native bf16, 2 rounded f32.
fn operand_code(arith: Arith) -> i32 {
    match arith {
        Arith::F32 => 0,
        Arith::Bf16(Bf16Arith::Native) => 1,
        Arith::Bf16(Bf16Arith::RoundedF32) => 2,
    }
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

/// A layer's weights and bias as host f32 values for the shim, which copies them; the bias must have `outputs` values.
fn host_weights(weight: &Tensor, bias: Option<&Tensor>, outputs: usize) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()).transpose()?;
    if let Some(b) = &bias
        && b.len() != outputs
    {
        bail!("bias of {} values for {outputs} outputs", b.len());
    }
    Ok((w, bias))
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
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, arith: Arith, m_hint: usize, gelu_erf: bool) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let (w32, bias) = host_weights(weight, bias, n)?;
        // Modes 2 and 3: bf16 arithmetic from f32 weights, native (rounded f32 where the CPU has no bf16
        // matmul) or rounded f32.
        let mode = match arith {
            Arith::F32 => 0,
            Arith::Bf16(Bf16Arith::Native) => 2,
            Arith::Bf16(Bf16Arith::RoundedF32) => 3,
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
        let y = super::written_by(m * self.n, |y| {
            let mut err = [0u8; ERR_LEN];
            // SAFETY: x holds m*k contiguous f32, y has room for m*n f32 (all written on success).
            let rc = unsafe { emo_dnnl_linear_run(self.handle, m as i64, v[start..end].as_ptr(), y, err.as_mut_ptr() as *mut c_char, ERR_LEN) };
            if rc != 0 {
                bail!("oneDNN linear: {}", err_text(&err));
            }
            Ok(())
        })?;
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Batched `a · b` (same rank 2..=6, same leading dims, f32, any strides) → contiguous f32.
struct BatchedMatmul {
    arith: Arith,
}

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "onednn-bmm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else { bail!("onednn-bmm: f32 operands expected") };
        let (c, shape) = bmm_slices(a, l1, b, l2, self.arith)?;
        Ok((CpuStorage::F32(c), shape))
    }
}

/// The batched product on storages and their layouts (what a custom op's forward receives).
pub(crate) fn bmm_slices(a: &[f32], l1: &Layout, b: &[f32], l2: &Layout, arith: Arith) -> Result<(Vec<f32>, Shape)> {
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
            operand_code(arith),
            err.as_mut_ptr() as *mut c_char,
            ERR_LEN,
        )
    };
    if rc != 0 {
        bail!("oneDNN batched matmul: {}", err_text(&err));
    }
    Ok((c, Shape::from(out)))
}

/// `a` (..., m, k) · `b` (..., k, n), f32; strided operands are read in place (a transposed `K` is free).
pub fn batched_matmul(a: &Tensor, b: &Tensor, arith: Arith) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &BatchedMatmul { arith })
}

/// `softmax(scale · q · kᵀ) · v` per (batch, head) without materialising the score matrix.
struct FusedAttention {
    scale: f32,
    arith: Arith,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "onednn-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (s1, s2, s3) else { bail!("onednn-attention: f32 operands expected") };
        let (dq, dk, dv) = (l1.shape().dims(), l2.shape().dims(), l3.shape().dims());
        let (&[b, h, m, d], &[bk, hk, n, dk_], &[bv, hv, nv, e]) = (dq, dk, dv) else {
            bail!("onednn-attention: q, k, v must be (batch, heads, tokens, dim), got {dq:?}, {dk:?}, {dv:?}")
        };
        if (bk, hk, dk_) != (b, h, d) || (bv, hv, nv) != (b, h, n) {
            bail!("onednn-attention: q {dq:?}, k {dk:?} and v {dv:?} do not match");
        }
        let dims = [b, h, m, n, d, e].map(|x| x as i64);
        let strides = |l: &Layout| -> [i64; 4] {
            let s = l.stride();
            [s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64]
        };
        let (sq, sk, sv) = (strides(l1), strides(l2), strides(l3));
        let out = super::written_by(b * m * h * e, |out| {
            let mut err = [0u8; ERR_LEN];
            // SAFETY: each pointer starts at its layout's offset and the strides index within its storage
            // (candle layouts); out is dense (b, m, h, e), every row block of every head written on success.
            let rc = unsafe {
                emo_dnnl_attention(
                    dims.as_ptr(),
                    sq.as_ptr(),
                    sk.as_ptr(),
                    sv.as_ptr(),
                    q[l1.start_offset()..].as_ptr(),
                    k[l2.start_offset()..].as_ptr(),
                    v[l3.start_offset()..].as_ptr(),
                    out,
                    self.scale,
                    operand_code(self.arith),
                    err.as_mut_ptr() as *mut c_char,
                    ERR_LEN,
                )
            };
            if rc != 0 {
                bail!("oneDNN attention: {}", err_text(&err));
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, m, h * e))))
    }
}

/// `softmax(scale · q · kᵀ) · v`: q (b, h, m, d), k (b, h, n, d), v (b, h, n, e), any strides → (b, m, h·e)
/// with the heads merged; f32 tensors, the products in `arith` (bf16: bf16 operands, f32 softmax).
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, arith: Arith) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &FusedAttention { scale, arith })
}

/// A 1-D convolution (groups = 1, no padding) over time-major activations (batch, time, channels), as
/// strided GEMMs over the input read in place; the bias and optionally the exact GELU fused. f32.
pub struct PackedConv1d {
    handle: *mut c_void,
    c_in: usize,
    c_out: usize,
}

// SAFETY: the handle owns its oneDNN objects; the shim serialises calls on one handle with a mutex.
unsafe impl Send for PackedConv1d {}
unsafe impl Sync for PackedConv1d {}

impl Drop for PackedConv1d {
    fn drop(&mut self) {
        // SAFETY: the handle came from emo_dnnl_conv1d_new and is freed once.
        unsafe { emo_dnnl_conv1d_free(self.handle) }
    }
}

impl PackedConv1d {
    /// `weight` (c_out, c_in, kernel): groups = 1 and no padding (the strided-GEMM form in the shim).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, stride: usize, gelu_erf: bool) -> Result<Self> {
        let (c_out, c_in, kernel) = weight.dims3()?;
        let (w, bias) = host_weights(weight, bias, c_out)?;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: w holds c_out*c_in*kernel f32, bias c_out f32 (or null); the shim copies both.
        let handle = unsafe {
            emo_dnnl_conv1d_new(
                c_in as i64,
                c_out as i64,
                kernel as i64,
                stride as i64,
                w.as_ptr(),
                bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
                gelu_erf as i32,
                err.as_mut_ptr() as *mut c_char,
                ERR_LEN,
            )
        };
        if handle.is_null() {
            bail!("oneDNN conv1d {c_out}x{c_in}x{kernel}: {}", err_text(&err));
        }
        Ok(Self { handle, c_in, c_out })
    }

    /// `x` (batch, time, c_in) f32 → (batch, time', c_out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for PackedConv1d {
    fn name(&self) -> &'static str {
        "onednn-conv1d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { bail!("onednn-conv1d: f32 input expected") };
        let Some((start, end)) = l.contiguous_offsets() else { bail!("onednn-conv1d: contiguous input expected") };
        let &[b, t, c] = l.shape().dims() else { bail!("onednn-conv1d: input must be (batch, time, channels), got {:?}", l.shape()) };
        if c != self.c_in {
            bail!("onednn-conv1d: input has {c} channels, the conv takes {}", self.c_in);
        }
        // SAFETY: plain arithmetic on the handle's geometry.
        let t_out = unsafe { emo_dnnl_conv1d_out_len(self.handle, t as i64) };
        if t_out < 1 {
            bail!("onednn-conv1d: {t} frames are fewer than the kernel needs");
        }
        let t_out = t_out as usize;
        let y = super::written_by(b * t_out * self.c_out, |y| {
            let mut err = [0u8; ERR_LEN];
            // SAFETY: x holds b*t*c contiguous f32, y has room for b*t_out*c_out f32 (all written on success:
            // the first chunk's product writes, the others add).
            let rc = unsafe { emo_dnnl_conv1d_run(self.handle, b as i64, t as i64, v[start..end].as_ptr(), y, err.as_mut_ptr() as *mut c_char, ERR_LEN) };
            if rc != 0 {
                bail!("oneDNN conv1d: {}", err_text(&err));
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), Shape::from((b, t_out, self.c_out))))
    }
}

/// The exact (erf) GELU through oneDNN's vectorised eltwise kernel.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "onednn-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { bail!("onednn-gelu-erf: f32 input expected") };
        let Some((start, end)) = l.contiguous_offsets() else { bail!("onednn-gelu-erf: contiguous input expected") };
        let y = super::written_by(end - start, |y| {
            let mut err = [0u8; ERR_LEN];
            // SAFETY: x and y hold end-start f32 each (all written on success).
            let rc = unsafe { emo_dnnl_gelu_erf(v[start..end].as_ptr(), y, (end - start) as i64, err.as_mut_ptr() as *mut c_char, ERR_LEN) };
            if rc != 0 {
                bail!("oneDNN gelu: {}", err_text(&err));
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// The exact GELU of a contiguous f32 tensor.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GeluErf)
}
