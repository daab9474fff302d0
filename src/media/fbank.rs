//! Kaldi's log-mel filterbank as `torchaudio.compliance.kaldi.fbank` computes it, the front end of BEATs
//! (`fbank(waveform * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)`).
//!
//! The Kaldi defaults are fixed: no dither, per-frame DC offset removal, pre-emphasis 0.97 (the first
//! sample against itself), the Povey window (`hann(periodic=False) ** 0.85`), frames that fit whole
//! (`snip_edges`), FFT size rounded up to a power of two, power spectrum, triangular filters evenly spaced
//! on Kaldi's mel scale `1127 ln(1 + f / 700)` from `low_freq` to `high_freq` (≤ 0: relative to Nyquist),
//! `ln(max(energy, f32::EPSILON))`, no energy column, no mean subtraction. The filters are computed in f32
//! as torchaudio's are, everything else in f64: that matches torchaudio run in f64 to ~3e-5 (torch's
//! vectorised f32 log, used for the filters' mel values, is one ulp off in places); its usual f32 run rounds
//! low-energy bins of loud frames by up to ~3e-4 (1e-4 relative) from its own f64 result.

use std::f64::consts::PI;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FbankError {
    #[error("fbank: {0}")]
    Config(String),
    #[error("fbank: the waveform has {samples} samples; one {window}-sample analysis window needs at least that many")]
    TooShort { samples: usize, window: usize },
}

/// The settings BEATs passes (the rest are Kaldi's defaults, see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct FbankOptions {
    pub sample_frequency: f64,
    /// Milliseconds.
    pub frame_length: f64,
    /// Milliseconds.
    pub frame_shift: f64,
    pub num_mel_bins: usize,
    pub low_freq: f64,
    /// ≤ 0: added to the Nyquist frequency.
    pub high_freq: f64,
}

impl FbankOptions {
    /// BEATs / VideoLLaMA2's call: 128 bins, 16 kHz, 25 ms every 10 ms.
    pub fn beats() -> Self {
        Self { sample_frequency: 16_000.0, frame_length: 25.0, frame_shift: 10.0, num_mel_bins: 128, low_freq: 20.0, high_freq: 0.0 }
    }

    /// Samples per analysis window and between windows (torchaudio truncates both to whole samples).
    pub fn window_samples(&self) -> (usize, usize) {
        ((self.sample_frequency * self.frame_length * 0.001) as usize, (self.sample_frequency * self.frame_shift * 0.001) as usize)
    }

    /// Frames of `samples` samples, without building the filterbank (plans count tokens with it).
    pub fn frames_for(&self, samples: usize) -> usize {
        let (size, shift) = self.window_samples();
        frame_count(samples, size, shift)
    }
}

/// Frames of `samples` samples with windows of `size` every `shift` (`snip_edges`: only whole windows).
fn frame_count(samples: usize, size: usize, shift: usize) -> usize {
    if samples < size || shift == 0 { 0 } else { 1 + (samples - size) / shift }
}

const PREEMPHASIS: f64 = 0.97;

/// A prepared filterbank: window, mel filters and FFT tables for one set of options.
#[derive(Debug, Clone)]
pub struct KaldiFbank {
    window_size: usize,
    window_shift: usize,
    window: Vec<f64>,
    /// Per mel bin: the first FFT bin with a non-zero weight, and the weights from there.
    filters: Vec<(usize, Vec<f64>)>,
    fft: Fft,
}

/// Kaldi's mel scale (torchaudio's `mel_scale_scalar`, f64).
fn mel(freq: f64) -> f64 {
    1127.0 * (1.0 + freq / 700.0).ln()
}

