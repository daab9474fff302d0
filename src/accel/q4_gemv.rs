//! Decoding-step products with GGUF Q4_1 weights, read in place from the GGUF blocks (no repacked copy):
//! `y = x Wᵀ` for the few activation rows of a decoding step, with llama.cpp's arithmetic. Each 32-value
//! block of an activation row is quantized to int8 with an f16 scale `d` and `s = f16(d·Σq)` (Q8_1), and
//! each weight block contributes `d_w·d_x·Σ q_w·q_x + m_w·s_x`, the integer sum exact.
//!
//! The kernel is chosen at run time ([`Kernel::detect`]): AVX-512 VNNI (`vpdpbusd`: 64 products per
//! instruction), AVX2 (`vpmaddubsw`), or portable scalar code. candle 0.11's own Q4_1 product is scalar,
//! which is why GGUF Q4_1 matrices used to be converted to Q8_0 on load (twice the bytes per decoding step).

use half::f16;

/// Values per quantization block (GGUF QK4_1 = QK8_1).
pub const BLOCK: usize = 32;
/// Bytes of one GGUF Q4_1 block: `d: f16, m: f16, qs: [u8; 16]` (value j in the low nibble of `qs[j]`,
/// value j + 16 in its high nibble).
const BLOCK_BYTES: usize = 20;

/// The widest integer dot product this CPU has, for this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512Vnni,
    Avx2,
    Scalar,
}

impl Kernel {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("f16c") {
                return Self::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// The kernel the process uses (detected once).
    pub fn current() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(Self::detect)
    }

    /// Whether this CPU can run `self` (tests force each available kernel).
    pub fn available(self) -> bool {
        match self {
            Self::Scalar => true,
            Self::Avx2 => matches!(Self::detect(), Self::Avx2 | Self::Avx512Vnni),
            Self::Avx512Vnni => Self::detect() == Self::Avx512Vnni,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Scalar => "scalar",
        }
    }
}

/// Errors on shapes and buffers (programming errors of the caller; user input never reaches here unchecked).
#[derive(Debug, thiserror::Error)]
pub enum Q4Error {
    #[error("q4_1 product: {0}")]
    Shape(String),
}

/// A Q4_1 matrix of `rows` × `cols` borrowed as its GGUF bytes (row-major, `cols / 32` blocks per row).
#[derive(Clone, Copy)]
pub struct Q4_1Matrix<'a> {
    bytes: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> Q4_1Matrix<'a> {
    pub fn new(bytes: &'a [u8], rows: usize, cols: usize) -> Result<Self, Q4Error> {
        if cols % BLOCK != 0 {
            return Err(Q4Error::Shape(format!("{cols} columns is not a multiple of the block size {BLOCK}")));
        }
        let want = rows * cols / BLOCK * BLOCK_BYTES;
        if bytes.len() != want {
            return Err(Q4Error::Shape(format!("{} bytes for a {rows}x{cols} Q4_1 matrix, expected {want}", bytes.len())));
        }
        Ok(Self { bytes, rows, cols })
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let n = self.cols / BLOCK * BLOCK_BYTES;
        &self.bytes[r * n..(r + 1) * n]
    }
}

/// One activation row in Q8_1, laid out for the kernels: per pair of blocks (b, b+1) the 64 int8 values
/// in the order the kernels unpack the weight nibbles (`b[0..16], b+1[0..16], b[16..32], b+1[16..32]`)
/// and `[d_b, s_b, d_b+1, s_b+1]`; an odd last block is padded with a zero block.
pub struct Q8_1Row {
    qs: Vec<i8>,
    ds: Vec<f32>,
    blocks: usize,
}

impl Q8_1Row {
    pub fn quantize(x: &[f32], kernel: Kernel) -> Self {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the kernel was detected on this CPU (`Kernel::available`).
            Kernel::Avx512Vnni | Kernel::Avx2 => unsafe { quantize_avx2(x) },
            _ => quantize_portable(x),
        }
    }
}

#[inline(always)]
fn quantize_portable(x: &[f32]) -> Q8_1Row {
    let blocks = x.len() / BLOCK;
    let pairs = blocks.div_ceil(2);
    let mut qs = vec![0i8; pairs * 2 * BLOCK];
    let mut ds = vec![0f32; pairs * 4];
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (pair, half) = (b / 2, b % 2);
        let base = pair * 2 * BLOCK + half * 16;
        let mut sum = 0i32;
        for (j, v) in xb.iter().enumerate() {
            // llama.cpp's SIMD quantizers round half to even (`_mm256_round_ps`, nearest).
            let q = (v * id).round_ties_even() as i8;
            sum += q as i32;
            qs[base + (j / 16) * BLOCK + j % 16] = q;
        }
        ds[pair * 4 + half * 2] = f16::from_f32(d).to_f32();
        ds[pair * 4 + half * 2 + 1] = f16::from_f32(d * sum as f32).to_f32();
    }
    Q8_1Row { qs, ds, blocks }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32]) -> Q8_1Row {
    // The same code, compiled with SSE4.1's `roundps` instead of a libm call per value.
    quantize_portable(x)
}

