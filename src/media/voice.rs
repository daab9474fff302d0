//! Voice descriptors from a mono waveform, with plain documented DSP (no model): pitch level and
//! range, loudness and its variability, speaking rate and pauses, and a short tone description for an
//! LLM prompt ("a low, monotone voice at a slow pace with long pauses, quiet").
//!
//! Analysis frames are [`FRAME_S`] long every [`HOP_S`] (40 ms / 10 ms: a 40 ms window holds two
//! periods of the lowest pitch searched, 60 Hz, which YIN needs).
//!
//! * **Activity.** A frame is *active* (not silence) when its RMS level is above both [`ABS_SILENCE_DB`]
//!   and the clip's 95th-percentile frame level minus [`REL_SILENCE_DB`]. The *speech span* runs from the
//!   first to the last active frame: the sound starts within the last hop of the first active frame
//!   (the one before it is silent) and ends within the first hop of the last, so the span is
//!   `(last − first)·hop + 2·hop − frame`.
//! * **Pitch.** YIN (de Cheveigné & Kawahara 2002) on every active frame: the cumulative-mean-normalised
//!   difference function d'(τ) over lags for [`PITCH_MIN_HZ`]..=[`PITCH_MAX_HZ`]; the first dip below
//!   [`YIN_THRESHOLD`] (followed down to its local minimum, refined by parabolic interpolation) gives
//!   the period; without one, the global minimum if it is below [`YIN_FALLBACK`]; else the frame is
//!   unvoiced. A 5-frame median over each voiced run removes
//!   isolated octave jumps. Median, 10th and 90th percentiles are over the voiced frames; the *range* is
//!   `12·log2(p90 / p10)` semitones; the *level* is the median's distance in semitones from
//!   [`TYPICAL_PITCH_HZ`] (a midpoint between typical adult male and female speaking pitch).
//! * **Energy.** Frame RMS in dBFS (`20·log10(rms)`, 0 dB = RMS 1.0, so a full-scale sine is −3 dB);
//!   mean and standard deviation over the active frames.
//! * **Pauses.** Runs of inactive frames inside the speech span. A run of `n` frames covers a silent gap
//!   of about `(n − 1)·hop + frame` seconds (every window inside it is silent); gaps of at least
//!   [`MIN_PAUSE_S`] are pauses. The *pause fraction* is their total over the speech span.
//! * **Speaking rate** (syllable nuclei, after de Jong & Wempe 2009): the waveform band-passed to
//!   300–2500 Hz (vowel energy), its frame level in dB smoothed by a 5-frame (50 ms) moving average; a
//!   nucleus is a local maximum of that envelope in a voiced frame, above the activity threshold, that
//!   rises at least [`NUCLEUS_DIP_DB`] above the lowest point since the previous nucleus (else the two
//!   peaks are one nucleus, and the higher is kept). Rate = nuclei / (speech span − pauses), in
//!   syllables per second of speech.

use serde::Serialize;