impl KaldiFbank {
    pub fn new(o: &FbankOptions) -> Result<Self, FbankError> {
        let cfg = |m: String| FbankError::Config(m);
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(o.sample_frequency) || !positive(o.frame_shift) || !positive(o.frame_length) {
            return Err(cfg(format!("sample_frequency {}, frame_length {} ms and frame_shift {} ms must be positive", o.sample_frequency, o.frame_length, o.frame_shift)));
        }
        let (window_size, window_shift) = o.window_samples();
        if window_size < 2 || window_shift == 0 {
            return Err(cfg(format!("a window of {window_size} samples every {window_shift} samples is too small")));
        }
        let padded = window_size.next_power_of_two();
        if o.num_mel_bins <= 3 {
            return Err(cfg(format!("num_mel_bins {} must be more than 3", o.num_mel_bins)));
        }
        let nyquist = 0.5 * o.sample_frequency;
        let high = if o.high_freq <= 0.0 { o.high_freq + nyquist } else { o.high_freq };
        if !(0.0 <= o.low_freq && o.low_freq < nyquist && 0.0 < high && high <= nyquist && o.low_freq < high) {
            return Err(cfg(format!("low_freq {} and high_freq {} (→ {high}) must satisfy 0 ≤ low < high ≤ Nyquist {nyquist}", o.low_freq, o.high_freq)));
        }
        let n = window_size as f64;
        let window = (0..window_size).map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / (n - 1.0)).cos()).powf(0.85)).collect();
        // The filters as torchaudio's `get_mel_banks` makes them: f32 tensors (whatever the waveform's dtype),
        // from f64 scalars rounded to f32. Near a triangle's edge the f32 rounding of the mel values moves
        // the weight by ~1e-5, which shows in the log energy of a weak bin next to a strong one.
        let bin_width = (o.sample_frequency / padded as f64) as f32;
        let (mel_low, mel_high) = (mel(o.low_freq), mel(high));
        let delta = ((mel_high - mel_low) / (o.num_mel_bins + 1) as f64) as f32;
        let mel_low = mel_low as f32;
        // torchaudio's filters cover FFT bins 0..padded/2; the Nyquist bin gets weight 0.
        let fft_mels: Vec<f32> = (0..padded / 2).map(|k| 1127.0f32 * (1.0f32 + bin_width * k as f32 / 700.0f32).ln()).collect();
        let filters = (0..o.num_mel_bins)
            .map(|b| {
                let (left, centre, right) = (mel_low + b as f32 * delta, mel_low + (b as f32 + 1.0) * delta, mel_low + (b as f32 + 2.0) * delta);
                let w: Vec<f64> = fft_mels.iter().map(|&m| f64::from(((m - left) / (centre - left)).min((right - m) / (right - centre)).max(0.0))).collect();
                let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
                let last = w.iter().rposition(|&v| v > 0.0).map_or(first, |l| l + 1);
                (first, w[first..last].to_vec())
            })
            .collect();
        Ok(Self { window_size, window_shift, window, filters, fft: Fft::new(padded) })
    }

    pub fn num_mel_bins(&self) -> usize {
        self.filters.len()
    }

    /// Frames of `samples` samples (`snip_edges`: only whole windows).
    pub fn frames_for(&self, samples: usize) -> usize {
        frame_count(samples, self.window_size, self.window_shift)
    }

    /// The shortest waveform with `frames` frames.
    pub fn samples_for(&self, frames: usize) -> usize {
        if frames == 0 { 0 } else { self.window_size + (frames - 1) * self.window_shift }
    }

    /// Log-mel energies of `wave` (already scaled as the caller wants, e.g. × 2¹⁵ for BEATs), row-major
    /// (frames, num_mel_bins).
    pub fn compute(&self, wave: &[f32]) -> Result<Vec<f32>, FbankError> {
        use rayon::prelude::*;
        let frames = self.frames_for(wave.len());
        if frames == 0 {
            return Err(FbankError::TooShort { samples: wave.len(), window: self.window_size });
        }
        let bins = self.num_mel_bins();
        let mut out = vec![0f32; frames * bins];
        out.par_chunks_mut(bins).enumerate().for_each_init(
            || (vec![0f64; self.fft.n], vec![0f64; self.fft.n]),
            |(re, im), (f, row)| {
                let start = f * self.window_shift;
                let frame = &wave[start..start + self.window_size];
                let mean = frame.iter().map(|&v| f64::from(v)).sum::<f64>() / self.window_size as f64;
                re.iter_mut().for_each(|v| *v = 0.0);
                im.iter_mut().for_each(|v| *v = 0.0);
                let mut prev = f64::from(frame[0]) - mean;
                for (i, &v) in frame.iter().enumerate() {
                    let x = f64::from(v) - mean;
                    re[i] = (x - PREEMPHASIS * prev) * self.window[i];
                    prev = x;
                }
                self.fft.forward(re, im);
                for (o, (first, w)) in row.iter_mut().zip(&self.filters) {
                    let e: f64 = w.iter().enumerate().map(|(j, &wj)| {
                        let k = first + j;
                        wj * (re[k] * re[k] + im[k] * im[k])
                    }).sum();
                    *o = e.max(f64::from(f32::EPSILON)).ln() as f32;
                }
            },
        );
        Ok(out)
    }
}