/// `dst[i·n + r] = Σ_k W[r, k] · x_i[k]` for every activation row `x_i` and weight row `r` in `rows`.
/// `dst` is written through a pointer so disjoint row ranges can run on several threads.
///
/// # Safety
/// `dst` must hold `acts.len() · w.rows` values, and no other thread may write the entries of `rows`.
unsafe fn product_rows(kernel: Kernel, w: &Q4_1Matrix, acts: &[Q8_1Row], rows: std::ops::Range<usize>, dst: *mut f32) {
    let n = w.rows;
    for r in rows {
        let row = w.row(r);
        for (i, a) in acts.iter().enumerate() {
            let v = match kernel {
                // SAFETY: the caller's kernel was detected on this CPU.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => unsafe { dot_avx512vnni(row, a) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { dot_avx2(row, a) },
                _ => dot_scalar(row, a, 0),
            };
            // SAFETY: i < acts.len() and r < n, inside the caller's buffer; each (i, r) written once.
            unsafe { *dst.add(i * n + r) = v };
        }
    }
}

/// Blocks `from..` of one weight row against the activation row, without SIMD.
fn dot_scalar(row: &[u8], a: &Q8_1Row, from: usize) -> f32 {
    let mut sum = 0f32;
    for b in from..a.blocks {
        let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let (pair, half) = (b / 2, b % 2);
        let xq = &a.qs[pair * 2 * BLOCK..(pair + 1) * 2 * BLOCK];
        let mut isum = 0i32;
        for (j, &q) in blk[4..].iter().enumerate() {
            isum += (q & 0x0F) as i32 * xq[half * 16 + j] as i32 + (q >> 4) as i32 * xq[BLOCK + half * 16 + j] as i32;
        }
        sum += isum as f32 * d * a.ds[pair * 4 + half * 2] + m * a.ds[pair * 4 + half * 2 + 1];
    }
    sum
}

/// The two blocks' `[d_b, m_b, d_b+1, m_b+1]` of the pair starting at `p` (f16 → f32).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_scales(p: *const u8) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    unsafe {
        let dm0 = (p as *const i32).read_unaligned();
        let dm1 = (p.add(BLOCK_BYTES) as *const i32).read_unaligned();
        _mm_cvtph_ps(_mm_set_epi32(0, 0, dm1, dm0))
    }
}

/// The pair's 64 weight values as unsigned bytes, low nibbles in the first 32 (b[0..16], b+1[0..16]),
/// high nibbles in the last 32 (b[16..32], b+1[16..32]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_nibbles(p: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    unsafe {
        let q = _mm256_loadu2_m128i(p.add(BLOCK_BYTES + 4) as *const __m128i, p.add(4) as *const __m128i);
        let mask = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(q, mask), _mm256_and_si256(_mm256_srli_epi16(q, 4), mask))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_avx512vnni(row: &[u8], a: &Q8_1Row) -> f32 {
    use std::arch::x86_64::*;
    let pairs = a.blocks / 2;
    let p = row.as_ptr();
    // Lanes 0-3 and 8-11 hold block b's partial sums, 4-7 and 12-15 block b+1's.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    let mut acc = _mm512_setzero_ps();
    let mut acc_min = _mm_setzero_ps();
    for i in 0..pairs {
        // SAFETY: pair i covers blocks 2i and 2i+1 < a.blocks, inside the row; the activation holds
        // 64 values and 4 scales per pair.
        unsafe {
            let wp = p.add(2 * i * BLOCK_BYTES);
            let (lo, hi) = pair_nibbles(wp);
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let x = _mm512_loadu_si512(a.qs.as_ptr().add(i * 2 * BLOCK) as *const __m512i);
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
            // [d_b·d_x, m_b·s_x, d_b+1·d_x', m_b+1·s_x'].
            let scales = _mm_mul_ps(pair_scales(wp), _mm_loadu_ps(a.ds.as_ptr().add(i * 4)));
            acc_min = _mm_add_ps(acc_min, scales);
            let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scales));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
        }
    }
    let mut mins = [0f32; 4];
    // SAFETY: four floats into a four-float array.
    unsafe { _mm_storeu_ps(mins.as_mut_ptr(), acc_min) };
    _mm512_reduce_add_ps(acc) + mins[1] + mins[3] + dot_scalar(row, a, 2 * pairs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(row: &[u8], a: &Q8_1Row) -> f32 {
    use std::arch::x86_64::*;
    let pairs = a.blocks / 2;
    let p = row.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let spread = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm_setzero_ps();
    for i in 0..pairs {
        // SAFETY: as in `dot_avx512vnni`.
        unsafe {
            let wp = p.add(2 * i * BLOCK_BYTES);
            let (lo, hi) = pair_nibbles(wp);
            let xp = a.qs.as_ptr().add(i * 2 * BLOCK);
            let x_lo = _mm256_loadu_si256(xp as *const __m256i);
            let x_hi = _mm256_loadu_si256(xp.add(BLOCK) as *const __m256i);
            // u4 · i8 pairs fit i16 (2·15·127), and so does the sum of the two halves.
            let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
            // Lanes 0-3: block b, 4-7: block b+1.
            let dot = _mm256_madd_epi16(s16, ones);
            let scales = _mm_mul_ps(pair_scales(wp), _mm_loadu_ps(a.ds.as_ptr().add(i * 4)));
            acc_min = _mm_add_ps(acc_min, scales);
            let s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(scales), spread);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
        }
    }
    let mut lanes = [0f32; 8];
    let mut mins = [0f32; 4];
    // SAFETY: eight and four floats into arrays of that size.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        _mm_storeu_ps(mins.as_mut_ptr(), acc_min);
    }
    lanes.iter().sum::<f32>() + mins[1] + mins[3] + dot_scalar(row, a, 2 * pairs)
}