/// Analysis frame length, seconds.
pub const FRAME_S: f64 = 0.040;
/// Hop between frames, seconds.
pub const HOP_S: f64 = 0.010;
/// Pitch search range, Hz.
pub const PITCH_MIN_HZ: f64 = 60.0;
pub const PITCH_MAX_HZ: f64 = 500.0;
/// YIN's absolute threshold on the normalised difference (the paper's 0.1–0.15).
pub const YIN_THRESHOLD: f32 = 0.15;
/// No dip below [`YIN_THRESHOLD`]: the global minimum still counts as voiced when below this (YIN's own
/// fallback, bounded so noise stays unvoiced). On jfk.wav it brings the voiced frames from 28% to 39%
/// without octave errors (Praat finds 51%).
pub const YIN_FALLBACK: f32 = 0.25;
/// Frames below this level (dBFS) are silence, however quiet the clip.
pub const ABS_SILENCE_DB: f64 = -60.0;
/// Frames more than this many dB below the clip's 95th-percentile level are silence (de Jong & Wempe's
/// −25 dB; at −35 dB the room noise between JFK's phrases counts as speech).
pub const REL_SILENCE_DB: f64 = 25.0;
/// Shortest silence inside the speech span that counts as a pause, seconds.
pub const MIN_PAUSE_S: f64 = 0.25;
/// A syllable nucleus must rise this far (dB) above the dip since the previous one.
pub const NUCLEUS_DIP_DB: f64 = 2.0;
/// Reference for the pitch level: between typical adult male (~120 Hz) and female (~210 Hz) speaking
/// pitch (their geometric mean is ~159 Hz).
pub const TYPICAL_PITCH_HZ: f64 = 160.0;
/// Lowest sample rate accepted: the pitch search needs `PITCH_MAX_HZ` well below Nyquist.
pub const MIN_RATE: u32 = 4000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VoiceError {
    #[error("voice descriptors: the audio is empty (0 samples)")]
    Empty,
    #[error("voice descriptors: {samples} samples at {rate} Hz ({:.3} s) is shorter than one {:.0} ms analysis frame", *samples as f64 / f64::from(*rate), FRAME_S * 1000.0)]
    TooShort { samples: usize, rate: u32 },
    #[error("voice descriptors: sample rate {0} Hz is below the {MIN_RATE} Hz the pitch search needs")]
    Rate(u32),
    #[error("voice descriptors: sample {index} is not a finite number ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("voice descriptors: the audio is silent (every frame is below {ABS_SILENCE_DB} dBFS; loudest frame {loudest_db:.1} dBFS)")]
    Silent { loudest_db: f64 },
}

/// What the voice sounds like, measured.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VoiceDescriptors {
    pub duration_s: f64,
    /// First to last active frame, seconds.
    pub speech_span_s: f64,
    /// Voiced frames (a pitch was found) over all frames.
    pub voiced_fraction: f64,
    /// Pitch over the voiced frames (`None`: no voiced frame, e.g. whisper or noise).
    pub pitch_median_hz: Option<f64>,
    pub pitch_p10_hz: Option<f64>,
    pub pitch_p90_hz: Option<f64>,
    /// `12·log2(p90 / p10)`.
    pub pitch_range_st: Option<f64>,
    /// The median's distance from [`TYPICAL_PITCH_HZ`], semitones (negative: lower).
    pub pitch_level_st: Option<f64>,
    /// Mean frame level over the active frames, dBFS.
    pub energy_mean_dbfs: f64,
    /// Standard deviation of the active frames' level, dB.
    pub energy_std_db: f64,
    pub syllables: usize,
    /// Syllable nuclei per second of speech (speech span minus pauses); `None` when that is zero.
    pub speaking_rate_sps: Option<f64>,
    pub pauses: usize,
    pub pause_mean_s: Option<f64>,
    /// Total pause time over the speech span.
    pub pause_fraction: f64,
}

impl VoiceDescriptors {
    /// Measures `wave` (mono, `rate` Hz, nominally in [-1, 1]).
    pub fn of(wave: &[f32], rate: u32) -> Result<Self, VoiceError> {
        if wave.is_empty() {
            return Err(VoiceError::Empty);
        }
        if rate < MIN_RATE {
            return Err(VoiceError::Rate(rate));
        }
        if let Some((index, &value)) = wave.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(VoiceError::NonFinite { index, value });
        }
        let fs = f64::from(rate);
        let frame = (FRAME_S * fs).round() as usize;
        let hop = (HOP_S * fs).round() as usize;
        if wave.len() < frame {
            return Err(VoiceError::TooShort { samples: wave.len(), rate });
        }
        let n = (wave.len() - frame) / hop + 1;
        // The frame and hop as rounded to whole samples.
        let (frame_s, hop_s) = (frame as f64 / fs, hop as f64 / fs);
        let frames = |i: usize| &wave[i * hop..i * hop + frame];

