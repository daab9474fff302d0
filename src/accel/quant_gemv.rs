//! Decoding-step products with GGUF Q4_1 and Q8_0 weights, read in place from the GGUF blocks (no
//! repacked copy): `y = x Wᵀ` for the few activation rows of a decoding step, with llama.cpp's arithmetic.
//! Each 32-value block of an activation row is quantized to int8 with an f16 scale `d` and `s = f16(d·Σq)`
//! (Q8_1), and each weight block contributes `d_w·d_x·Σ q_w·q_x` (Q8_0) or `d_w·d_x·Σ q_w·q_x + m_w·s_x`
//! (Q4_1), the integer sums exact.
//!
//! The kernel is chosen at run time ([`Kernel::detect`]): AVX-512 VNNI (`vpdpbusd`: 64 products per
//! instruction), AVX2 (`vpmaddubsw`), or portable scalar code. candle 0.11's own Q4_1 product is scalar
//! (GGUF Q4_1 matrices used to be converted to Q8_0 on load: twice the bytes per decoding step), and its
//! Q8_0 product is AVX2 only, with the scales converted by a call per block.

use half::f16;

/// Values per quantization block (GGUF QK4_1 = QK8_0 = QK8_1).
pub const BLOCK: usize = 32;

/// The GGUF block formats these kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `d: f16, m: f16, qs: [u8; 16]`: value j in the low nibble of `qs[j]`, value j + 16 in its high nibble.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`.
    Q8_0,
}

impl Format {
    pub fn of(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        match t {
            candle_core::quantized::GgmlDType::Q4_1 => Some(Self::Q4_1),
            candle_core::quantized::GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

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

    /// The kernel the process uses: the detected one, or `EMOLLAMA_QUANT_KERNEL` (`avx512-vnni`, `avx2`,
    /// `scalar`) where this CPU has it (to measure a narrower CPU's path on a wider one).
    pub fn current() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            let detected = Self::detect();
            let Ok(asked) = std::env::var("EMOLLAMA_QUANT_KERNEL") else { return detected };
            match [Self::Avx512Vnni, Self::Avx2, Self::Scalar].into_iter().find(|k| k.name() == asked) {
                Some(k) if k.available() => k,
                Some(k) => {
                    tracing::warn!("EMOLLAMA_QUANT_KERNEL={asked}: this CPU lacks {}'s instructions; using {}", k.name(), detected.name());
                    detected
                }
                None => {
                    tracing::warn!("EMOLLAMA_QUANT_KERNEL={asked} is not one of avx512-vnni, avx2, scalar; using {}", detected.name());
                    detected
                }
            }
        })
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
pub enum QuantError {
    #[error("quantized product: {0}")]
    Shape(String),
}

/// A Q4_1 or Q8_0 matrix of `rows` × `cols` borrowed as its GGUF bytes (row-major, `cols / 32` blocks per row).
#[derive(Clone, Copy)]
pub struct QuantMatrix<'a> {
    bytes: &'a [u8],
    rows: usize,
    cols: usize,
    format: Format,
}

