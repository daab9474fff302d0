//! What an image encoder is fed: its own input size, resampling filter and normalisation (the encoder
//! manifest's `[preprocess]` and `image_size`). One [`PixelTransform`] per encoder, applied the same way by
//! runs (training, evaluation, the feature cache) and by `extract`, so features cached by one equal the
//! other's.

use candle_core::{Device, Result, Tensor};

use super::resize::{Filter, resize_rgb};

/// Resize (as Pillow does) to the encoder's input size, then `(x / 255 - mean) / std` per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelTransform {
    pub width: usize,
    pub height: usize,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PixelTransform {
    /// Bytes of one RGB frame at this size.
    pub fn frame_bytes(&self) -> usize {
        self.width * self.height * 3
    }

    /// One interleaved RGB frame (`w × h`) at this transform's size (a copy when it already is).
    pub fn resize(&self, rgb: &[u8], w: usize, h: usize) -> Result<Vec<u8>> {
        resize_rgb(rgb, w, h, self.width, self.height, self.filter)
    }

    /// Frames already at this size (interleaved RGB, back to back) → normalised `(n, 3, height, width)`.
    pub fn tensor(&self, frames: &[u8], device: &Device) -> Result<Tensor> {
        let per = self.frame_bytes();
        if per == 0 || !frames.len().is_multiple_of(per) {
            candle_core::bail!("{} bytes are not whole {}x{} RGB frames", frames.len(), self.width, self.height);
        }
        let n = frames.len() / per;
        let mut out = Vec::with_capacity(frames.len());
        self.normalise_into(&mut out, frames);
        Tensor::from_vec(out, (n, 3, self.height, self.width), device)
    }

    /// Appends the normalised planes (CHW per frame) of `frames` (interleaved RGB at this size) to `out`.
    pub fn normalise_into(&self, out: &mut Vec<f32>, frames: &[u8]) {
        let plane = self.width * self.height;
        for frame in frames.chunks_exact(plane * 3) {
            for c in 0..3 {
                let (mean, std) = (self.mean[c], self.std[c]);
                out.extend((0..plane).map(|p| (f32::from(frame[p * 3 + c]) / 255.0 - mean) / std));
            }
        }
    }

    /// Decoded frames (each `w × h`) → the encoder's input `(n, 3, height, width)`.
    pub fn apply(&self, frames: &[Vec<u8>], w: usize, h: usize, device: &Device) -> Result<Tensor> {
        let mut bytes = Vec::with_capacity(frames.len() * self.frame_bytes());
        for f in frames {
            bytes.extend_from_slice(&self.resize(f, w, h)?);
        }
        self.tensor(&bytes, device)
    }
}

/// Which encoder input a pixel view feeds, and so which frames it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewRole {
    /// A trainable per-frame encoder (the tiny layout): every sampled frame.
    Frames,
    /// Emotion-LLaMA's global view (EVA): one whole frame, chosen by `model.global_frame`.
    Global,
    /// Emotion-LLaMA's local view (MAE): every sampled frame (face crops with the face front end).
    Local,
    /// Emotion-LLaMA's temporal view (VideoMAE): every sampled frame as one clip.
    Temporal,
}

impl ViewRole {
    /// The global view takes one frame; the others take every sampled frame.
    pub fn single_frame(self) -> bool {
        self == Self::Global
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Frames => "frames",
            Self::Global => "global",
            Self::Local => "local",
            Self::Temporal => "temporal",
        }
    }
}

/// One encoder's pixel input: which frames, and how they are transformed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelView {
    pub role: ViewRole,
    pub transform: PixelTransform,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(w: usize, h: usize, filter: Filter) -> PixelTransform {
        PixelTransform { width: w, height: h, filter, mean: [0.5, 0.25, 0.0], std: [0.5, 0.25, 1.0] }
    }

    #[test]
    fn tensor_is_chw_normalised_per_channel() {
        let tr = t(2, 1, Filter::Bilinear);
        // Two pixels: (255, 0, 51), (0, 255, 102).
        let x = tr.tensor(&[255, 0, 51, 0, 255, 102], &Device::Cpu).expect("tensor");
        assert_eq!(x.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = x.flatten_all().and_then(|x| x.to_vec1()).expect("values");
        let want = [1.0, -1.0, -1.0, 3.0, 0.2, 0.4];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?} vs {want:?}");
        }
    }

    #[test]
    fn apply_resizes_each_frame_with_the_filter_then_normalises() {
        let (w, h) = (6, 4);
        let frames: Vec<Vec<u8>> = (0..2u8).map(|k| (0..w * h * 3).map(|i| (i as u8).wrapping_mul(7).wrapping_add(k * 40)).collect()).collect();
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let tr = t(3, 2, filter);
            let got = tr.apply(&frames, w, h, &Device::Cpu).expect("apply");
            assert_eq!(got.dims(), &[2, 3, 2, 3]);
            let mut bytes = Vec::new();
            for f in &frames {
                bytes.extend(resize_rgb(f, w, h, 3, 2, filter).expect("resize"));
            }
            let want = tr.tensor(&bytes, &Device::Cpu).expect("tensor");
            let d: f32 = (got - want).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar()).expect("diff");
            assert_eq!(d, 0.0);
        }
    }

    #[test]
    fn partial_frames_are_an_error() {
        assert!(t(2, 2, Filter::Bicubic).tensor(&[0; 13], &Device::Cpu).is_err());
    }
}
