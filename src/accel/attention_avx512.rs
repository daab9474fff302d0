//! The frozen encoders' attention, `softmax(scale · q · kᵀ) · v`, in f32 on CPUs with AVX-512, as one
//! pass per block of query rows with register-tiled kernels.
//!
//! oneDNN 2.6 runs it as three primitives per block (the scores product, the softmax, the values product);
//! the scores product with its 64-wide inner dimension re-packs the keys for every block and writes the
//! scores at a fraction of the machine's peak. Profiled on VideoMAE-L (1568 tokens, 16 heads of 64, the
//! 2-core AVX-512 Xeon): the attention took 57 ms of a 212 ms layer, PyTorch's sdpa 54 ms.
//!
//! Here a block of [`ROWS`] queries is transposed once (scaled by `scale · log2 e`), so the scores are
//! computed transposed, sᵀ[key][query], 8 keys × 48 queries per register tile; the softmax then runs down
//! the keys with whole vectors of queries (running maxima and sums in registers, no horizontal
//! reductions); the values product takes 6 queries × 64 value columns per tile. A head's keys and values
//! are copied once into dense rows (the projections' views put rows a token apart), and stay in the
//! core's L2 cache across the head's consecutive blocks with a block's transposed scores (48 × the key
//! count). VideoMAE-L's attention: 37-40 ms per layer (~250 GFLOP/s, 1.4x faster than oneDNN's blocks and
//! than PyTorch's sdpa on the same machine).
//!
//! Other CPUs, dtypes and devices return `None`: the caller keeps oneDNN's path or candle's composition.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Queries per block: three 16-lane vectors.
const ROWS: usize = 48;
/// Keys per scores tile.
const KEY_TILE: usize = 8;
/// Queries per values-product tile.
const VALUE_ROWS: usize = 6;
/// Value columns per values-product tile (four 16-lane vectors).
const VALUE_COLS: usize = 64;

/// `softmax(scale · q · kᵀ) · v` for q (b, h, m, d), k (b, h, n, d), v (b, h, n, e) with the heads merged
/// into the result, (b, m, h·e); the inputs may be strided views (the heads-split projections) as long as
/// their last dimension is contiguous. `None` where this kernel does not apply (no AVX-512, not f32 on the
/// CPU, e not a multiple of 16, a tracked gradient).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Option<Tensor>> {
    if !available() || !applies(q, k, v) {
        return Ok(None);
    }
    Ok(Some(q.apply_op3_no_bwd(k, v, &Attention { scale })?))
}

/// Whether the CPU has AVX-512 F (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let on_cpu = [q, k, v].iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 4);
    if !on_cpu || q.track_op() || k.track_op() || v.track_op() {
        return false;
    }
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let unit_last = [q, k, v].iter().all(|t| t.stride()[3] == 1 || t.dim(3).is_ok_and(|d| d == 1));
    qd[..2] == kd[..2]
        && kd[..3] == vd[..3]
        && qd[3] == kd[3]
        && vd[3] % 16 == 0
        && qd[3] > 0
        && qd[2] > 0
        && kd[2] > 0
        && unit_last
}

struct Attention {
    scale: f32,
}

/// A rank-4 f32 view: its storage, start and element strides.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    start: usize,
    strides: [usize; 4],
}