/// Weight rows per work item: enough to amortise the pool's cursor, few enough to balance two threads.
const ROWS_PER_ITEM: usize = 16;
/// Below this many multiply-adds the product runs on the calling thread (a pool round trip costs more).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// `x Wᵀ` for `x` of `m` rows × `w.cols` (row-major): `m` rows × `w.rows`, on candle's CPU thread pool.
pub fn product(w: &Q4_1Matrix, x: &[f32], kernel: Kernel) -> Result<Vec<f32>, Q4Error> {
    if x.len() % w.cols != 0 {
        return Err(Q4Error::Shape(format!("{} activation values for {} columns", x.len(), w.cols)));
    }
    if !kernel.available() {
        return Err(Q4Error::Shape(format!("the {} kernel needs instructions this CPU lacks", kernel.name())));
    }
    let acts: Vec<Q8_1Row> = x.chunks_exact(w.cols).map(|row| Q8_1Row::quantize(row, kernel)).collect();
    let n = w.rows;
    let mut dst = vec![0f32; acts.len() * n];
    let ptr = dst.as_mut_ptr() as usize;
    if acts.len() * n * w.cols < PARALLEL_MIN_MACS {
        // SAFETY: dst holds acts.len()·n values; one thread.
        unsafe { product_rows(kernel, w, &acts, 0..n, ptr as *mut f32) };
    } else {
        let items = n.div_ceil(ROWS_PER_ITEM);
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let rows = range.start * ROWS_PER_ITEM..(range.end * ROWS_PER_ITEM).min(n);
            // SAFETY: dst outlives the pool call; the cursor hands out disjoint item ranges.
            unsafe { product_rows(kernel, w, &acts, rows, ptr as *mut f32) };
        });
    }
    Ok(dst)
}