impl<'a> QuantMatrix<'a> {
    pub fn new(bytes: &'a [u8], rows: usize, cols: usize, format: Format) -> Result<Self, QuantError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::Shape(format!("{cols} columns is not a positive multiple of the block size {BLOCK}")));
        }
        let want = rows * cols / BLOCK * format.block_bytes();
        if bytes.len() != want {
            return Err(QuantError::Shape(format!("{} bytes for a {rows}x{cols} {format:?} matrix, expected {want}", bytes.len())));
        }
        Ok(Self { bytes, rows, cols, format })
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let n = self.cols / BLOCK * self.format.block_bytes();
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
/// `dst` must hold `acts.len() · w.rows` values, no other thread may write the entries of `rows`, and
/// `kernel` must be available on this CPU.
unsafe fn product_rows(kernel: Kernel, w: &QuantMatrix, acts: &[Q8_1Row], rows: std::ops::Range<usize>, dst: *mut f32) {
    let n = w.rows;
    // Tiles of ROWS_PER_ITEM weight rows × ACT_TILE activation rows, both cache-resident while they meet
    // (a prompt of hundreds of rows would otherwise stream every activation past every weight row).
    for r0 in rows.clone().step_by(ROWS_PER_ITEM) {
        let tile = r0..(r0 + ROWS_PER_ITEM).min(rows.end);
        for i0 in (0..acts.len()).step_by(ACT_TILE) {
            for r in tile.clone() {
                let row = w.row(r);
                for (i, a) in acts.iter().enumerate().skip(i0).take(ACT_TILE) {
                    // SAFETY: the caller's kernel is available on this CPU.
                    let v = unsafe {
                        match (kernel, w.format) {
                            #[cfg(target_arch = "x86_64")]
                            (Kernel::Avx512Vnni, Format::Q4_1) => q4_1_avx512vnni(row, a),
                            #[cfg(target_arch = "x86_64")]
                            (Kernel::Avx512Vnni, Format::Q8_0) => q8_0_avx512vnni(row, a),
                            #[cfg(target_arch = "x86_64")]
                            (Kernel::Avx2, Format::Q4_1) => q4_1_avx2(row, a),
                            #[cfg(target_arch = "x86_64")]
                            (Kernel::Avx2, Format::Q8_0) => q8_0_avx2(row, a),
                            (_, format) => dot_scalar(format, row, a, 0),
                        }
                    };
                    // SAFETY: i < acts.len() and r < n, inside the caller's buffer; each (i, r) written once.
                    unsafe { *dst.add(i * n + r) = v };
                }
            }
        }
    }
}

/// Blocks `from..` of one weight row against the activation row, without SIMD.
fn dot_scalar(format: Format, row: &[u8], a: &Q8_1Row, from: usize) -> f32 {
    let bytes = format.block_bytes();
    let mut sum = 0f32;
    for b in from..a.blocks {
        let blk = &row[b * bytes..(b + 1) * bytes];
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let (pair, half) = (b / 2, b % 2);
        let xq = &a.qs[pair * 2 * BLOCK..(pair + 1) * 2 * BLOCK];
        // Value j of the block sits at xq[half·16 + j] (j < 16) or xq[32 + half·16 + j − 16].
        let x = |j: usize| xq[(j / 16) * BLOCK + half * 16 + j % 16] as i32;
        let (dx, sx) = (a.ds[pair * 4 + half * 2], a.ds[pair * 4 + half * 2 + 1]);
        match format {
            Format::Q4_1 => {
                let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let isum: i32 = blk[4..].iter().enumerate().map(|(j, &q)| (q & 0x0F) as i32 * x(j) + (q >> 4) as i32 * x(j + 16)).sum();
                sum += isum as f32 * d * dx + m * sx;
            }
            Format::Q8_0 => {
                let isum: i32 = blk[2..].iter().enumerate().map(|(j, &q)| q as i8 as i32 * x(j)).sum();
                sum += isum as f32 * d * dx;
            }
        }
    }
    sum
}

/// The odd last block after `pairs` pairs, if any.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tail(format: Format, row: &[u8], a: &Q8_1Row, pairs: usize) -> f32 {
    if a.blocks > 2 * pairs { dot_scalar(format, row, a, 2 * pairs) } else { 0.0 }
}

/// The two blocks' scale words (f16 `d`, and `m` for Q4_1; 0 for Q8_0) as `[d_b, m_b, d_b+1, m_b+1]` in f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_scales<const BYTES: usize, const HAS_MIN: bool>(p: *const u8) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    unsafe {
        let word = |q: *const u8| if HAS_MIN { (q as *const i32).read_unaligned() } else { (q as *const u16).read_unaligned() as i32 };
        _mm_cvtph_ps(_mm_set_epi32(0, 0, word(p.add(BYTES)), word(p)))
    }
}

/// A Q4_1 pair's 64 weight values as unsigned bytes, low nibbles in the first 32 (b[0..16], b+1[0..16]),
/// high nibbles in the last 32 (b[16..32], b+1[16..32]): the activation's pair order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q4_1_pair(p: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    unsafe {
        let q = _mm256_loadu2_m128i(p.add(20 + 4) as *const __m128i, p.add(4) as *const __m128i);
        let mask = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(q, mask), _mm256_and_si256(_mm256_srli_epi16(q, 4), mask))
    }
}