impl<'a> View<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(data) = s else { candle_core::bail!("attention_avx512 {what}: f32 only") };
        let st = l.stride();
        if st.len() != 4 {
            candle_core::bail!("attention_avx512 {what}: rank 4 only, got {st:?}");
        }
        // The furthest element read must lie in the storage (the kernels read through raw pointers).
        let last = l.start_offset() + l.dims().iter().zip(st).map(|(d, s)| d.saturating_sub(1) * s).sum::<usize>();
        if l.dims().contains(&0) || last >= data.len() {
            candle_core::bail!("attention_avx512 {what}: the view {:?} / {st:?} exceeds its storage", l.dims());
        }
        Ok(Self { data, start: l.start_offset(), strides: [st[0], st[1], st[2], st[3]] })
    }

    /// Head (`b`, `h`): its first row and the element stride between rows.
    fn head(&self, b: usize, h: usize) -> (*const f32, usize) {
        (self.data.as_ptr().wrapping_add(self.start + b * self.strides[0] + h * self.strides[1]), self.strides[2])
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention-avx512"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if !available() {
            candle_core::bail!("attention_avx512: this CPU has no AVX-512");
        }
        let (q, k, v) = (View::new(s1, l1, "q")?, View::new(s2, l2, "k")?, View::new(s3, l3, "v")?);
        let [b, h, m, d] = l1.dims() else { candle_core::bail!("attention_avx512: q must be rank 4") };
        let (n, e) = (l2.dims()[2], l3.dims()[3]);
        let (b, h, m, d) = (*b, *h, *m, *d);
        let unit_last = [(q, d), (k, d), (v, e)].iter().all(|(t, width)| t.strides[3] == 1 || *width == 1);
        if !e.is_multiple_of(16) || l2.dims()[3] != d || !unit_last {
            candle_core::bail!("attention_avx512: unsupported shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let dims = Dims { h, m, n, d, e };
        let blocks = m.div_ceil(ROWS);
        // Log-2 domain: 2^(s·scale·log2 e − max) = e^(s·scale − max'), the factor folded into q's copy.
        let factor = self.scale * std::f32::consts::LOG2_E;
        let out = super::written_by(b * m * h * e, |out| {
            let dst = super::train_ops::SharedOut::from_ptr(out);
            candle_core::utils::barrier_pool().execute_chunked(b * h * blocks, |tasks| {
                SCRATCH.with_borrow_mut(|scratch| {
                    scratch.prepare(d, n, e);
                    for t in tasks {
                        let (bh, block) = (t / blocks, t % blocks);
                        let (bi, hi) = (bh / h, bh % h);
                        // SAFETY: the CPU has AVX-512 F (checked above); the views were bounds-checked, and block t
                        // writes only rows [block·ROWS, +ROWS) of head hi of batch bi in `out`; the blocks together
                        // write every element.
                        unsafe { block_attention(&dims, &q, &k, &v, bi, hi, block * ROWS, factor, scratch, dst) };
                    }
                })
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), (b, m, h * e).into()))
    }
}

#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    m: usize,
    n: usize,
    d: usize,
    e: usize,
}