/// `x Wᵀ` for a CPU tensor `x` (`…, cols`, any float dtype: computed in f32, returned in `x`'s dtype) and a
/// Q4_1 matrix `w` (`rows, cols`) on the CPU. `None` when `w` is not CPU Q4_1: the caller's general path.
pub fn forward(w: &candle_core::quantized::QTensor, x: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
    use candle_core::{DType, Tensor};
    if w.dtype() != candle_core::quantized::GgmlDType::Q4_1 || !x.device().is_cpu() || !w.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = w.shape().dims2()?;
    let data = w.data()?;
    let matrix = Q4_1Matrix::new(&data, rows, cols).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let y = product(&matrix, &xs, Kernel::current()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut shape = x.dims().to_vec();
    match shape.last_mut() {
        Some(last) => *last = rows,
        None => return Err(candle_core::Error::Msg("q4_1 product of a scalar".into())),
    }
    Ok(Some(Tensor::from_vec(y, shape, x.device())?.to_dtype(x.dtype())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Module;

    /// The exact sum the kernels compute, in f64: dequantized Q4_1 weights times the Q8_1 activation.
    fn reference(w: &Q4_1Matrix, acts: &[Q8_1Row]) -> Vec<f64> {
        let mut out = Vec::new();
        for a in acts {
            for r in 0..w.rows {
                let row = w.row(r);
                let mut s = 0f64;
                for b in 0..a.blocks {
                    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                    let m = f16::from_le_bytes([blk[2], blk[3]]).to_f64();
                    let (pair, half) = (b / 2, b % 2);
                    let xq = &a.qs[pair * 64..(pair + 1) * 64];
                    for j in 0..16 {
                        let (lo, hi) = ((blk[4 + j] & 0x0F) as f64, (blk[4 + j] >> 4) as f64);
                        s += d * a.ds[pair * 4 + half * 2] as f64 * (lo * xq[half * 16 + j] as f64 + hi * xq[32 + half * 16 + j] as f64);
                    }
                    s += m * a.ds[pair * 4 + half * 2 + 1] as f64;
                }
                out.push(s);
            }
        }
        out
    }

    fn q4_1(rows: usize, cols: usize, seed: u64) -> QTensor {
        let w = crate::test_utils::seeded_uniform(&[rows, cols], seed).unwrap();
        QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()
    }

    /// Odd and even block counts, one and several activation rows, tiny (one thread) and pooled sizes.
    #[test]
    fn every_kernel_computes_the_exact_q4_1_q8_1_sum() {
        for (rows, cols, m) in [(5, 32, 1), (7, 96, 3), (64, 576, 1), (300, 1536, 2), (33, 4160, 4)] {
            let q = q4_1(rows, cols, rows as u64);
            let data = q.data().unwrap();
            let w = Q4_1Matrix::new(&data, rows, cols).unwrap();
            let x: Vec<f32> = crate::test_utils::seeded_uniform(&[m, cols], 7).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni].into_iter().filter(|k| k.available()) {
                let acts: Vec<Q8_1Row> = x.chunks_exact(cols).map(|r| Q8_1Row::quantize(r, kernel)).collect();
                let want = reference(&w, &acts);
                let got = product(&w, &x, kernel).unwrap();
                // Only the f32 summation order differs: bound by f32 rounding of the terms' magnitudes.
                let bound = 1e-5 * cols as f64;
                for (g, e) in got.iter().zip(&want) {
                    assert!((*g as f64 - e).abs() <= bound, "{} {rows}x{cols} m={m}: {g} vs {e}", kernel.name());
                }
            }
        }
    }

    /// The activation quantization is the same on every kernel (bitwise), so kernels differ only in
    /// summation order; and the product agrees with candle's own Q4_1 matmul (llama.cpp's scalar code).
    #[test]
    fn matches_candle_q4_1_matmul() {
        let (rows, cols) = (96, 576);
        let q = q4_1(rows, cols, 11);
        let x = crate::test_utils::seeded_uniform(&[2, cols], 12).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let scalar: Vec<(Vec<i8>, Vec<f32>)> = xs.chunks_exact(cols).map(|r| {
            let a = Q8_1Row::quantize(r, Kernel::Scalar);
            (a.qs, a.ds)
        }).collect();
        for kernel in [Kernel::Avx2, Kernel::Avx512Vnni].into_iter().filter(|k| k.available()) {
            for (row, (qs, ds)) in xs.chunks_exact(cols).zip(&scalar) {
                let a = Q8_1Row::quantize(row, kernel);
                assert_eq!((&a.qs, &a.ds), (qs, ds), "{}", kernel.name());
            }
        }
        let candle = candle_core::quantized::QMatMul::from_arc(std::sync::Arc::new(q4_1(rows, cols, 11))).unwrap().forward(&x).unwrap();
        let candle: Vec<f32> = candle.flatten_all().unwrap().to_vec1().unwrap();
        let data = q.data().unwrap();
        let ours = product(&Q4_1Matrix::new(&data, rows, cols).unwrap(), &xs, Kernel::current()).unwrap();
        // candle rounds `s` twice (f16 of the integer sum, then an f16 product with d; llama.cpp and this
        // round d·Σq once): up to 3·2⁻¹¹·|s| per block, times the block minimum (|m| ≤ 1.75 for these draws).
        // Activations tie-round differently (half away from zero there), which these draws never hit.
        for (i, row) in xs.chunks_exact(cols).enumerate() {
            let a = Q8_1Row::quantize(row, Kernel::Scalar);
            let bound = 1e-4 + (0..a.blocks).map(|b| 3.0 * 2f32.powi(-11) * a.ds[b / 2 * 4 + b % 2 * 2 + 1].abs() * 1.75).sum::<f32>();
            for r in 0..rows {
                let (o, c) = (ours[i * rows + r], candle[i * rows + r]);
                assert!((o - c).abs() <= bound, "row {i} col {r}: {o} vs candle {c} (bound {bound})");
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let q = q4_1(4, 64, 1);
        let data = q.data().unwrap();
        assert!(Q4_1Matrix::new(&data, 4, 32).is_err());
        assert!(Q4_1Matrix::new(&data, 4, 63).is_err());
        let w = Q4_1Matrix::new(&data, 4, 64).unwrap();
        assert!(product(&w, &[0.0; 65], Kernel::Scalar).is_err());
    }
}
