//! VideoLLaMA2-AV's audio clip selection (`mm_utils.process_audio_from_video`): `clips` windows of
//! `seconds` at evenly spaced starts over the track, concatenated, then zero-padded (or cut) to a fixed
//! length. Manifest key: `[preprocess] audio_clips = { clips = 8, seconds = 2.0, pad_to_seconds = 30.0 }`.
//!
//! The starts are pytorchvideo's `ConstantClipsPerVideoSampler`: clip k ∈ 0..clips starts at
//! `k · max(D − seconds, 0) / clips` seconds (divided by `clips`, not `clips − 1`, so the last clip ends
//! before the track does), D = samples / rate as a float, the sample index `floor(start · rate)` taken on the
//! exact value of that float as Python's `Fraction` does. A track shorter than `seconds` gives the whole
//! track `clips` times; shorter than `clips · seconds`, overlapping windows. A selection longer than
//! `pad_to_seconds` keeps its first `pad_to_seconds` (the reference draws a random crop, which 8 × 2 s never
//! triggers against 30 s).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioClips {
    /// Windows per track.
    pub clips: usize,
    /// Length of one window.
    pub seconds: f64,
    /// The concatenation is zero-padded (or cut) to this length.
    pub pad_to_seconds: f64,
}

/// Seconds as a whole number of samples at `rate`, or why not.
fn whole_samples(what: &str, seconds: f64, rate: u32) -> Result<usize, String> {
    let n = seconds * f64::from(rate);
    let positive = seconds.is_finite() && seconds > 0.0;
    if !positive || !n.is_finite() || n.fract() != 0.0 {
        return Err(format!("{what} = {seconds} must be positive and a whole number of samples at {rate} Hz"));
    }
    Ok(n as usize)
}

impl AudioClips {
    /// Checks the settings against the encoder's sample rate.
    pub fn validate(&self, rate: u32) -> Result<(), String> {
        if self.clips == 0 {
            return Err("audio_clips.clips must be at least 1".into());
        }
        whole_samples("audio_clips.seconds", self.seconds, rate)?;
        whole_samples("audio_clips.pad_to_seconds", self.pad_to_seconds, rate)?;
        Ok(())
    }

    /// The selected, concatenated and padded waveform of one mono track at `rate`.
    pub fn apply(&self, wave: &[f32], rate: u32) -> Result<Vec<f32>, String> {
        self.validate(rate)?;
        let clip = whole_samples("audio_clips.seconds", self.seconds, rate)?;
        let total = whole_samples("audio_clips.pad_to_seconds", self.pad_to_seconds, rate)?;
        let duration = wave.len() as f64 / f64::from(rate);
        let max_start = (duration - self.seconds).max(0.0);
        let mut out = Vec::with_capacity((clip * self.clips).max(total));
        for k in 0..self.clips {
            let start = floor_scaled(max_start, k as u128 * u128::from(rate), self.clips as u128).min(wave.len());
            // Python slicing: past the end is cut.
            out.extend_from_slice(&wave[start..(start + clip).min(wave.len())]);
        }
        out.resize(total, 0.0);
        Ok(out)
    }
}

/// Each row of a (batch, samples) waveform through [`AudioClips::apply`], as (batch, selected samples);
/// `None`: the waveform as it is. `lengths`: each row's valid samples (a batch pads its rows to the
/// longest), so a row's clips spread over its own track, not the padding; `None`: every row is whole.
/// The one place both the frozen encoders and VideoLLaMA2-AV's audio tower select clips.
pub fn select_rows(clips: Option<&AudioClips>, wave: &candle_core::Tensor, lengths: Option<&[usize]>, rate: u32) -> candle_core::Result<candle_core::Tensor> {
    let Some(clips) = clips else { return Ok(wave.clone()) };
    let rows = match wave.dims() {
        &[_, _] => wave.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?,
        d => candle_core::bail!("waveform must be (batch, samples), got shape {d:?}"),
    };
    if let Some(l) = lengths.filter(|l| l.len() != rows.len()) {
        candle_core::bail!("{} audio lengths for a batch of {} waveforms", l.len(), rows.len());
    }
    let valid = |i: usize, r: &[f32]| lengths.map_or(r.len(), |l| l[i].min(r.len()));
    let picked = rows.iter().enumerate().map(|(i, r)| clips.apply(&r[..valid(i, r)], rate).map_err(candle_core::Error::Msg)).collect::<candle_core::Result<Vec<_>>>()?;
    let n = picked.first().map_or(0, Vec::len);
    candle_core::Tensor::from_vec(picked.concat(), (rows.len(), n), wave.device())
}