thread_local! {
    /// Each pool worker's buffers, kept between calls (about 1 MB for VideoMAE-L's heads).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One worker's buffers: the transposed, scaled query block, its transposed scores, and dense copies of
/// the current head's keys and values.
#[derive(Default)]
struct Scratch {
    qt: Vec<f32>,
    scores: Vec<f32>,
    head: Option<(usize, usize)>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl Scratch {
    /// Sized for one call's shapes; no head loaded yet (the buffers may hold another call's values).
    fn prepare(&mut self, d: usize, n: usize, e: usize) {
        self.qt.resize(d * ROWS, 0.0);
        self.scores.resize(n * ROWS, 0.0);
        self.keys.resize(n * d, 0.0);
        self.values.resize(n * e, 0.0);
        self.head = None;
    }

    /// Copies head (`bi`, `hi`)'s keys and values into dense rows, unless they are already there: the
    /// projections' heads-split views put consecutive rows a whole token apart (3·hidden floats for a
    /// fused projection), a new page per row, which the hardware prefetchers do not follow.
    ///
    /// SAFETY: the views' rows hold `d` (keys) and `e` (values) contiguous elements each.
    unsafe fn load_head(&mut self, k: &View, v: &View, bi: usize, hi: usize, d: usize, e: usize) {
        if self.head == Some((bi, hi)) {
            return;
        }
        for (dst, view, width) in [(&mut self.keys, k, d), (&mut self.values, v, e)] {
            let (src, stride) = view.head(bi, hi);
            for (j, row) in dst.chunks_exact_mut(width).enumerate() {
                // SAFETY: row j of the head (the caller's contract).
                row.copy_from_slice(unsafe { std::slice::from_raw_parts(src.add(j * stride), width) });
            }
        }
        self.head = Some((bi, hi));
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block_attention(
    s: &Dims,
    q: &View,
    k: &View,
    v: &View,
    bi: usize,
    hi: usize,
    r0: usize,
    factor: f32,
    scratch: &mut Scratch,
    dst: super::train_ops::SharedOut,
) {
    use std::arch::x86_64::*;
    let rows = ROWS.min(s.m - r0);
    let (d, n) = (s.d, s.n);
    // SAFETY: View::new bounded every row of the head.
    unsafe { scratch.load_head(k, v, bi, hi, d, s.e) };
    // qᵀ: [d][ROWS], scaled; the lanes past the last query stay 0 (their scores are unused).
    let qt = &mut scratch.qt;
    qt.fill(0.0);
    let (queries, query_stride) = q.head(bi, hi);
    for r in 0..rows {
        let src = queries.wrapping_add((r0 + r) * query_stride);
        for i in 0..d {
            // SAFETY: row r0 + r of the head has d elements with unit stride (View::new bounds them).
            qt[i * ROWS + r] = unsafe { *src.add(i) } * factor;
        }
    }
    let scores = scratch.scores.as_mut_ptr();
    // sᵀ[j][r] = k[j] · qᵀ[·][r], 8 keys × 48 queries per tile (a last, partial block: 16 or 32); the
    // running maxima per query as we go.
    let vecs = rows.div_ceil(16);
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); 3];
    let keys = scratch.keys.as_ptr();
    // SAFETY: keys holds n rows of d elements, qt d·ROWS and scores n·ROWS.
    unsafe {
        match vecs {
            1 => all_scores::<1>(keys, n, qt.as_ptr(), d, scores, &mut max),
            2 => all_scores::<2>(keys, n, qt.as_ptr(), d, scores, &mut max),
            _ => all_scores::<3>(keys, n, qt.as_ptr(), d, scores, &mut max),
        }
    }
    // p = 2^(s − max) in place, summed per query.
    let mut sum = [_mm512_setzero_ps(); 3];
    for j in 0..n {
        for (c, (mx, acc)) in max.iter().zip(sum.iter_mut()).enumerate().take(vecs) {
            // SAFETY: within scores' n·ROWS elements.
            unsafe {
                let p = scores.add(j * ROWS + 16 * c);
                let e = exp2_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p), *mx));
                _mm512_storeu_ps(p, e);
                *acc = _mm512_add_ps(*acc, e);
            }
        }
    }
    let mut inv = [0f32; ROWS];
    for (c, acc) in sum.iter().enumerate().take(vecs) {
        // SAFETY: 16 lanes into inv's 48.
        unsafe { _mm512_storeu_ps(inv.as_mut_ptr().add(16 * c), _mm512_div_ps(_mm512_set1_ps(1.0), *acc)) };
    }
    // out[r] = Σ_j p[j][r] · v[j] / sum[r], 6 queries × up to 64 value columns per tile.
    let row_stride = s.h * s.e;
    let (values, value_stride) = (scratch.values.as_ptr(), s.e);
    let mut col = 0;
    while col < s.e {
        let width = VALUE_COLS.min(s.e - col);
        let mut r = 0;
        while r < rows {
            let tile_rows = VALUE_ROWS.min(rows - r);
            let out = dst.at(((bi * s.m + r0 + r) * s.h + hi) * s.e + col);
            // SAFETY: scores columns [r, r + tile_rows) of n rows; value columns [col, col + width) of each
            // key row; the output rows r0 + r.. of this head, row_stride apart, are this task's alone.
            unsafe {
                values_tile_dispatch(
                    tile_rows,
                    width / 16,
                    scores.add(r),
                    n,
                    values.add(col),
                    value_stride,
                    out,
                    row_stride,
                    &inv[r..],
                )
            };
            r += tile_rows;
        }
        col += width;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block_attention(
    _: &Dims,
    _: &View,
    _: &View,
    _: &View,
    _: usize,
    _: usize,
    _: usize,
    _: f32,
    _: &mut Scratch,
    _: super::train_ops::SharedOut,
) {
    unreachable!("attention_avx512 runs only where available() is true")
}

/// All of sᵀ for the first `QV` vectors of queries: tiles of 8 keys, then one tile of the remaining keys.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn all_scores<const QV: usize>(
    keys: *const f32,
    n: usize,
    qt: *const f32,
    d: usize,
    scores: *mut f32,
    max: &mut [std::arch::x86_64::__m512; 3],
) {
    let mut j = 0;
    while j + KEY_TILE <= n {
        // SAFETY: keys j..j + 8 and their scores rows (the caller's contract).
        unsafe { scores_tile::<KEY_TILE, QV>(keys.add(j * d), qt, d, scores.add(j * ROWS), max) };
        j += KEY_TILE;
    }
    macro_rules! tail {
        ($($k:literal)+) => {
            match n - j {
                0 => {}
                // SAFETY: the last n − j keys.
                $($k => unsafe { scores_tile::<$k, QV>(keys.add(j * d), qt, d, scores.add(j * ROWS), max) },)+
                _ => unreachable!("fewer than 8 keys remain"),
            }
        };
    }
    tail!(1 2 3 4 5 6 7);
}

