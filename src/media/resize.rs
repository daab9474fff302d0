//! Image preprocessing for the EVA ViT, reproducing the reference pipeline byte for byte: torchvision
//! `Resize(..., BICUBIC)` on a PIL image (which calls Pillow's `Image.resize`), `ToTensor`, and
//! `Normalize` with the CLIP mean/std (LAVIS / MiniGPT-v2 `Blip2ImageEvalProcessor`).
//!
//! Pillow's resampler is not a textbook bicubic: the kernel is `a = -0.5`, its support widens by the
//! downscale factor (antialiasing), the two passes (horizontal, then vertical) round to 8 bits in
//! between, and the weights are 22-bit fixed point. All of that is reproduced here so the pixels match.

use candle_core::{Device, Result, Tensor};

/// CLIP normalisation mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP normalisation std (RGB). The reference's digits, kept as written.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Fixed-point fraction bits of Pillow's 8-bit resampler (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (`a = -0.5`), support 2.
fn pil_bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's bilinear (triangle) kernel, support 1.
fn pil_bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow resampling filters (torchvision `Resize` on a PIL image uses bilinear by default; the CLIP /
/// BLIP-2 processors ask for bicubic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn kernel(self, x: f64) -> f64 {
        match self {
            Self::Bilinear => pil_bilinear(x),
            Self::Bicubic => pil_bicubic(x),
        }
    }
}

/// Per output index: first source index, and the fixed-point weights of the consecutive source taps.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` for the full box `[0, in_size)`.
fn pil_taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let inv = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for o in 0..out_size {
        let center = (o as f64 + 0.5) * scale;
        // C casts truncate toward zero; negatives are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let w: Vec<f64> = (xmin..xmax).map(|x| filter.kernel((x as f64 - center + 0.5) * inv)).collect();
        let total: f64 = w.iter().sum();
        let unit = f64::from(1u32 << PRECISION_BITS);
        let fixed = w
            .iter()
            .map(|&k| {
                let k = if total != 0.0 { k / total } else { k };
                if k < 0.0 { (-0.5 + k * unit) as i32 } else { (0.5 + k * unit) as i32 }
            })
            .collect();
        first.push(xmin as usize);
        weights.push(fixed);
    }
    Taps { first, weights }
}

/// Rounds a fixed-point accumulator (which started at one half) to a clamped byte, as Pillow's `clip8`.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over interleaved RGB: for each of `lines` lines, every output `o` along the axis
/// sums its taps; source sample `s` of line `l` starts at byte `at(s, l)`, and `put(o, l, rgb)` stores.
fn resample_axis(
    src: &[u8],
    taps: &Taps,
    lines: usize,
    at: impl Fn(usize, usize) -> usize,
    mut put: impl FnMut(usize, usize, [u8; 3]),
) {
    for line in 0..lines {
        for (o, (first, w)) in taps.first.iter().zip(&taps.weights).enumerate() {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &k) in w.iter().enumerate() {
                let p = at(first + i, line);
                for c in 0..3 {
                    acc[c] += i32::from(src[p + c]) * k;
                }
            }
            put(o, line, acc.map(clip8));
        }
    }
}

fn check_rgb_len(rgb: &[u8], w: usize, h: usize) -> Result<()> {
    let expected = w.checked_mul(h).and_then(|n| n.checked_mul(3));
    if expected != Some(rgb.len()) {
        let want = expected.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string());
        candle_core::bail!("RGB buffer has {} bytes, a {w}x{h} RGB image has {want} (3 bytes per pixel)", rgb.len());
    }
    Ok(())
}

/// Resizes interleaved 8-bit RGB (`w × h`, row-major) to `new_w × new_h` exactly as Pillow's
/// `Image.resize((new_w, new_h), Image.BICUBIC)` does (what torchvision's `Resize` calls on a PIL image).
pub fn resize_bicubic_rgb(src: &[u8], w: usize, h: usize, new_w: usize, new_h: usize) -> Result<Vec<u8>> {
    resize_rgb(src, w, h, new_w, new_h, Filter::Bicubic)
}