        let level: Vec<f64> = (0..n).map(|i| rms_db(frames(i))).collect();
        let loudest = level.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let threshold = ABS_SILENCE_DB.max(percentile(&level, 0.95) - REL_SILENCE_DB);
        let active: Vec<bool> = level.iter().map(|&l| l > threshold).collect();
        let (Some(first), Some(last)) = (active.iter().position(|&a| a), active.iter().rposition(|&a| a)) else {
            return Err(VoiceError::Silent { loudest_db: loudest });
        };

        // Pitch.
        let tau_min = (fs / PITCH_MAX_HZ).floor() as usize;
        let tau_max = ((fs / PITCH_MIN_HZ).ceil() as usize).min(frame / 2);
        let raw: Vec<Option<f64>> = (0..n).map(|i| if active[i] { yin(frames(i), tau_min, tau_max).map(|tau| fs / tau) } else { None }).collect();
        let pitch = median_in_runs(&raw, 5);
        let mut voiced: Vec<f64> = pitch.iter().flatten().copied().collect();
        voiced.sort_by(f64::total_cmp);
        let (median, p10, p90) = if voiced.is_empty() { (None, None, None) } else { (Some(percentile_sorted(&voiced, 0.5)), Some(percentile_sorted(&voiced, 0.1)), Some(percentile_sorted(&voiced, 0.9))) };

        // Energy over the active frames.
        let act: Vec<f64> = level.iter().zip(&active).filter(|(_, a)| **a).map(|(l, _)| *l).collect();
        let mean = act.iter().sum::<f64>() / act.len() as f64;
        let std = (act.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / act.len() as f64).sqrt();

        // Pauses: inactive runs inside the span.
        let mut pauses = Vec::new();
        let mut i = first;
        while i <= last {
            if active[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i <= last && !active[i] {
                i += 1;
            }
            let gap = (i - start - 1) as f64 * hop_s + frame_s;
            if gap >= MIN_PAUSE_S {
                pauses.push(gap);
            }
        }
        // Speech starts inside the first active frame's last hop and ends inside the last one's first.
        let span = ((last - first) as f64 * hop_s + 2.0 * hop_s - frame_s).max(hop_s);
        // `+ 0.0`: an empty f64 sum is −0.0.
        let paused: f64 = pauses.iter().sum::<f64>() + 0.0;

        // Syllable nuclei on the band-passed envelope.
        let band = band_pass(wave, fs, 300.0, 2500.0);
        let env = moving_average(&(0..n).map(|i| rms_db(&band[i * hop..i * hop + frame])).collect::<Vec<_>>(), 5);
        let voiced_near = |i: usize| (i.saturating_sub(1)..=(i + 1).min(n - 1)).any(|j| pitch[j].is_some());
        let syllables = nuclei(&env, threshold, &voiced_near);
        let phonation = span - paused;

        Ok(Self {
            duration_s: wave.len() as f64 / fs,
            speech_span_s: span,
            voiced_fraction: voiced.len() as f64 / n as f64,
            pitch_median_hz: median,
            pitch_p10_hz: p10,
            pitch_p90_hz: p90,
            pitch_range_st: p10.zip(p90).map(|(a, b)| 12.0 * (b / a).log2()),
            pitch_level_st: median.map(|m| 12.0 * (m / TYPICAL_PITCH_HZ).log2()),
            energy_mean_dbfs: mean,
            energy_std_db: std,
            syllables,
            speaking_rate_sps: (phonation > 0.0).then(|| syllables as f64 / phonation),
            pauses: pauses.len(),
            pause_mean_s: (!pauses.is_empty()).then(|| paused / pauses.len() as f64),
            pause_fraction: if span > 0.0 { paused / span } else { 0.0 },
        })
    }