/// `floor(x · num / den)` on the exact value of the float `x ≥ 0` (Python's `int(Fraction(x) * num / den)`).
fn floor_scaled(x: f64, num: u128, den: u128) -> usize {
    if x <= 0.0 || num == 0 {
        return 0;
    }
    // x = mantissa · 2^exp exactly.
    let bits = x.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, exp) = if raw_exp == 0 { (frac, -1074) } else { (frac | (1u64 << 52), raw_exp - 1075) };
    if exp >= 0 {
        // x ≥ 2⁵² seconds: past the end of any track.
        return usize::MAX;
    }
    // floor(floor(a / b) / 2ᵉ) = floor(a / (b · 2ᵉ)) for integers.
    let shift = (-exp) as u32;
    let q = if shift >= 128 { 0 } else { (u128::from(mantissa) * num / den.max(1)) >> shift };
    usize::try_from(q).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16_000;

    fn vl2() -> AudioClips {
        AudioClips { clips: 8, seconds: 2.0, pad_to_seconds: 30.0 }
    }

    /// A track whose sample i has value i, to read back where each clip came from.
    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn shorter_than_one_clip_repeats_the_whole_track() {
        let out = vl2().apply(&ramp(20_000), RATE).expect("apply");
        assert_eq!(out.len(), 480_000);
        for k in 0..8 {
            assert_eq!(&out[k * 20_000..(k + 1) * 20_000], ramp(20_000).as_slice(), "clip {k}");
        }
        assert!(out[160_000..].iter().all(|&v| v == 0.0));
        // Empty audio is all padding.
        assert_eq!(vl2().apply(&[], RATE).expect("apply"), vec![0.0; 480_000]);
    }

    #[test]
    fn shorter_than_sixteen_seconds_overlaps() {
        // D = 6 s: starts k · 4 / 8 = 0.5 k s.
        let out = vl2().apply(&ramp(96_000), RATE).expect("apply");
        for k in 0..8 {
            let start = k * 8_000;
            assert_eq!(out[k * 32_000], start as f32, "clip {k} start");
            assert_eq!(out[k * 32_000 + 31_999], (start + 31_999) as f32, "clip {k} end");
        }
        assert!(out[256_000..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn longer_than_thirty_seconds_spreads_over_the_track() {
        // D = 40 s: starts k · 38 / 8 = 4.75 k s; the last clip starts at 33.25 s, ends at 35.25 s.
        let out = vl2().apply(&ramp(640_000), RATE).expect("apply");
        assert_eq!(out.len(), 480_000);
        for k in 0..8 {
            assert_eq!(out[k * 32_000], (k * 76_000) as f32, "clip {k}");
        }
        // A non-integral start: D = 2.5 s, max start 0.5 s, clip 3 at 3/16 s = 3000 samples; clip 1 at 1000.
        let out = vl2().apply(&ramp(40_000), RATE).expect("apply");
        assert_eq!(out[32_000], 1000.0);
        assert_eq!(out[3 * 32_000], 3000.0);
        // Odd lengths truncate like int(Fraction(...)): D = 2.0000625 s (32001 samples) → starts below 1.
        let out = vl2().apply(&ramp(32_001), RATE).expect("apply");
        assert!((0..8).all(|k| out[k * 32_000] == 0.0));
    }

    #[test]
    fn selections_longer_than_the_target_keep_the_start() {
        let c = AudioClips { clips: 2, seconds: 2.0, pad_to_seconds: 3.0 };
        let out = c.apply(&ramp(160_000), RATE).expect("apply");
        assert_eq!(out.len(), 48_000);
        // Clip 1 starts at 1 · 8 / 2 = 4 s.
        assert_eq!(out[32_000], 64_000.0);
    }

    /// A batch pads its rows to the longest: each row's clips come from its own samples, as if alone.
    #[test]
    fn each_row_of_a_batch_is_selected_over_its_own_length() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor};
        let (short, long) = (ramp(96_000), ramp(640_000));
        let mut padded = short.clone();
        padded.resize(long.len(), 0.0);
        let batch = Tensor::from_vec([padded, long.clone()].concat(), (2, long.len()), &Device::Cpu)?;
        let got = select_rows(Some(&vl2()), &batch, Some(&[short.len(), long.len()]), RATE)?.to_vec2::<f32>()?;
        for (row, wave) in got.iter().zip([&short, &long]) {
            let alone = Tensor::from_vec(wave.clone(), (1, wave.len()), &Device::Cpu)?;
            let want = select_rows(Some(&vl2()), &alone, None, RATE)?.to_vec2::<f32>()?;
            assert_eq!(row, &want[0]);
            assert_eq!(row, &vl2().apply(wave, RATE).expect("apply"));
        }
        // Without the lengths the short row's clips spread over its padding (starts 4.75 k s, past 6 s).
        let blind = select_rows(Some(&vl2()), &batch, None, RATE)?.to_vec2::<f32>()?;
        assert_ne!(blind[0], got[0]);
        assert!(select_rows(Some(&vl2()), &batch, Some(&[1]), RATE).is_err());
        Ok(())
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(AudioClips { clips: 0, ..vl2() }.validate(RATE).is_err());
        assert!(AudioClips { seconds: 0.0, ..vl2() }.validate(RATE).is_err());
        assert!(AudioClips { seconds: 1e-5, ..vl2() }.validate(RATE).is_err());
        assert!(AudioClips { pad_to_seconds: f64::NAN, ..vl2() }.validate(RATE).is_err());
        assert!(vl2().validate(RATE).is_ok());
    }

    #[test]
    fn exact_floor() {
        assert_eq!(floor_scaled(0.5, 3 * 16_000, 8), 3000);
        assert_eq!(floor_scaled(38.0, 7 * 16_000, 8), 532_000);
        // 0.1 is slightly above 1/10 as a double: 0.1 · 10 floors to 1, not 0.
        assert_eq!(floor_scaled(0.1, 10, 1), 1);
        // 0.3 is slightly below 3/10: 0.3 · 10 floors to 2.
        assert_eq!(floor_scaled(0.3, 10, 1), 2);
    }
}