/// `KEYS` rows of sᵀ (the first `QV` vectors of 16 queries each) from `KEYS` consecutive dense key rows
/// and qᵀ ([d][ROWS]); updates the maxima.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores_tile<const KEYS: usize, const QV: usize>(
    keys: *const f32,
    qt: *const f32,
    d: usize,
    out: *mut f32,
    max: &mut [std::arch::x86_64::__m512; 3],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); QV]; KEYS];
    for i in 0..d {
        // SAFETY: qt holds d·ROWS elements and each key row d (the caller's contract).
        unsafe {
            let qrow = qt.add(i * ROWS);
            let qv: [__m512; QV] = std::array::from_fn(|c| _mm512_loadu_ps(qrow.add(16 * c)));
            for (t, a) in acc.iter_mut().enumerate() {
                let kb = _mm512_set1_ps(*keys.add(t * d + i));
                for (ac, q) in a.iter_mut().zip(qv) {
                    *ac = _mm512_fmadd_ps(kb, q, *ac);
                }
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        for (c, (ac, mx)) in a.iter().zip(max.iter_mut()).enumerate() {
            // SAFETY: row t of the tile's ROWS-wide scores.
            unsafe { _mm512_storeu_ps(out.add(t * ROWS + 16 * c), *ac) };
            *mx = _mm512_max_ps(*mx, *ac);
        }
    }
}

/// 2^x for x ≤ 0 (a score minus its query's maximum), to ~2 ulp; 0 below −126, so that no subnormal
/// probability reaches the values product (each would cost a microcode assist there).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn exp2_nonpositive(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-126.0));
    let x = _mm512_max_ps(x, _mm512_set1_ps(-127.0));
    // x = n + f with n an integer and f in [−½, ½].
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    // Cephes' exp2f polynomial: 2^f = 1 + f·P(f) on [−½, ½].
    let mut p = _mm512_set1_ps(1.535_336_2e-4);
    for c in [1.339_887_4e-3, 9.618_437e-3, 5.550_332_5e-2, 2.402_264_8e-1, 6.931_472e-1] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
    _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n))
}