    /// Whether the sound is speech at all: at least 10% voiced frames and one syllable nucleus a second
    /// (room tone, music beds and hiss fall below; jfk.wav has 37% and 3 a second).
    pub fn has_speech(&self) -> bool {
        self.voiced_fraction >= 0.10 && self.speaking_rate_sps.is_some_and(|r| r >= 1.0)
    }

    /// A short tone description, e.g. "a low, monotone voice at a slow pace with long pauses, quiet";
    /// without speech ([`Self::has_speech`]): "no clear speech (sound at −58 dBFS, 0% voiced)".
    ///
    /// Thresholds: level low below −4 st from [`TYPICAL_PITCH_HZ`] (~127 Hz), high above +4 st
    /// (~202 Hz); range monotone below 4 st, animated above 9 st; pace slow below 3.5 syllables/s, fast
    /// above 5.5 (conversational articulation rate is about 4–5); pauses long when they take over 25% of
    /// the span or average over 0.8 s; loudness quiet below −35 dBFS, loud above −15 dBFS (this depends
    /// on the recording's gain, so it is relative to typical normalised recordings), and varying when the
    /// level's deviation is over 8 dB.
    pub fn describe(&self) -> String {
        if !self.has_speech() {
            return format!("no clear speech (sound at {:.0} dBFS, {:.0}% voiced)", self.energy_mean_dbfs, self.voiced_fraction * 100.0);
        }
        let mut voice = Vec::new();
        match self.pitch_level_st {
            Some(l) if l < -4.0 => voice.push("low"),
            Some(l) if l > 4.0 => voice.push("high"),
            Some(_) => voice.push("mid-pitched"),
            None => voice.push("unpitched (whispered or noisy)"),
        }
        match self.pitch_range_st {
            Some(r) if r < 4.0 => voice.push("monotone"),
            Some(r) if r > 9.0 => voice.push("animated"),
            _ => {}
        }
        let article = if voice[0].starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        let mut out = format!("{article} {} voice", voice.join(", "));
        if let Some(rate) = self.speaking_rate_sps {
            let pace = if rate < 3.5 { "slow" } else if rate > 5.5 { "fast" } else { "moderate" };
            out += &format!(" at a {pace} pace");
        }
        let long = self.pause_fraction > 0.25 || self.pause_mean_s.is_some_and(|m| m > 0.8);
        out += match (self.pauses, long) {
            (0, _) => " without pauses",
            (_, true) => " with long pauses",
            (1, false) => " with a short pause",
            (_, false) => " with short pauses",
        };
        let mut loudness = Vec::new();
        if self.energy_mean_dbfs < -35.0 {
            loudness.push("quiet");
        } else if self.energy_mean_dbfs > -15.0 {
            loudness.push("loud");
        }
        if self.energy_std_db > 8.0 {
            loudness.push("of varying loudness");
        }
        if !loudness.is_empty() {
            out += &format!(", {}", loudness.join(" and "));
        }
        out
    }
}

/// Frame RMS in dBFS (−200 for digital silence).
fn rms_db(x: &[f32]) -> f64 {
    let e = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len().max(1) as f64;
    if e > 0.0 { 10.0 * e.log10() } else { -200.0 }
}

/// Linear-interpolated percentile of unsorted values.
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile_sorted(&s, q)
}

fn percentile_sorted(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let x = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
}

