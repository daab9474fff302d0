//! Whisper's log-mel front end, as `whisper.audio.log_mel_spectrogram` / HF's `WhisperFeatureExtractor`
//! compute it: 25 ms periodic Hann frames every 10 ms (centred, reflect-padded), the power spectrum
//! through a Slaney mel filterbank, log10 floored at 1e-10, clamped to 8 below its maximum, scaled
//! `(x + 4) / 4`. The filterbank is computed here (librosa's `filters.mel` defaults) rather than shipped.

use candle_core::{Device, Tensor};

use super::AsrError;

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// One decoding window: 30 s.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames of one window.
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;

/// Slaney's mel scale (librosa `hz_to_mel(htk=False)`): linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ { min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep } else { hz / F_SP }
}

fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp() } else { F_SP * mel }
}

/// librosa `filters.mel(sr, n_fft, n_mels)` with its defaults (fmin 0, fmax sr/2, `htk=False`,
/// `norm="slaney"`): `n_mels x (n_fft / 2 + 1)` row-major, computed in f64 and rounded to f32 like
/// librosa's float32 output (Whisper's `mel_filters.npz` was made that way).
pub fn mel_filters(sample_rate: usize, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_freqs).map(|i| i as f64 * sample_rate as f64 / n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sample_rate as f64 / 2.0));
    // n_mels + 2 band edges, evenly spaced in mel.
    let edges: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let mut out = Vec::with_capacity(n_mels * n_freqs);
    for m in 0..n_mels {
        let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
        // Slaney normalisation: every triangle has the same area.
        let enorm = 2.0 / (right - left);
        for &f in &fft_freqs {
            let rise = (f - left) / (centre - left);
            let fall = (right - f) / (right - centre);
            out.push((rise.min(fall).max(0.0) * enorm) as f32);
        }
    }
    out
}

/// The log-mel spectrogram of one 30 s window: `samples` (at most [`N_SAMPLES`], zero-padded to it) to
/// `n_mels x N_FRAMES` row-major, with `filters` from [`mel_filters`]. The DFT runs as one matmul on the
/// CPU (400 is not a power of two, and a 3000 x 400 by 400 x 402 product is fast).
pub fn log_mel_spectrogram(samples: &[f32], filters: &[f32], n_mels: usize) -> Result<Vec<f32>, AsrError> {
    let n_freqs = N_FFT / 2 + 1;
    if samples.len() > N_SAMPLES {
        return Err(AsrError::Input(format!("{} samples do not fit one window of {N_SAMPLES}", samples.len())));
    }
    if filters.len() != n_mels * n_freqs {
        return Err(AsrError::Input(format!("{} filterbank values, expected {n_mels} x {n_freqs}", filters.len())));
    }
    // Zero-pad to the window, then reflect-pad by N_FFT / 2 on both sides (torch.stft center=True).
    let pad = N_FFT / 2;
    let mut x = vec![0f32; N_SAMPLES + 2 * pad];
    x[pad..pad + samples.len()].copy_from_slice(samples);
    for i in 0..pad {
        x[pad - 1 - i] = x[pad + 1 + i];
        x[pad + N_SAMPLES + i] = x[pad + N_SAMPLES - 2 - i];
    }
    // Periodic Hann window (torch.hann_window's default).
    let window: Vec<f64> = (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()).collect();
    // STFT yields N_FRAMES + 1 frames; Whisper drops the last one.
    let mut frames = Vec::with_capacity(N_FRAMES * N_FFT);
    for f in 0..N_FRAMES {
        let s = &x[f * HOP_LENGTH..f * HOP_LENGTH + N_FFT];
        frames.extend(s.iter().zip(&window).map(|(&v, &w)| (f64::from(v) * w) as f32));
    }
    // Real DFT basis: cos columns then -sin columns, angles reduced mod N_FFT for accuracy.
    let mut basis = vec![0f32; N_FFT * 2 * n_freqs];
    for n in 0..N_FFT {
        for k in 0..n_freqs {
            let angle = 2.0 * std::f64::consts::PI * ((n * k) % N_FFT) as f64 / N_FFT as f64;
            basis[n * 2 * n_freqs + k] = angle.cos() as f32;
            basis[n * 2 * n_freqs + n_freqs + k] = -angle.sin() as f32;
        }
    }
    let cpu = Device::Cpu;
    let frames = Tensor::from_vec(frames, (N_FRAMES, N_FFT), &cpu)?;
    let basis = Tensor::from_vec(basis, (N_FFT, 2 * n_freqs), &cpu)?;
    let spec = frames.matmul(&basis)?;
    let power = (spec.narrow(1, 0, n_freqs)?.sqr()? + spec.narrow(1, n_freqs, n_freqs)?.sqr()?)?;
    let filters = Tensor::from_slice(filters, (n_mels, n_freqs), &cpu)?;
    // (n_mels x n_freqs) . (n_freqs x N_FRAMES)
    let mel = filters.matmul(&power.t()?.contiguous()?)?;
    let mut mel = mel.flatten_all()?.to_vec1::<f32>()?;
    let mut max = f32::NEG_INFINITY;
    for v in mel.iter_mut() {
        *v = v.max(1e-10).log10();
        max = max.max(*v);
    }
    for v in mel.iter_mut() {
        *v = (v.max(max - 8.0) + 4.0) / 4.0;
    }
    Ok(mel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_is_linear_below_1khz() {
        for hz in [0.0, 100.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn filterbank_has_whispers_shape_and_no_empty_band() {
        let f = mel_filters(SAMPLE_RATE, N_FFT, 80);
        assert_eq!(f.len(), 80 * 201);
        assert!(f.iter().all(|v| v.is_finite() && *v >= 0.0));
        // Every band has weight somewhere.
        for m in 0..80 {
            assert!(f[m * 201..(m + 1) * 201].iter().any(|v| *v > 0.0), "band {m} is empty");
        }
    }

    #[test]
    fn a_tone_peaks_in_the_mel_band_of_its_frequency() {
        let filters = mel_filters(SAMPLE_RATE, N_FFT, 80);
        let tone: Vec<f32> = (0..SAMPLE_RATE).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / SAMPLE_RATE as f32).sin() * 0.5).collect();
        let mel = log_mel_spectrogram(&tone, &filters, 80).expect("mel");
        assert_eq!(mel.len(), 80 * N_FRAMES);
        // Frame 50 (0.5 s in): the loudest band is the one whose filter weighs 1 kHz (bin 25) most.
        let frame: Vec<f32> = (0..80).map(|m| mel[m * N_FRAMES + 50]).collect();
        let loudest = (0..80).max_by(|&a, &b| frame[a].total_cmp(&frame[b])).expect("bands");
        let widest = (0..80).max_by(|&a, &b| filters[a * 201 + 25].total_cmp(&filters[b * 201 + 25])).expect("bands");
        assert_eq!(loudest, widest);
        // Past the tone: floored at max - 8, i.e. (max - 8 + 4) / 4.
        let max = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((mel[2000] - (max - 2.0)).abs() < 1e-5, "{} vs {}", mel[2000], max - 2.0);
    }
}
