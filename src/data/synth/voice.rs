//! Voiced-signal synthesis: the arousal cue (pitch, tempo, loudness).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Arousal, SynthConfig};

/// Parameters of one synthetic utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceParams {
    pub arousal: Arousal,
    /// Mean fundamental frequency in Hz.
    pub f0_hz: f32,
    /// Relative f0 change from the start to the end of the clip (declination < 0).
    pub f0_drift: f32,
    pub vibrato_hz: f32,
    /// Relative vibrato depth (e.g. 0.01 = ±1 %).
    pub vibrato_depth: f32,
    /// Relative depth of the slow random f0 wander (per-syllable intonation).
    pub f0_jitter: f32,
    /// Syllables per second.
    pub syllable_rate: f32,
    /// Phase of the syllable train in syllables (0..1).
    pub syllable_phase: f32,
    /// Voiced fraction of each syllable period (0..1).
    pub syllable_duty: f32,
    /// Peak absolute sample value of the finished signal (≤ 0.9).
    pub peak: f32,
    pub harmonics: u32,
    /// Harmonic k has amplitude 1/k^tilt.
    pub tilt: f32,
    /// Noise floor amplitude relative to the voiced peak before normalisation.
    pub noise_floor: f32,
    pub seed: u64,
}

impl VoiceParams {
    /// Draws jittered parameters for the arousal group.
    pub fn sample<R: Rng + ?Sized>(arousal: Arousal, rng: &mut R) -> Self {
        let (f0, rate, peak) = match arousal {
            Arousal::Calm => (rng.random_range(110.0..150.0), rng.random_range(2.1..2.9), rng.random_range(0.22..0.38)),
            Arousal::Aroused => {
                (rng.random_range(220.0..300.0), rng.random_range(4.5..5.5), rng.random_range(0.62..0.88))
            }
        };
        VoiceParams {
            arousal,
            f0_hz: f0,
            f0_drift: rng.random_range(-0.12..0.06),
            vibrato_hz: rng.random_range(4.0..6.5),
            vibrato_depth: rng.random_range(0.004..0.015),
            f0_jitter: rng.random_range(0.02..0.05),
            syllable_rate: rate,
            syllable_phase: rng.random_range(0.0..1.0),
            syllable_duty: rng.random_range(0.6..0.8),
            peak,
            harmonics: 8,
            tilt: rng.random_range(0.9..1.2),
            noise_floor: rng.random_range(0.003..0.012),
            seed: rng.random(),
        }
    }
}

/// Syllable amplitude envelope in [0, 1] at time `t` seconds: a raised sine over the voiced part
/// of every syllable period, zero in the gaps. Shared by the voice and the mouth animation.
pub fn syllable_envelope(t: f32, rate: f32, phase: f32, duty: f32) -> f32 {
    let p = t * rate + phase;
    let frac = p - p.floor();
    let duty = duty.clamp(0.05, 1.0);
    if frac < duty {
        let s = (std::f32::consts::PI * frac / duty).sin();
        s * s
    } else {
        0.0
    }
}

/// Index of the syllable active at time `t` (for per-syllable randomness).
fn syllable_index(t: f32, rate: f32, phase: f32) -> usize {
    (t * rate + phase).floor().max(0.0) as usize
}

/// Number of audio samples of a clip.
pub fn audio_len(cfg: &SynthConfig) -> usize {
    (cfg.duration_s * cfg.sample_rate as f32).round().max(1.0) as usize
}