/// YIN's period (in samples, fractional) of one frame: the first dip below [`YIN_THRESHOLD`], else the
/// global minimum when below [`YIN_FALLBACK`], else `None`.
fn yin(x: &[f32], tau_min: usize, tau_max: usize) -> Option<f64> {
    let w = x.len() - tau_max;
    let mut d = vec![0f32; tau_max + 2];
    for (tau, dt) in d.iter_mut().enumerate().skip(1) {
        if tau + w > x.len() {
            break;
        }
        *dt = x[..w].iter().zip(&x[tau..tau + w]).map(|(a, b)| (a - b) * (a - b)).sum();
    }
    // Cumulative-mean normalisation: d'(τ) = d(τ)·τ / Σ_{k≤τ} d(k).
    let mut cmnd = vec![1f32; tau_max + 2];
    let mut sum = 0f32;
    for tau in 1..=tau_max.min(d.len() - 1) {
        sum += d[tau];
        cmnd[tau] = if sum > 0.0 { d[tau] * tau as f32 / sum } else { 1.0 };
    }
    let lo = tau_min.max(2);
    let first = (lo..tau_max).find(|&t| cmnd[t] < YIN_THRESHOLD).map(|mut t| {
        while t + 1 < tau_max && cmnd[t + 1] < cmnd[t] {
            t += 1;
        }
        t
    });
    let tau = first.or_else(|| (lo..tau_max).min_by(|&a, &b| cmnd[a].total_cmp(&cmnd[b])).filter(|&t| cmnd[t] < YIN_FALLBACK))?;
    // Parabolic interpolation around the minimum.
    let (a, b, c) = (f64::from(cmnd[tau - 1]), f64::from(cmnd[tau]), f64::from(cmnd[tau + 1]));
    let den = a - 2.0 * b + c;
    let shift = if den.abs() > 1e-12 { (0.5 * (a - c) / den).clamp(-1.0, 1.0) } else { 0.0 };
    Some(tau as f64 + shift)
}

/// Median filter of width `k` inside each run of `Some` values (the runs' edges use a shorter window).
fn median_in_runs(v: &[Option<f64>], k: usize) -> Vec<Option<f64>> {
    let half = k / 2;
    (0..v.len())
        .map(|i| {
            v[i]?;
            let mut lo = i;
            while lo > 0 && i - lo < half && v[lo - 1].is_some() {
                lo -= 1;
            }
            let mut hi = i;
            while hi + 1 < v.len() && hi - i < half && v[hi + 1].is_some() {
                hi += 1;
            }
            let mut w: Vec<f64> = v[lo..=hi].iter().flatten().copied().collect();
            w.sort_by(f64::total_cmp);
            Some(w[w.len() / 2])
        })
        .collect()
}

/// Centred moving average of width `k` (shorter at the edges).
fn moving_average(v: &[f64], k: usize) -> Vec<f64> {
    let half = k / 2;
    (0..v.len())
        .map(|i| {
            let w = &v[i.saturating_sub(half)..(i + half + 1).min(v.len())];
            w.iter().sum::<f64>() / w.len() as f64
        })
        .collect()
}

/// A high-pass at `lo` then a low-pass at `hi` (RBJ cookbook biquads, Q = 1/√2, run forward once).
fn band_pass(x: &[f32], fs: f64, lo: f64, hi: f64) -> Vec<f32> {
    let hp = biquad(x, fs, lo, true);
    if hi < fs / 2.0 { biquad(&hp, fs, hi, false) } else { hp }
}