/// Resizes interleaved 8-bit RGB as Pillow's `Image.resize((new_w, new_h), filter)`.
pub fn resize_rgb(src: &[u8], w: usize, h: usize, new_w: usize, new_h: usize, filter: Filter) -> Result<Vec<u8>> {
    if w == 0 || h == 0 || new_w == 0 || new_h == 0 {
        candle_core::bail!("cannot resize a {w}x{h} RGB image to {new_w}x{new_h}: every side must be positive");
    }
    check_rgb_len(src, w, h)?;
    let mut cur = src.to_vec();
    let mut cur_w = w;
    if new_w != w {
        let taps = pil_taps(w, new_w, filter);
        let mut out = vec![0u8; new_w * h * 3];
        resample_axis(&cur, &taps, h, |x, y| (y * w + x) * 3, |o, y, px| {
            out[(y * new_w + o) * 3..][..3].copy_from_slice(&px)
        });
        cur = out;
        cur_w = new_w;
    }
    if new_h != h {
        let taps = pil_taps(h, new_h, filter);
        let mut out = vec![0u8; cur_w * new_h * 3];
        resample_axis(&cur, &taps, cur_w, |y, x| (y * cur_w + x) * 3, |o, x, px| {
            out[(o * cur_w + x) * 3..][..3].copy_from_slice(&px)
        });
        cur = out;
    }
    Ok(cur)
}

/// Interleaved 8-bit RGB (`w × h`) → (3, h, w) f32: `x / 255`, then `(x - mean) / std` with the CLIP
/// constants, in the same f32 arithmetic as torchvision `ToTensor` + `Normalize`.
pub fn clip_normalize(rgb: &[u8], w: usize, h: usize, dev: &Device) -> Result<Tensor> {
    if w == 0 || h == 0 {
        candle_core::bail!("cannot normalize a {w}x{h} RGB image: every side must be positive");
    }
    check_rgb_len(rgb, w, h)?;
    clip_transform(w, h).tensor(rgb, dev)?.squeeze(0)
}

/// The CLIP / BLIP-2 transform at `w × h` (PIL bicubic, CLIP mean and std).
fn clip_transform(w: usize, h: usize) -> super::PixelTransform {
    super::PixelTransform { width: w, height: h, filter: Filter::Bicubic, mean: CLIP_MEAN, std: CLIP_STD }
}

/// The EVA ViT input for one RGB image: bicubic resize to `size × size` (PIL), then CLIP normalisation
/// → (3, size, size). Emotion-LLaMA uses `size` = 448.
pub fn eva_preprocess(rgb: &[u8], w: usize, h: usize, size: usize, dev: &Device) -> Result<Tensor> {
    let t = clip_transform(size, size);
    t.tensor(&t.resize(rgb, w, h)?, dev)?.squeeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_are_errors() {
        assert!(resize_bicubic_rgb(&[0; 12], 2, 2, 0, 3).is_err());
        assert!(resize_bicubic_rgb(&[0; 11], 2, 2, 3, 3).unwrap_err().to_string().contains("11 bytes"));
        assert!(clip_normalize(&[0; 5], 1, 2, &Device::Cpu).is_err());
        assert!(clip_normalize(&[], 0, 0, &Device::Cpu).is_err());
        assert!(eva_preprocess(&[0; 5], 1, 2, 4, &Device::Cpu).is_err());
    }

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let img: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_rgb(&img, 5, 4, 5, 4).unwrap(), img);
        let flat = vec![200u8; 7 * 3 * 3];
        assert!(resize_bicubic_rgb(&flat, 7, 3, 13, 2).unwrap().iter().all(|&v| v == 200));
    }

    #[test]
    fn normalize_layout() {
        let t = clip_normalize(&[255, 0, 0, 0, 255, 0], 2, 1, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!((v[3] - (1.0 - CLIP_MEAN[1]) / CLIP_STD[1]).abs() < 1e-6);
    }
}