/// Synthesises mono f32 samples at `cfg.sample_rate` for `cfg.duration_s` seconds; peak ≤ 0.9.
pub fn synth_voice(params: &VoiceParams, cfg: &SynthConfig) -> Vec<f32> {
    let sr = cfg.sample_rate.max(1) as f32;
    let n = audio_len(cfg);
    let dur = n as f32 / sr;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let n_syll = (dur * params.syllable_rate + params.syllable_phase).ceil() as usize + 2;
    // Per-syllable intonation offset and loudness.
    let syll_pitch: Vec<f32> = (0..n_syll).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let syll_amp: Vec<f32> = (0..n_syll).map(|_| rng.random_range(0.7f32..1.0)).collect();
    let harmonics = params.harmonics.clamp(1, 32);
    let amps: Vec<f32> = (1..=harmonics).map(|k| 1.0 / (k as f32).powf(params.tilt)).collect();
    let norm: f32 = amps.iter().sum();
    let nyquist = sr * 0.5;
    let two_pi = std::f64::consts::TAU;
    let mut phase = 0.0f64; // cycles of f0, kept in f64 for accuracy over long clips
    let mut out = Vec::with_capacity(n);
    // Pitch wander: smooth (cosine) interpolation between per-syllable offsets.
    for i in 0..n {
        let t = i as f32 / sr;
        let p = t * params.syllable_rate + params.syllable_phase;
        let k = p.floor().max(0.0) as usize;
        let frac = p - p.floor();
        let w = 0.5 - 0.5 * (std::f32::consts::PI * frac).cos();
        let a = syll_pitch[k.min(n_syll - 1)];
        let b = syll_pitch[(k + 1).min(n_syll - 1)];
        let wander = params.f0_jitter * (a + (b - a) * w);
        let drift = params.f0_drift * (t / dur.max(1e-6) - 0.5);
        let vib = params.vibrato_depth * (std::f32::consts::TAU * params.vibrato_hz * t).sin();
        let f0 = (params.f0_hz * (1.0 + drift + vib + wander)).max(20.0);
        phase += f64::from(f0) / f64::from(sr);
        phase -= phase.floor();
        let env = syllable_envelope(t, params.syllable_rate, params.syllable_phase, params.syllable_duty)
            * syll_amp[syllable_index(t, params.syllable_rate, params.syllable_phase).min(n_syll - 1)];
        let mut v = 0.0f32;
        if env > 0.0 {
            // sin(k θ) by the Chebyshev recurrence s_{k+1} = 2 cos θ s_k - s_{k-1}: one sin_cos per sample.
            let (s1, c1) = (two_pi * phase).sin_cos();
            let (mut prev, mut cur) = (0.0f64, s1);
            let mut acc = 0.0f64;
            for (j, amp) in amps.iter().enumerate() {
                if (j + 1) as f32 * f0 >= nyquist {
                    break;
                }
                acc += f64::from(*amp) * cur;
                let next = 2.0 * c1 * cur - prev;
                prev = cur;
                cur = next;
            }
            v = acc as f32 * env / norm;
        }
        v += params.noise_floor * rng.random_range(-1.0f32..1.0);
        out.push(v);
    }
    // Short fades against clicks at the clip edges.
    let fade = ((0.01 * sr) as usize).min(n / 2);
    for i in 0..fade {
        let g = i as f32 / fade as f32;
        out[i] *= g;
        out[n - 1 - i] *= g;
    }
    let max = out.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let target = params.peak.clamp(0.0, 0.9);
    if max > 0.0 {
        let g = target / max;
        for v in &mut out {
            *v = (*v * g).clamp(-0.9, 0.9);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// f0 by normalised autocorrelation over the loudest 64 ms window, searched in 70..500 Hz.
    pub(crate) fn estimate_f0(x: &[f32], sr: u32) -> f32 {
        let win = (sr as usize * 64) / 1000;
        let hop = win / 2;
        let mut best = (0usize, -1.0f32);
        let mut s = 0;
        while s + win <= x.len() {
            let e: f32 = x[s..s + win].iter().map(|v| v * v).sum();
            if e > best.1 {
                best = (s, e);
            }
            s += hop;
        }
        let seg = &x[best.0..(best.0 + win).min(x.len())];
        let lag_min = (sr as f32 / 500.0) as usize;
        let lag_max = (sr as f32 / 70.0) as usize;
        let r0: f32 = seg.iter().map(|v| v * v).sum();
        let mut best_lag = lag_min;
        let mut rs = vec![0.0f32; lag_max + 1];
        for lag in lag_min..=lag_max.min(seg.len() - 1) {
            let r: f32 = seg[..seg.len() - lag].iter().zip(&seg[lag..]).map(|(a, b)| a * b).sum();
            rs[lag] = r / r0;
        }
        // Take the first lag whose correlation is close to the global maximum (avoids octave errors).
        let gmax = rs[lag_min..].iter().copied().fold(f32::MIN, f32::max);
        for lag in lag_min + 1..lag_max.min(seg.len() - 1) {
            if rs[lag] >= 0.85 * gmax && rs[lag] >= rs[lag - 1] && rs[lag] >= rs[lag + 1] {
                best_lag = lag;
                break;
            }
        }
        sr as f32 / best_lag as f32
    }

    pub(crate) fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    #[test]
    fn envelope_is_bounded_and_gapped() {
        let mut zeros = 0;
        for i in 0..1000 {
            let e = syllable_envelope(i as f32 / 500.0, 2.5, 0.3, 0.7);
            assert!((0.0..=1.0).contains(&e));
            if e == 0.0 {
                zeros += 1;
            }
        }
        assert!(zeros > 200, "gaps between syllables expected");
    }

    #[test]
    fn voice_length_peak_and_determinism() {
        let cfg = SynthConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for a in [Arousal::Calm, Arousal::Aroused] {
            let p = VoiceParams::sample(a, &mut rng);
            let x = synth_voice(&p, &cfg);
            assert_eq!(x.len(), 32000);
            let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(peak <= 0.9 + 1e-6 && peak > 0.1, "peak {peak}");
            assert!(x.iter().all(|v| v.is_finite()));
            assert_eq!(x, synth_voice(&p, &cfg));
        }
    }

    #[test]
    fn f0_and_rms_separate_arousal_groups() {
        let cfg = SynthConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut calm = (f32::MIN, f32::MIN); // (max f0, max rms)
        let mut aroused = (f32::MAX, f32::MAX); // (min f0, min rms)
        for _ in 0..40 {
            let p = VoiceParams::sample(Arousal::Calm, &mut rng);
            let x = synth_voice(&p, &cfg);
            let f0 = estimate_f0(&x, cfg.sample_rate);
            assert!((f0 - p.f0_hz).abs() < 0.2 * p.f0_hz, "calm f0 est {f0} vs {}", p.f0_hz);
            calm = (calm.0.max(f0), calm.1.max(rms(&x)));
            let p = VoiceParams::sample(Arousal::Aroused, &mut rng);
            let x = synth_voice(&p, &cfg);
            let f0 = estimate_f0(&x, cfg.sample_rate);
            assert!((f0 - p.f0_hz).abs() < 0.2 * p.f0_hz, "aroused f0 est {f0} vs {}", p.f0_hz);
            aroused = (aroused.0.min(f0), aroused.1.min(rms(&x)));
        }
        eprintln!(
            "calm max f0 {:.1} max rms {:.3}; aroused min f0 {:.1} min rms {:.3}",
            calm.0, calm.1, aroused.0, aroused.1
        );
        assert!(calm.0 < 180.0 && aroused.0 > 190.0, "f0 groups overlap: {calm:?} {aroused:?}");
        assert!(calm.1 < aroused.1, "rms groups overlap: {calm:?} {aroused:?}");
    }
}