/// In-place radix-2 complex FFT of a fixed power-of-two size.
#[derive(Debug, Clone)]
struct Fft {
    n: usize,
    /// `exp(-2πik/n)` for k < n/2.
    cos: Vec<f64>,
    sin: Vec<f64>,
    rev: Vec<usize>,
}

impl Fft {
    fn new(n: usize) -> Self {
        let bits = n.trailing_zeros();
        let rev = (0..n).map(|i| if bits == 0 { 0 } else { i.reverse_bits() >> (usize::BITS - bits) }).collect();
        let (cos, sin) = (0..n / 2).map(|k| {
            let a = -2.0 * PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        }).unzip();
        Self { n, cos, sin, rev }
    }

    fn forward(&self, re: &mut [f64], im: &mut [f64]) {
        let n = self.n;
        for i in 0..n {
            let j = self.rev[i];
            if i < j {
                re.swap(i, j);
                im.swap(i, j);
            }
        }
        let mut len = 2;
        while len <= n {
            let step = n / len;
            for start in (0..n).step_by(len) {
                for k in 0..len / 2 {
                    let (c, s) = (self.cos[k * step], self.sin[k * step]);
                    let (a, b) = (start + k, start + k + len / 2);
                    let (tr, ti) = (re[b] * c - im[b] * s, re[b] * s + im[b] * c);
                    re[b] = re[a] - tr;
                    im[b] = im[a] - ti;
                    re[a] += tr;
                    im[a] += ti;
                }
            }
            len *= 2;
        }
    }
}

/// BEATs' front end: `fbank(wave · 2¹⁵)` with [`FbankOptions::beats`], (frames, 128) row-major.
pub fn beats_fbank(wave: &[f32]) -> Result<Vec<f32>, FbankError> {
    let scaled: Vec<f32> = wave.iter().map(|&v| v * 32768.0).collect();
    KaldiFbank::new(&FbankOptions::beats())?.compute(&scaled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_matches_a_direct_dft() {
        let n = 16;
        let x: Vec<f64> = (0..n).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3 + (i as f64).sin()).collect();
        let (mut re, mut im) = (x.clone(), vec![0.0; n]);
        Fft::new(n).forward(&mut re, &mut im);
        for k in 0..n {
            let (mut r, mut i) = (0.0, 0.0);
            for (t, &v) in x.iter().enumerate() {
                let a = -2.0 * PI * (k * t) as f64 / n as f64;
                r += v * a.cos();
                i += v * a.sin();
            }
            assert!((r - re[k]).abs() < 1e-12 && (i - im[k]).abs() < 1e-12, "bin {k}");
        }
    }

    #[test]
    fn geometry_and_silence() -> Result<(), FbankError> {
        let fb = KaldiFbank::new(&FbankOptions::beats())?;
        assert_eq!(fb.frames_for(480_000), 2998);
        assert_eq!(fb.frames_for(399), 0);
        // The options count the same frames without the filterbank.
        for n in [0, 399, 400, 559, 560, 480_000] {
            assert_eq!(FbankOptions::beats().frames_for(n), fb.frames_for(n), "{n} samples");
        }
        assert_eq!(fb.samples_for(16), 400 + 15 * 160);
        let out = fb.compute(&[0.0; 800])?;
        assert_eq!(out.len(), 3 * 128);
        // ln(f32::EPSILON), what torchaudio gives for silence.
        assert!(out.iter().all(|&v| (v - f32::EPSILON.ln()).abs() < 1e-6));
        assert_eq!(fb.compute(&[0.0; 399]), Err(FbankError::TooShort { samples: 399, window: 400 }));
        Ok(())
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = |f: fn(&mut FbankOptions)| {
            let mut o = FbankOptions::beats();
            f(&mut o);
            KaldiFbank::new(&o).is_err()
        };
        assert!(bad(|o| o.num_mel_bins = 3));
        assert!(bad(|o| o.low_freq = 9000.0));
        assert!(bad(|o| o.high_freq = 9000.0));
        assert!(bad(|o| o.frame_shift = 0.0));
        assert!(bad(|o| o.sample_frequency = f64::NAN));
    }
}