/// A Q8_0 pair's 64 signed weight values in the activation's pair order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q8_0_pair(p: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    unsafe {
        let (b0, b1) = (p.add(2), p.add(34 + 2));
        (
            _mm256_loadu2_m128i(b1 as *const __m128i, b0 as *const __m128i),
            _mm256_loadu2_m128i(b1.add(16) as *const __m128i, b0.add(16) as *const __m128i),
        )
    }
}

/// `[d_b·d_x, m_b·s_x, d_b+1·d_x', m_b+1·s_x']` of pair `i`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_products<const BYTES: usize, const HAS_MIN: bool>(wp: *const u8, a: &Q8_1Row, i: usize) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's pair index is inside the row and the activation.
    unsafe { _mm_mul_ps(pair_scales::<BYTES, HAS_MIN>(wp), _mm_loadu_ps(a.ds.as_ptr().add(i * 4))) }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hsum128_odd(v: std::arch::x86_64::__m128) -> f32 {
    let mut lanes = [0f32; 4];
    // SAFETY: four floats into a four-float array.
    unsafe { std::arch::x86_64::_mm_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes[1] + lanes[3]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_1_avx512vnni(row: &[u8], a: &Q8_1Row) -> f32 {
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
            let wp = p.add(2 * i * 20);
            let (lo, hi) = q4_1_pair(wp);
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let x = _mm512_loadu_si512(a.qs.as_ptr().add(i * 2 * BLOCK) as *const __m512i);
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
            let scales = pair_products::<20, true>(wp, a, i);
            acc_min = _mm_add_ps(acc_min, scales);
            let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scales));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
        }
    }
    _mm512_reduce_add_ps(acc) + hsum128_odd(acc_min) + tail(Format::Q4_1, row, a, pairs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_avx512vnni(row: &[u8], a: &Q8_1Row) -> f32 {
    use std::arch::x86_64::*;
    let pairs = a.blocks / 2;
    let p = row.as_ptr();
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    // vpdpbusd multiplies unsigned by signed bytes: the activations go unsigned as x + 128 (the sign bit
    // flipped), and 128·Σw comes off again.
    let flip = _mm512_set1_epi8(-128);
    let mut acc = _mm512_setzero_ps();
    for i in 0..pairs {
        // SAFETY: as in `q4_1_avx512vnni`.
        unsafe {
            let wp = p.add(2 * i * 34);
            let (lo, hi) = q8_0_pair(wp);
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let x = _mm512_xor_si512(_mm512_loadu_si512(a.qs.as_ptr().add(i * 2 * BLOCK) as *const __m512i), flip);
            let dot = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), x, w), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, w));
            let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(pair_products::<34, false>(wp, a, i)));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
        }
    }
    _mm512_reduce_add_ps(acc) + tail(Format::Q8_0, row, a, pairs)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: eight floats into an eight-float array.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_avx2(row: &[u8], a: &Q8_1Row) -> f32 {
    use std::arch::x86_64::*;
    let pairs = a.blocks / 2;
    let p = row.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let spread = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm_setzero_ps();
    for i in 0..pairs {
        // SAFETY: as in `q4_1_avx512vnni`.
        unsafe {
            let wp = p.add(2 * i * 20);
            let (lo, hi) = q4_1_pair(wp);
            let xp = a.qs.as_ptr().add(i * 2 * BLOCK);
            let x_lo = _mm256_loadu_si256(xp as *const __m256i);
            let x_hi = _mm256_loadu_si256(xp.add(BLOCK) as *const __m256i);
            // u4 · i8 pairs fit i16 (2·15·127), and so does the sum of the two halves.
            let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
            // Lanes 0-3: block b, 4-7: block b+1.
            let dot = _mm256_madd_epi16(s16, ones);
            let scales = pair_products::<20, true>(wp, a, i);
            acc_min = _mm_add_ps(acc_min, scales);
            let s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(scales), spread);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
        }
    }
    hsum256(acc) + hsum128_odd(acc_min) + tail(Format::Q4_1, row, a, pairs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_avx2(row: &[u8], a: &Q8_1Row) -> f32 {
    use std::arch::x86_64::*;
    let pairs = a.blocks / 2;
    let p = row.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let spread = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    // vpmaddubsw multiplies unsigned by signed bytes: |w| times x with w's sign (llama.cpp's way); a pair
    // of products fits i16 (2·128·127), the two halves' sums do not, so they meet in i32.
    let half = |w: __m256i, x: __m256i| _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
    let mut acc = _mm256_setzero_ps();
    for i in 0..pairs {
        // SAFETY: as in `q4_1_avx512vnni`.
        unsafe {
            let wp = p.add(2 * i * 34);
            let (lo, hi) = q8_0_pair(wp);
            let xp = a.qs.as_ptr().add(i * 2 * BLOCK);
            let dot = _mm256_add_epi32(half(lo, _mm256_loadu_si256(xp as *const __m256i)), half(hi, _mm256_loadu_si256(xp.add(BLOCK) as *const __m256i)));
            let s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair_products::<34, false>(wp, a, i)), spread);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
        }
    }
    hsum256(acc) + tail(Format::Q8_0, row, a, pairs)
}