fn biquad(x: &[f32], fs: f64, f0: f64, high: bool) -> Vec<f32> {
    let w0 = 2.0 * std::f64::consts::PI * f0 / fs;
    let (cos, alpha) = (w0.cos(), w0.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2));
    let (b0, b1, b2) = if high { ((1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0) } else { ((1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0) };
    let (a0, a1, a2) = (1.0 + alpha, -2.0 * cos, 1.0 - alpha);
    let (mut x1, mut x2, mut y1, mut y2) = (0f64, 0f64, 0f64, 0f64);
    x.iter()
        .map(|&v| {
            let v = f64::from(v);
            let y = (b0 * v + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2) / a0;
            (x2, x1, y2, y1) = (x1, v, y1, y);
            y as f32
        })
        .collect()
}

/// Syllable nuclei: local maxima of `env` above `threshold` where `voiced(i)`, each rising at least
/// [`NUCLEUS_DIP_DB`] above the lowest point since the previous nucleus (otherwise the higher of the
/// two is kept).
fn nuclei(env: &[f64], threshold: f64, voiced: &dyn Fn(usize) -> bool) -> usize {
    let mut peaks: Vec<(usize, f64)> = Vec::new();
    let mut dip = f64::INFINITY;
    for i in 0..env.len() {
        dip = dip.min(env[i]);
        let is_max = (i == 0 || env[i] > env[i - 1]) && (i + 1 == env.len() || env[i] >= env[i + 1]);
        if !is_max || env[i] <= threshold || !voiced(i) {
            continue;
        }
        match peaks.last_mut() {
            Some(last) if env[i] - dip < NUCLEUS_DIP_DB || last.1 - dip < NUCLEUS_DIP_DB => {
                if env[i] > last.1 {
                    *last = (i, env[i]);
                }
            }
            _ => peaks.push((i, env[i])),
        }
        dip = env[i];
    }
    peaks.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: u32 = 16_000;

    /// A harmonic tone (five harmonics, 1/k amplitudes, peak ≈ `amp`) with instantaneous frequency
    /// `f(t)`, `secs` long.
    fn tone(secs: f64, amp: f32, f: impl Fn(f64) -> f64) -> Vec<f32> {
        let n = (secs * f64::from(FS)) as usize;
        let mut phase = 0f64;
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(FS);
                phase += 2.0 * std::f64::consts::PI * f(t) / f64::from(FS);
                let s: f64 = (1..=5).map(|k| (k as f64 * phase).sin() / k as f64).sum();
                amp * (s / 2.3) as f32
            })
            .collect()
    }

    fn silence(secs: f64) -> Vec<f32> {
        vec![0.0; (secs * f64::from(FS)) as usize]
    }

    #[test]
    fn voice_pitch_of_a_220_hz_harmonic_tone() {
        let v = VoiceDescriptors::of(&tone(3.0, 0.5, |_| 220.0), FS).expect("descriptors");
        let p = v.pitch_median_hz.expect("voiced");
        assert!((p - 220.0).abs() < 220.0 * 0.02, "median pitch {p}");
        assert!(v.pitch_range_st.expect("range") < 0.2, "{v:?}");
        assert!(v.voiced_fraction > 0.95, "{v:?}");
        assert_eq!(v.pauses, 0);
        // A steady tone has no syllable rhythm, so it is not speech; with a speaking rhythm its words
        // follow the thresholds.
        assert!(!v.has_speech(), "{v:?}");
        let speech = VoiceDescriptors { speaking_rate_sps: Some(4.5), ..v };
        assert_eq!(speech.describe(), "a high, monotone voice at a moderate pace without pauses, loud");
    }

    #[test]
    fn voice_pitch_range_of_an_octave_glide() {
        // 150 → 300 Hz, exponential in time: log-frequency is uniform over the clip, so p10..p90 spans
        // 80% of the octave: 9.6 semitones.
        let secs = 2.0;
        let v = VoiceDescriptors::of(&tone(secs, 0.5, |t| 150.0 * 2f64.powf(t / secs)), FS).expect("descriptors");
        let r = v.pitch_range_st.expect("range");
        assert!((r - 9.6).abs() < 0.5, "range {r} st, {v:?}");
        let (p10, p90) = (v.pitch_p10_hz.expect("p10"), v.pitch_p90_hz.expect("p90"));
        assert!((p10 - 150.0 * 2f64.powf(0.1)).abs() < 5.0 && (p90 - 150.0 * 2f64.powf(0.9)).abs() < 8.0, "{p10} {p90}");
        let speech = VoiceDescriptors { speaking_rate_sps: Some(6.0), pauses: 3, pause_mean_s: Some(1.0), ..v };
        assert_eq!(speech.describe(), "a high, animated voice at a fast pace with long pauses, loud");
    }

    #[test]
    fn voice_pauses_between_tone_bursts() {
        // Burst, 0.4 s gap, burst, 0.8 s gap, burst, 0.1 s gap (too short), burst.
        let b = || tone(0.5, 0.3, |_| 180.0);
        let wave: Vec<f32> = [silence(0.3), b(), silence(0.4), b(), silence(0.8), b(), silence(0.1), b(), silence(0.3)].concat();
        let v = VoiceDescriptors::of(&wave, FS).expect("descriptors");
        assert_eq!(v.pauses, 2, "{v:?}");
        let mean = v.pause_mean_s.expect("mean");
        assert!((mean - 0.6).abs() < 0.03, "mean pause {mean}");
        // Span: 4 bursts + 1.3 s of gaps = 3.3 s; pauses 1.2 s.
        assert!((v.speech_span_s - 3.3).abs() < 0.05, "span {}", v.speech_span_s);
        assert!((v.pause_fraction - 1.2 / 3.3).abs() < 0.02, "pause fraction {}", v.pause_fraction);
    }

    #[test]
    fn voice_energy_difference_in_db() {
        let loud = VoiceDescriptors::of(&tone(1.0, 0.3, |_| 200.0), FS).expect("loud");
        let quiet = VoiceDescriptors::of(&tone(1.0, 0.03, |_| 200.0), FS).expect("quiet");
        let diff = loud.energy_mean_dbfs - quiet.energy_mean_dbfs;
        assert!((diff - 20.0).abs() < 0.1, "{diff} dB");
        assert!(loud.energy_std_db < 0.5, "{loud:?}");
        // A steady tone at amplitude 0.03 is at about −39 dBFS.
        assert!(quiet.describe().ends_with("quiet"), "{}", quiet.describe());
    }

    #[test]
    fn voice_speaking_rate_of_syllable_like_bursts() {
        // 4 "syllables" a second for 3 s: raised-cosine bursts of 180 ms in 250 ms slots, gaps shorter
        // than a pause.
        let base = tone(3.0, 0.4, |_| 150.0);
        let wave: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let t = (i as f64 / f64::from(FS)) % 0.25;
                let g = if t < 0.18 { 0.5 - 0.5 * (2.0 * std::f64::consts::PI * t / 0.18).cos() } else { 0.0 };
                s * g as f32
            })
            .collect();
        let v = VoiceDescriptors::of(&wave, FS).expect("descriptors");
        assert_eq!(v.syllables, 12, "{v:?}");
        let rate = v.speaking_rate_sps.expect("rate");
        assert!((rate - 4.0).abs() < 0.4, "rate {rate}");
        assert_eq!(v.pauses, 0);
    }

    #[test]
    fn voice_bad_input_is_a_clear_error() {
        assert_eq!(VoiceDescriptors::of(&[], FS), Err(VoiceError::Empty));
        assert!(matches!(VoiceDescriptors::of(&[0.1; 100], FS), Err(VoiceError::TooShort { samples: 100, .. })));
        let silent = VoiceDescriptors::of(&silence(1.0), FS).expect_err("silent");
        assert!(matches!(silent, VoiceError::Silent { .. }) && silent.to_string().contains("silent"), "{silent}");
        assert!(matches!(VoiceDescriptors::of(&[f32::NAN; 1000], FS), Err(VoiceError::NonFinite { index: 0, .. })));
        assert_eq!(VoiceDescriptors::of(&[0.1; 1000], 1000), Err(VoiceError::Rate(1000)));
        // Noise: active but unpitched, described as such, no panic.
        let mut state = 12345u32;
        let noise: Vec<f32> = (0..FS)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let v = VoiceDescriptors::of(&noise, FS).expect("noise");
        assert!(v.voiced_fraction < 0.1, "{v:?}");
        assert!(!v.has_speech() && v.describe().starts_with("no clear speech"), "{}", v.describe());
    }
}