/// The values product for one tile: `tile_rows` (1..=6) queries × `vecs` (1..=4) vectors of 16 columns.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn values_tile_dispatch(
    tile_rows: usize,
    vecs: usize,
    probs: *const f32,
    n: usize,
    values: *const f32,
    value_stride: usize,
    out: *mut f32,
    row_stride: usize,
    inv: &[f32],
) {
    macro_rules! go {
        ($r:literal, $($c:literal)+) => {
            match vecs {
                // SAFETY: forwarded from the caller.
                $($c => unsafe { values_tile::<$r, $c>(probs, n, values, value_stride, out, row_stride, inv) },)+
                _ => unreachable!("value tiles are 1 to 4 vectors wide"),
            }
        };
    }
    match tile_rows {
        6 => go!(6, 1 2 3 4),
        5 => go!(5, 1 2 3 4),
        4 => go!(4, 1 2 3 4),
        3 => go!(3, 1 2 3 4),
        2 => go!(2, 1 2 3 4),
        1 => go!(1, 1 2 3 4),
        _ => unreachable!("value tiles are 1 to 6 queries tall"),
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn values_tile<const R: usize, const C: usize>(
    probs: *const f32,
    n: usize,
    values: *const f32,
    value_stride: usize,
    out: *mut f32,
    row_stride: usize,
    inv: &[f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for j in 0..n {
        // SAFETY: key row j's value columns [0, 16·C) from `values` and probabilities [j·ROWS, +R) (the caller's
        // contract).
        unsafe {
            let vrow = values.add(j * value_stride);
            let vv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(vrow.add(16 * c)));
            let prow = probs.add(j * ROWS);
            for (r, a) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*prow.add(r));
                for (ac, x) in a.iter_mut().zip(vv) {
                    *ac = _mm512_fmadd_ps(p, x, *ac);
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let scale = _mm512_set1_ps(inv[r]);
        for (c, ac) in a.iter().enumerate() {
            // SAFETY: output row r of the tile, columns [16·c, +16).
            unsafe { _mm512_storeu_ps(out.add(r * row_stride + 16 * c), _mm512_mul_ps(*ac, scale)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// softmax(scale · q · kᵀ) · v by candle's ops, heads merged.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, h, m, _) = q.dims4()?;
        let e = v.dim(3)?;
        let q = q.contiguous()?;
        let kt = k.contiguous()?.t()?.contiguous()?;
        let probs = candle_nn::ops::softmax_last_dim(&(q.matmul(&kt)? * scale)?)?;
        probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, m, h * e))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// On a CPU without AVX-512 the kernel declines (the caller keeps oneDNN's path): checked, and true.
    fn declines_without_avx512() -> Result<bool> {
        if available() {
            return Ok(false);
        }
        let x = Tensor::ones((1, 1, 4, 16), DType::F32, &Device::Cpu)?;
        assert!(attention(&x, &x, &x, 1.0)?.is_none(), "no AVX-512: the kernel must decline");
        Ok(true)
    }

    /// Heads-split views of one fused projection, (b, t, 3, h, d) → three (b, h, t, d) strided views.
    fn split_views(b: usize, t: usize, h: usize, d: usize, seed: f32) -> Result<(Tensor, Tensor, Tensor)> {
        let x = (Tensor::arange(0f32, (b * t * 3 * h * d) as f32, &Device::Cpu)? * (0.37 + seed as f64))?.sin()?;
        let x = (x * 3.0)?.reshape((b, t, 3, h, d))?.permute((2, 0, 3, 1, 4))?;
        Ok((x.get(0)?, x.get(1)?, x.get(2)?))
    }

    /// Strided views, query and key counts that leave partial blocks and tiles (48-query blocks whose last
    /// is 1, 2 or 3 vectors wide, 8-key tiles with every remainder, 6-query value tiles), a value width
    /// over 64: the same values as candle's composition.
    #[test]
    fn equals_candles_composition_on_strided_views_and_partial_tiles() -> Result<()> {
        if declines_without_avx512()? {
            return Ok(());
        }
        for (b, t, h, d) in [
            (2, 53, 3, 64),
            (1, 197, 2, 64),
            (1, 7, 1, 16),
            (1, 9, 1, 16),
            (1, 68, 2, 32),
            (1, 90, 1, 64),
            (1, 100, 2, 80),
        ] {
            let (q, k, v) = split_views(b, t, h, d, 0.01 * t as f32)?;
            let scale = (d as f64).powf(-0.5);
            let got = attention(&q, &k, &v, scale as f32)?.expect("the AVX-512 kernel applies");
            let want = reference(&q, &k, &v, scale)?;
            assert_eq!(got.dims(), &[b, t, h * d]);
            let diff = max_diff(&got, &want)?;
            assert!(diff < 2e-5, "(b, t, h, d) = {:?}: max |diff| {diff}", (b, t, h, d));
        }
        Ok(())
    }

    /// Cross-attention shapes (query count ≠ key count, value width ≠ key width) on contiguous inputs.
    #[test]
    fn handles_other_key_counts_and_value_widths() -> Result<()> {
        if declines_without_avx512()? {
            return Ok(());
        }
        let dev = Device::Cpu;
        let q = (Tensor::arange(0f32, 2.0 * 50.0 * 24.0, &dev)?.reshape((1, 2, 50, 24))? * 0.71)?.cos()?;
        let k = (Tensor::arange(0f32, 2.0 * 13.0 * 24.0, &dev)?.reshape((1, 2, 13, 24))? * 0.53)?.sin()?;
        let v = (Tensor::arange(0f32, 2.0 * 13.0 * 32.0, &dev)?.reshape((1, 2, 13, 32))? * 0.29)?.cos()?;
        let got = attention(&q, &k, &v, 0.4)?.expect("the AVX-512 kernel applies");
        let diff = max_diff(&got, &reference(&q, &k, &v, 0.4)?)?;
        assert!(diff < 2e-5, "max |diff| {diff}");
        Ok(())
    }

    /// Large score gaps: probabilities far below the maximum are exactly 0 (no subnormals), and a row
    /// dominated by one key returns that key's value.
    #[test]
    fn far_scores_give_exact_zeros() -> Result<()> {
        if declines_without_avx512()? {
            return Ok(());
        }
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 3, 16), DType::F32, &dev)?;
        // Key 0 scores 16·10 = 160 above the others' 0 (scale 1): e^-160 underflows f32.
        let k = Tensor::cat(
            &[&Tensor::full(10f32, (1, 1, 1, 16), &dev)?, &Tensor::zeros((1, 1, 9, 16), DType::F32, &dev)?],
            2,
        )?;
        let v = Tensor::arange(0f32, 160.0, &dev)?.reshape((1, 1, 10, 16))?;
        let got = attention(&q, &k, &v, 1.0)?.expect("the AVX-512 kernel applies");
        let want = v.get(0)?.get(0)?.get(0)?.unsqueeze(0)?.repeat((3, 1))?.unsqueeze(0)?;
        assert_eq!(max_diff(&got, &want)?, 0.0);
        Ok(())
    }

    /// bf16 inputs, a value width that is not a multiple of 16 and a tracked gradient are left to the
    /// caller.
    #[test]
    fn leaves_other_inputs_to_the_caller() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 1, 4, 16), DType::F32, &dev)?;
        assert!(attention(&x.to_dtype(DType::BF16)?, &x, &x, 1.0)?.is_none());
        let narrow = Tensor::ones((1, 1, 4, 8), DType::F32, &dev)?;
        assert!(attention(&x, &x, &narrow, 1.0)?.is_none());
        let var = candle_core::Var::from_tensor(&x)?;
        assert!(attention(var.as_tensor(), &x, &x, 1.0)?.is_none());
        Ok(())
    }
}