/// Weight rows per work item: enough to amortise the pool's cursor, few enough to balance two threads.
const ROWS_PER_ITEM: usize = 16;
/// Activation rows met by one tile of weight rows (16 × 4096 int8 values: 64 KiB).
const ACT_TILE: usize = 16;
/// Below this many multiply-adds the product runs on the calling thread (a pool round trip costs more).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// `x Wᵀ` for `x` of `m` rows × `w.cols` (row-major): `m` rows × `w.rows`, on candle's CPU thread pool.
pub fn product(w: &QuantMatrix, x: &[f32], kernel: Kernel) -> Result<Vec<f32>, QuantError> {
    if !x.len().is_multiple_of(w.cols) {
        return Err(QuantError::Shape(format!("{} activation values for {} columns", x.len(), w.cols)));
    }
    if !kernel.available() {
        return Err(QuantError::Shape(format!("the {} kernel needs instructions this CPU lacks", kernel.name())));
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
/// Q4_1 or Q8_0 matrix `w` (`rows, cols`) on the CPU. `None` for other formats and devices: the caller's
/// general path.
pub fn forward(w: &candle_core::quantized::QTensor, x: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
    use candle_core::{DType, Tensor};
    let Some(format) = Format::of(w.dtype()) else { return Ok(None) };
    if !x.device().is_cpu() || !w.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = w.shape().dims2()?;
    let data = w.data()?;
    let matrix = QuantMatrix::new(&data, rows, cols, format).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let y = product(&matrix, &xs, Kernel::current()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut shape = x.dims().to_vec();
    match shape.last_mut() {
        Some(last) => *last = rows,
        None => return Err(candle_core::Error::Msg("quantized product of a scalar".into())),
    }
    Ok(Some(Tensor::from_vec(y, shape, x.device())?.to_dtype(x.dtype())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;
    use candle_core::quantized::{GgmlDType, QTensor};

    /// The exact sum the kernels compute, in f64: dequantized weights times the quantized activation.
    fn reference(w: &QuantMatrix, acts: &[Q8_1Row]) -> Vec<f64> {
        let bytes = w.format.block_bytes();
        let mut out = Vec::new();
        for a in acts {
            for r in 0..w.rows {
                let row = w.row(r);
                let mut s = 0f64;
                for b in 0..a.blocks {
                    let blk = &row[b * bytes..(b + 1) * bytes];
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                    let (pair, half) = (b / 2, b % 2);
                    let x = |j: usize| a.qs[pair * 64 + (j / 16) * 32 + half * 16 + j % 16] as f64;
                    let (dx, sx) = (a.ds[pair * 4 + half * 2] as f64, a.ds[pair * 4 + half * 2 + 1] as f64);
                    for j in 0..32 {
                        let q = match w.format {
                            Format::Q4_1 => ((blk[4 + j % 16] >> (4 * (j / 16))) & 0x0F) as f64,
                            Format::Q8_0 => blk[2 + j] as i8 as f64,
                        };
                        s += d * dx * q * x(j);
                    }
                    if w.format == Format::Q4_1 {
                        s += f16::from_le_bytes([blk[2], blk[3]]).to_f64() * sx;
                    }
                }
                out.push(s);
            }
        }
        out
    }

    fn quantized(t: GgmlDType, rows: usize, cols: usize, seed: u64) -> QTensor {
        let w = crate::test_utils::seeded_uniform(&[rows, cols], seed).unwrap();
        QTensor::quantize(&w, t).unwrap()
    }

    fn kernels() -> impl Iterator<Item = Kernel> {
        [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni].into_iter().filter(|k| k.available())
    }

    /// Both formats; odd and even block counts, one and several activation rows, tiny (one thread) and
    /// pooled sizes.
    #[test]
    fn every_kernel_computes_the_exact_quantized_sum() {
        for t in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols, m) in [(5, 32, 1), (7, 96, 3), (64, 576, 1), (300, 1536, 2), (33, 4160, 4), (50, 128, 37)] {
                let q = quantized(t, rows, cols, rows as u64);
                let data = q.data().unwrap();
                let w = QuantMatrix::new(&data, rows, cols, Format::of(t).unwrap()).unwrap();
                let x: Vec<f32> = crate::test_utils::seeded_uniform(&[m, cols], 7).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for kernel in kernels() {
                    let acts: Vec<Q8_1Row> = x.chunks_exact(cols).map(|r| Q8_1Row::quantize(r, kernel)).collect();
                    let want = reference(&w, &acts);
                    let got = product(&w, &x, kernel).unwrap();
                    // Only the f32 summation order differs: bound by f32 rounding of the terms' magnitudes.
                    let bound = 1e-5 * cols as f64;
                    for (g, e) in got.iter().zip(&want) {
                        assert!((*g as f64 - e).abs() <= bound, "{t:?} {} {rows}x{cols} m={m}: {g} vs {e}", kernel.name());
                    }
                }
            }
        }
    }

    /// The activation quantization is the same on every kernel (bitwise), so kernels differ only in
    /// summation order; and the products agree with candle's own matmuls (llama.cpp's code).
    #[test]
    fn matches_candle_quantized_matmul() {
        let (rows, cols) = (96, 576);
        let x = crate::test_utils::seeded_uniform(&[2, cols], 12).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let scalar: Vec<Q8_1Row> = xs.chunks_exact(cols).map(|r| Q8_1Row::quantize(r, Kernel::Scalar)).collect();
        for kernel in kernels() {
            for (row, want) in xs.chunks_exact(cols).zip(&scalar) {
                let a = Q8_1Row::quantize(row, kernel);
                assert_eq!((&a.qs, &a.ds), (&want.qs, &want.ds), "{}", kernel.name());
            }
        }
        for t in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = std::sync::Arc::new(quantized(t, rows, cols, 11));
            let candle = candle_core::quantized::QMatMul::from_arc(q.clone()).unwrap().forward(&x).unwrap();
            let candle: Vec<f32> = candle.flatten_all().unwrap().to_vec1().unwrap();
            let data = q.data().unwrap();
            let ours = product(&QuantMatrix::new(&data, rows, cols, Format::of(t).unwrap()).unwrap(), &xs, Kernel::current()).unwrap();
            for (i, a) in scalar.iter().enumerate() {
                // Q4_1: candle rounds `s` twice (f16 of the integer sum, then an f16 product with d;
                // llama.cpp and this round d·Σq once): up to 3·2⁻¹¹·|s| per block, times the block minimum
                // (|m| ≤ 1.75 for these draws). Q8_0 activations are Q8_1's without `s`: equal up to f32
                // summation order. Activations tie-round differently (half away from zero in candle),
                // which these draws never hit.
                let s_rounding: f32 = (0..a.blocks).map(|b| 3.0 * 2f32.powi(-11) * a.ds[b / 2 * 4 + b % 2 * 2 + 1].abs() * 1.75).sum();
                let bound = 1e-4 + if t == GgmlDType::Q4_1 { s_rounding } else { 0.0 };
                for r in 0..rows {
                    let (o, c) = (ours[i * rows + r], candle[i * rows + r]);
                    assert!((o - c).abs() <= bound, "{t:?} row {i} col {r}: {o} vs candle {c} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let q = quantized(GgmlDType::Q4_1, 4, 64, 1);
        let data = q.data().unwrap();
        assert!(QuantMatrix::new(&data, 4, 32, Format::Q4_1).is_err());
        assert!(QuantMatrix::new(&data, 4, 63, Format::Q4_1).is_err());
        assert!(QuantMatrix::new(&data, 4, 64, Format::Q8_0).is_err());
        let w = QuantMatrix::new(&data, 4, 64, Format::Q4_1).unwrap();
        assert!(product(&w, &[0.0; 65], Kernel::Scalar).is_err());
        assert!(Format::of(GgmlDType::Q4K).is_none());
    }
}
